"""Networks trained from scratch from a genotype: the CIFAR-style and the ImageNet-style network.

Both stack ``layers`` cells built from one :class:`~idarts.genotypes.Genotype`.
Reduction cells sit at 1/3 and 2/3 of the depth and double the channel count.
Every cell takes the outputs of the two previous cells. The older input is
brought to the current size by a factorized reduce when the previous cell
reduced, otherwise by a 1x1 ReLU-conv-BN. An optional auxiliary classifier
reads the output of the second reduction cell and only runs in training mode.

Drop-path zeroes whole per-sample outputs of a cell's operations, except
identity (``skip_connect`` at stride 1), and rescales the kept ones. The trainer
sets :attr:`EvalNetwork.drop_path_prob` every epoch, see
:func:`drop_path_schedule`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from idarts.genotypes import Genotype
from idarts.operations import FactorizedReduce, ReLUConvBN, build_operation
from idarts.search_space import NUM_INPUT_NODES, reduction_layers

NETWORK_KINDS = ("cifar", "imagenet")
"""Network styles: ``cifar`` for small images (28 to 32 pixels), ``imagenet`` for 224 pixels."""

AUX_HIDDEN_CHANNELS = 128
AUX_EXPANDED_CHANNELS = 768


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each sample of ``x`` with probability ``drop_prob`` and scale the rest by ``1 / (1 - drop_prob)``.

    The mask is drawn per sample (first dimension), so the expected value of
    every element is unchanged. ``drop_prob`` must be in [0, 1).
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob, generator=generator)
    return x * mask / keep_prob


def drop_path_schedule(epoch: int, epochs: int, max_prob: float) -> float:
    """Return the drop-path probability of ``epoch`` (0-based) out of ``epochs``.

    The probability rises linearly from 0 at epoch 0 to
    ``max_prob * (epochs - 1) / epochs`` at the last epoch, the schedule of the
    DARTS and PC-DARTS evaluation code.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be positive, got {epochs}")
    if not 0 <= epoch < epochs:
        raise ValueError(f"epoch must be in [0, {epochs}), got {epoch}")
    return max_prob * epoch / epochs


