"""The DARTS cell search space: candidate operations and the edges of a cell.

A cell has two input nodes (0 and 1: the outputs of the two previous cells)
and four intermediate nodes (2 to 5). Every intermediate node takes one edge
from each earlier node, which gives 2 + 3 + 4 + 5 = 14 edges. Edges are
numbered in the order (0→2), (1→2), (0→3), (1→3), (2→3), (0→4), ... and that
order is the row order of ``alpha`` and ``beta`` everywhere in the project.
"""

from __future__ import annotations

from typing import Final

PRIMITIVES: Final[tuple[str, ...]] = (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
)
"""Candidate operations of every edge, in the column order of ``alpha``."""

NONE_INDEX: Final[int] = PRIMITIVES.index("none")
NUM_INPUT_NODES: Final[int] = 2
NUM_INTERMEDIATE_NODES: Final[int] = 4
CELL_TYPES: Final[tuple[str, ...]] = ("normal", "reduce")


def cell_edges(num_nodes: int = NUM_INTERMEDIATE_NODES) -> list[tuple[int, int]]:
    """Return the ``(source, target)`` node pairs of a cell, in edge order."""
    edges = []
    for target in range(NUM_INPUT_NODES, NUM_INPUT_NODES + num_nodes):
        for source in range(target):
            edges.append((source, target))
    return edges


EDGES: Final[tuple[tuple[int, int], ...]] = tuple(cell_edges())
NUM_EDGES: Final[int] = len(EDGES)


def edges_into(target: int) -> list[int]:
    """Return the indices of the edges that enter intermediate node ``target``."""
    return [index for index, (_, node) in enumerate(EDGES) if node == target]


def incoming_edge_counts() -> list[int]:
    """Return ``n_j`` for every edge: how many edges enter that edge's target node."""
    return [len(edges_into(target)) for _, target in EDGES]


def reduction_layers(layers: int) -> tuple[int, int]:
    """Return the indices of the two reduction cells, at 1/3 and 2/3 of the depth."""
    return layers // 3, 2 * layers // 3
