"""Candidate operations of the DARTS space, as a registry of module factories.

Every factory takes ``(channels, stride, affine)`` and returns a module that
maps ``channels`` to ``channels`` feature maps and divides the spatial size by
``stride`` (rounding up, so odd sizes work). The search uses
``affine=False`` BatchNorm everywhere; the networks trained from scratch use
``affine=True``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

OperationFactory = Callable[[int, int, bool], nn.Module]


class ReLUConvBN(nn.Sequential):
    """ReLU, then a convolution, then BatchNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, a dilated depthwise convolution, a pointwise convolution, BatchNorm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                stride,
                padding,
                dilation=dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked depthwise-separable blocks; only the first one strides."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        padding: int,
        affine: bool = True,
    ) -> None:
        super().__init__(
            DilConv(in_channels, in_channels, kernel_size, stride, padding, 1, affine),
            DilConv(in_channels, out_channels, kernel_size, 1, padding, 1, affine),
        )


class Zero(nn.Module):
    """The ``none`` operation: zeros of the output shape."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
    """Halve the spatial size with two offset stride-2 1x1 convolutions.

    The second path is shifted by one pixel, so together the two paths see
    every input position. The input is padded by one pixel on the bottom and
    right so that both paths give ``ceil(size / 2)`` outputs for odd sizes too.
    """

    def __init__(self, in_channels: int, out_channels: int, affine: bool = True) -> None:
        super().__init__()
        if out_channels % 2 != 0:
            raise ValueError(
                f"FactorizedReduce needs an even number of output channels, got {out_channels}"
            )
        self.relu = nn.ReLU(inplace=False)
        self.conv_even = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv_odd = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        height, width = x.shape[-2:]
        padded = nn.functional.pad(x, (0, 1, 0, 1))
        even = self.conv_even(padded[:, :, :height, :width])
        odd = self.conv_odd(padded[:, :, 1 : height + 1, 1 : width + 1])
        return self.bn(torch.cat([even, odd], dim=1))


def _pool(kind: str, channels: int, stride: int, affine: bool) -> nn.Module:
    if kind == "max":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)


def _skip(channels: int, stride: int, affine: bool) -> nn.Module:
    if stride == 1:
        return nn.Identity()
    return FactorizedReduce(channels, channels, affine=affine)


OPERATIONS: dict[str, OperationFactory] = {
    "none": lambda channels, stride, affine: Zero(stride),
    "max_pool_3x3": lambda channels, stride, affine: _pool("max", channels, stride, affine),
    "avg_pool_3x3": lambda channels, stride, affine: _pool("avg", channels, stride, affine),
    "skip_connect": _skip,
    "sep_conv_3x3": lambda channels, stride, affine: SepConv(
        channels, channels, 3, stride, 1, affine
    ),
    "sep_conv_5x5": lambda channels, stride, affine: SepConv(
        channels, channels, 5, stride, 2, affine
    ),
    "dil_conv_3x3": lambda channels, stride, affine: DilConv(
        channels, channels, 3, stride, 2, 2, affine
    ),
    "dil_conv_5x5": lambda channels, stride, affine: DilConv(
        channels, channels, 5, stride, 4, 2, affine
    ),
}
"""Registry of candidate operations by their DARTS name."""


def build_operation(name: str, channels: int, stride: int, affine: bool) -> nn.Module:
    """Build the operation ``name`` for ``channels`` feature maps.

    Raises:
        KeyError: ``name`` is not in :data:`OPERATIONS`; the message lists the known names.
    """
    try:
        factory = OPERATIONS[name]
    except KeyError:
        known = ", ".join(OPERATIONS)
        raise KeyError(f"unknown operation {name!r}; known operations: {known}") from None
    return factory(channels, stride, affine)
