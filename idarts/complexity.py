"""Model size and compute: parameter counts and multiply-adds of a network.

Multiply-adds are those of the convolutions and linear layers of one forward
pass of one image in evaluation mode, so the auxiliary head and drop-path do
not count. They are measured with ``torch.utils.flop_counter.FlopCounterMode``
(part of PyTorch), which reports 2 FLOPs per multiply-add. Batch norm, ReLU,
pooling and additions are not counted.

NOTE: the DARTS and PC-DARTS papers state higher ImageNet figures than this
count gives: 597M published against 582M here for PC_DARTS_image, 574M
against 530M for DARTS_V2. Their counting script was not released. A user of
the DARTS code reported the same gap for DARTS_V2 (523M from convolutions and
linear layers) in https://github.com/quark0/darts/issues/46.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

AUXILIARY_PREFIX = "auxiliary_head."
"""Name prefix of the auxiliary-head parameters in :class:`~idarts.network.EvalNetwork`."""


@dataclass(frozen=True)
class Complexity:
    """Size and compute of one network for one input size."""

    params: int
    """All parameters, the auxiliary head included."""
    params_without_aux: int
    """Parameters without the auxiliary head: the figure the DARTS and PC-DARTS papers publish."""
    multiply_adds: int
    """Multiply-adds of the convolutions and linear layers for one image, evaluation mode."""
    input_shape: tuple[int, int, int]
    """``(channels, height, width)`` of the image the multiply-adds were counted for."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-friendly values."""
        data = asdict(self)
        data["input_shape"] = list(self.input_shape)
        return data


def count_parameters(model: nn.Module, include_auxiliary: bool = True) -> int:
    """Count the parameters of ``model``, optionally leaving out those named ``auxiliary_head.*``."""
    return sum(
        parameter.numel()
        for name, parameter in model.named_parameters()
        if include_auxiliary or not name.startswith(AUXILIARY_PREFIX)
    )


def count_multiply_adds(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Count the multiply-adds of one evaluation-mode forward pass of one ``input_shape`` image.

    ``input_shape`` is ``(channels, height, width)``. The model runs once on
    zeros, on the device and in the dtype of its first parameter, and returns
    to its previous training mode afterwards.
    """
    parameter = next(model.parameters())
    image = torch.zeros((1, *input_shape), device=parameter.device, dtype=parameter.dtype)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(image)
    finally:
        model.train(was_training)

    return counter.get_total_flops() // 2


def measure_complexity(model: nn.Module, input_shape: tuple[int, int, int]) -> Complexity:
    """Return the parameter counts and multiply-adds of ``model`` for ``input_shape`` images."""
    return Complexity(
        params=count_parameters(model, include_auxiliary=True),
        params_without_aux=count_parameters(model, include_auxiliary=False),
        multiply_adds=count_multiply_adds(model, input_shape),
        input_shape=tuple(input_shape),
    )


def format_count(value: int) -> str:
    """Format a count in millions with two decimals (``3.35M``), or below 100,000 in thousands (``8.9K``)."""
    if value < 100_000:
        return f"{value / 1e3:.1f}K"
    return f"{value / 1e6:.2f}M"
