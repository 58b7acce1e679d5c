"""The IDARTS supernet: partial-channel mixed operations, search cells, the network.

The network owns the architecture parameters: per cell type ``alpha`` (14 x 8,
operation logits) and ``beta`` (14, edge logits). Edge ``l = (i -> j)``
contributes ``B_l * sum_m A_lm * o_m(x_i)`` to node ``j``, with
``A_l = softmax(alpha_l)`` over operations and ``B = softmax(beta)`` over the
edges that enter node ``j``.
"""

from __future__ import annotations

import torch
from torch import nn

from idarts.genotypes import edge_weights
from idarts.operations import FactorizedReduce, ReLUConvBN, build_operation
from idarts.search_space import (
    CELL_TYPES,
    EDGES,
    NUM_EDGES,
    NUM_INPUT_NODES,
    NUM_INTERMEDIATE_NODES,
    PRIMITIVES,
    edges_into,
    reduction_layers,
)

ARCH_INIT_SCALE = 1e-3
"""Standard deviation of the Gaussian initialisation of ``alpha`` and ``beta``."""


def valid_partial_k(init_channels: int) -> list[int]:
    """Return every partial-channel ratio K that the supernet accepts.

    K must divide the channel count of every cell. Cells have ``C``, ``2C`` or
    ``4C`` channels, so the valid values are the divisors of ``C``.
    """
    return [k for k in range(1, init_channels + 1) if init_channels % k == 0]


def check_partial_k(partial_k: int, init_channels: int) -> None:
    """Raise ``ValueError`` naming the valid values when ``partial_k`` cannot be used."""
    valid = valid_partial_k(init_channels)
    if partial_k not in valid:
        raise ValueError(
            f"partial_k={partial_k} does not divide the channel count of every cell "
            f"(init_channels={init_channels}); valid values: {valid}"
        )


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal channel groups."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).reshape(batch, channels, height, width)


class PartialChannelMixedOp(nn.Module):
    """A weighted sum of all candidate operations over 1/K of the channels.

    The first ``channels // K`` channels go through the operations; the others
    bypass them (max-pooled when the edge strides). The two parts are then
    concatenated and channel-shuffled with K groups, so the next edge receives a
    different channel slice. With K = 1 this is the plain DARTS mixed operation.
    """

    def __init__(self, channels: int, stride: int, partial_k: int) -> None:
        super().__init__()
        self.partial_k = partial_k
        self.active_channels = channels // partial_k
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = build_operation(name, self.active_channels, stride, affine=False)
            if "pool" in name:
                op = nn.Sequential(op, nn.BatchNorm2d(self.active_channels, affine=False))
            self.ops.append(op)
        self.bypass_pool = nn.MaxPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor, op_weights: torch.Tensor) -> torch.Tensor:
        if self.partial_k == 1:
            return sum(weight * op(x) for weight, op in zip(op_weights, self.ops))

        active = x[:, : self.active_channels]
        bypass = x[:, self.active_channels :]
        mixed = sum(weight * op(active) for weight, op in zip(op_weights, self.ops))
        output = torch.cat([mixed, self.bypass_pool(bypass)], dim=1)
        return channel_shuffle(output, self.partial_k)


class SearchCell(nn.Module):
    """A DARTS cell whose 14 edges are partial-channel mixed operations."""

    def __init__(
        self,
        prev_prev_channels: int,
        prev_channels: int,
        channels: int,
        reduction: bool,
        reduction_prev: bool,
        partial_k: int,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(prev_prev_channels, channels, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(prev_prev_channels, channels, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(prev_channels, channels, 1, 1, 0, affine=False)

        self.edges = nn.ModuleList()
        for source, _ in EDGES:
            stride = 2 if reduction and source < NUM_INPUT_NODES else 1
            self.edges.append(PartialChannelMixedOp(channels, stride, partial_k))

    def forward(
        self,
        s0: torch.Tensor,
        s1: torch.Tensor,
        op_weights: torch.Tensor,
        edge_weight: torch.Tensor,
    ) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for target in range(NUM_INPUT_NODES, NUM_INPUT_NODES + NUM_INTERMEDIATE_NODES):
            node = sum(
                edge_weight[index] * self.edges[index](states[EDGES[index][0]], op_weights[index])
                for index in edges_into(target)
            )
            states.append(node)
        return torch.cat(states[NUM_INPUT_NODES:], dim=1)


class SearchNetwork(nn.Module):
    """The supernet searched over: a stem, ``layers`` search cells, a linear classifier.

    Reduction cells (stride 2, doubled channels) sit at 1/3 and 2/3 of the
    depth. Every BatchNorm is non-affine, as usual during the search.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        init_channels: int = 16,
        layers: int = 8,
        partial_k: int = 4,
        stem_multiplier: int = 3,
    ) -> None:
        super().__init__()
        check_partial_k(partial_k, init_channels)
        if layers < 1:
            raise ValueError(f"layers must be at least 1, got {layers}")

        stem_channels = stem_multiplier * init_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels, affine=False),
        )

        reductions = reduction_layers(layers)
        prev_prev_channels, prev_channels, channels = stem_channels, stem_channels, init_channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        for index in range(layers):
            reduction = index in reductions
            if reduction:
                channels *= 2
            cell = SearchCell(
                prev_prev_channels, prev_channels, channels, reduction, reduction_prev, partial_k
            )
            self.cells.append(cell)
            reduction_prev = reduction
            prev_prev_channels, prev_channels = prev_channels, NUM_INTERMEDIATE_NODES * channels

        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev_channels, num_classes)

        self.alpha = nn.ParameterDict(
            {
                cell: nn.Parameter(ARCH_INIT_SCALE * torch.randn(NUM_EDGES, len(PRIMITIVES)))
                for cell in CELL_TYPES
            }
        )
        self.beta = nn.ParameterDict(
            {cell: nn.Parameter(ARCH_INIT_SCALE * torch.randn(NUM_EDGES)) for cell in CELL_TYPES}
        )

    def arch_parameters(self) -> list[nn.Parameter]:
        """Return ``alpha`` and ``beta`` of both cell types."""
        return [*self.alpha.values(), *self.beta.values()]

    def weight_parameters(self) -> list[nn.Parameter]:
        """Return every trainable parameter that is not an architecture parameter."""
        arch_ids = {id(parameter) for parameter in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op_weights = {cell: torch.softmax(self.alpha[cell], dim=-1) for cell in CELL_TYPES}
        edge_weight = {cell: edge_weights(self.beta[cell]) for cell in CELL_TYPES}

        s0 = s1 = self.stem(x)
        for cell in self.cells:
            kind = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, op_weights[kind], edge_weight[kind])

        features = self.global_pooling(s1).flatten(1)
        return self.classifier(features)