class EvalCell(nn.Module):
    """One cell of a trained network: two inputs, four nodes of two operations each, concatenated output.

    Input shapes: ``s0`` has ``prev_prev_channels`` channels and, when
    ``reduction_prev``, twice the spatial size of ``s1``; ``s1`` has
    ``prev_channels`` channels. The output has ``len(concat) * channels``
    channels and the size of ``s1``, halved (rounding up) when ``reduction``.
    """

    def __init__(
        self,
        genotype: Genotype,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.reduction = reduction

        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(prev_prev_channels, channels)
        else:
            self.preprocess0 = ReLUConvBN(prev_prev_channels, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(prev_channels, channels, 1, 1, 0)

        pairs = genotype.reduce if reduction else genotype.normal
        self.concat = list(genotype.reduce_concat if reduction else genotype.normal_concat)
        self.sources = [source for _, source in pairs]
        self.ops = nn.ModuleList()
        for op_name, source in pairs:
            # Only the edges that read a cell input stride; later nodes already have the reduced size.
            stride = 2 if reduction and source < NUM_INPUT_NODES else 1
            self.ops.append(build_operation(op_name, channels, stride, affine=True))

        self.num_nodes = len(pairs) // 2
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]

        for node in range(self.num_nodes):
            node_sum = None
            for position in (2 * node, 2 * node + 1):
                op = self.ops[position]
                h = op(states[self.sources[position]])
                if self.training and drop_prob > 0.0 and not isinstance(op, nn.Identity):
                    h = drop_path(h, drop_prob)
                node_sum = h if node_sum is None else node_sum + h
            states.append(node_sum)

        return torch.cat([states[index] for index in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the output of the 2/3-depth reduction cell.

    ReLU, average pooling to 2x2, a 1x1 conv to 128 channels, BN, ReLU, a 2x2
    conv to 768 channels, (BN,) ReLU and a linear classifier. The pooling uses
    two 5x5 windows per axis, one at each end of the map (stride ``size - 5``).
    That is exactly the pooling of the DARTS heads on the 8x8 maps of CIFAR
    (stride 3) and the 7x7 maps of ImageNet (stride 2). Maps of 6 to 10 pixels
    pool the same way (28-pixel Fashion-MNIST gives 7x7), and the two windows
    then cover the whole map. Smaller or larger maps use adaptive average
    pooling to 2x2 instead. The pooling has no parameters, so the choice does not
    change parameter counts.
    """

    def __init__(self, in_channels: int, num_classes: int, expand_batchnorm: bool = True) -> None:
        super().__init__()
        expand: list[nn.Module] = [nn.Conv2d(AUX_HIDDEN_CHANNELS, AUX_EXPANDED_CHANNELS, 2, bias=False)]
        if expand_batchnorm:
            expand.append(nn.BatchNorm2d(AUX_EXPANDED_CHANNELS))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, AUX_HIDDEN_CHANNELS, 1, bias=False),
            nn.BatchNorm2d(AUX_HIDDEN_CHANNELS),
            nn.ReLU(inplace=True),
            *expand,
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(AUX_EXPANDED_CHANNELS, num_classes)

    @staticmethod
    def pool_to_2x2(x: torch.Tensor) -> torch.Tensor:
        """Average-pool a feature map to 2x2 (see the class docstring for the windows)."""
        height, width = x.shape[-2:]
        if 6 <= height <= 10 and 6 <= width <= 10:
            return F.avg_pool2d(x, 5, stride=(height - 5, width - 5), padding=0, count_include_pad=False)
        return F.adaptive_avg_pool2d(x, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool_to_2x2(F.relu(x))
        x = self.features(x)
        return self.classifier(torch.flatten(x, 1))


class EvalNetwork(nn.Module):
    """A network of ``layers`` genotype cells, trained from scratch to evaluate the genotype.

    ``kind="cifar"`` uses a 3x3 conv + BN stem at full resolution with
    ``stem_multiplier * init_channels`` channels, suited to 28 to 32 pixel
    images. ``kind="imagenet"`` uses the stride-8 stem of the DARTS ImageNet
    setting: two stride-2 3x3 convs (to ``C/2``, then ``C`` channels) and a
    third stride-2 conv block, suited to 224-pixel images. Any input size works
    because every stride-2 step rounds up.

    ``forward`` returns ``(logits, aux_logits)``. ``aux_logits`` is ``None``
    unless the network has an auxiliary head and is in training mode.
    """

    def __init__(
        self,
        genotype: Genotype,
        num_classes: int,
        in_channels: int = 3,
        init_channels: int = 36,
        layers: int = 20,
        auxiliary: bool = True,
        kind: str = "cifar",
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        if kind not in NETWORK_KINDS:
            raise ValueError(f"unknown network kind {kind!r}; use one of {list(NETWORK_KINDS)}")
        if layers < 3:
            raise ValueError(f"layers={layers} is too small; use at least 3 so that both reduction cells exist")
        if init_channels < 2 or init_channels % 2 != 0:
            raise ValueError(
                f"init_channels={init_channels} is invalid; use an even number of at least 2, "
                "because factorized reduce splits the channels into two halves"
            )

        self.genotype = genotype
        self.kind = kind
        self.layers = layers
        self.drop_path_prob = 0.0
        """Drop-path probability used in training mode, set by the trainer every epoch."""

        self._build_stem(kind, in_channels, init_channels, stem_multiplier)
        self._build_cells(genotype, init_channels, layers, stem_multiplier, num_classes, auxiliary)

        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.cells[-1].out_channels, num_classes)

    def _build_stem(self, kind: str, in_channels: int, channels: int, stem_multiplier: int) -> None:
        if kind == "cifar":
            self.stem: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, stem_multiplier * channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(stem_multiplier * channels),
            )
            self.stem1: nn.Module | None = None
            return

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, channels // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels // 2),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels // 2, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        # Not in place: the stem output s0 also feeds the first cell.
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def _build_cells(
        self,
        genotype: Genotype,
        init_channels: int,
        layers: int,
        stem_multiplier: int,
        num_classes: int,
        auxiliary: bool,
    ) -> None:
        if self.kind == "cifar":
            prev_prev, prev = stem_multiplier * init_channels, stem_multiplier * init_channels
            reduction_prev = False
        else:
            # Both cell inputs come from the stem: s0 at stride 4, s1 at stride 8.
            prev_prev, prev = init_channels, init_channels
            reduction_prev = True

        channels = init_channels
        reductions = reduction_layers(layers)
        self.cells = nn.ModuleList()
        self.auxiliary_head: AuxiliaryHead | None = None
        self.aux_position = reductions[1]

        for index in range(layers):
            reduction = index in reductions
            if reduction:
                channels *= 2
            cell = EvalCell(genotype, prev_prev, prev, channels, reduction, reduction_prev)
            self.cells.append(cell)
            prev_prev, prev = prev, cell.out_channels
            reduction_prev = reduction

            if auxiliary and index == self.aux_position:
                # The DARTS ImageNet head has no BN after its 768-channel conv, and neither has this one.
                self.auxiliary_head = AuxiliaryHead(prev, num_classes, expand_batchnorm=self.kind == "cifar")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s0 = self.stem(x)
        s1 = s0 if self.stem1 is None else self.stem1(s0)

        aux_logits = None
        for index, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if index == self.aux_position and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)

        pooled = torch.flatten(self.global_pooling(s1), 1)
        return self.classifier(pooled), aux_logits

