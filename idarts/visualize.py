"""Text tables and matplotlib figures of genotypes and architecture parameters.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``)
and saved through the Agg renderer, so they work without a display and leave
pyplot's global figure list alone. No graphviz binary is needed.

Nodes are labelled as in the DARTS papers: ``c_{k-2}`` and ``c_{k-1}`` are
the cell inputs (genotype nodes 0 and 1), intermediate nodes are numbered 0
to 3 (genotype nodes 2 to 5), and ``c_{k}`` is the cell output.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle
from matplotlib.path import Path as CurvePath
from matplotlib.textpath import text_to_path

from idarts.genotypes import (
    INPUTS_PER_NODE,
    Genotype,
    _cell_parameter,
    derive_genotype,
    edge_weights,
)
from idarts.search_space import CELL_TYPES, EDGES, NONE_INDEX, NUM_EDGES, NUM_INPUT_NODES, PRIMITIVES

logger = logging.getLogger(__name__)

CELL_TITLES = {"normal": "Normal cell", "reduce": "Reduction cell"}

OPERATION_FAMILIES: dict[str, tuple[str, str]] = {
    "max_pool_3x3": ("pooling", "#1f77b4"),
    "avg_pool_3x3": ("pooling", "#1f77b4"),
    "skip_connect": ("skip_connect", "#2ca02c"),
    "sep_conv_3x3": ("sep_conv", "#d62728"),
    "sep_conv_5x5": ("sep_conv", "#d62728"),
    "dil_conv_3x3": ("dil_conv", "#9467bd"),
    "dil_conv_5x5": ("dil_conv", "#9467bd"),
}
"""Family name and edge colour of every genotype operation."""

SAVE_DPI = 100
OUTPUT_NODE = -1
"""Key of the cell output ``c_{k}`` in layout dictionaries, next to genotype node numbers."""


def node_label(node: int, math_text: bool = False) -> str:
    """Return the paper-style label of genotype node ``node``: ``c_{k-2}``, ``c_{k-1}``, ``0``, ...

    With ``math_text`` the input and output labels are wrapped in ``$...$`` for matplotlib.
    """
    if node == OUTPUT_NODE:
        label = "c_{k}"
    elif node < NUM_INPUT_NODES:
        label = f"c_{{k-{NUM_INPUT_NODES - node}}}"
    else:
        return str(node - NUM_INPUT_NODES)
    return f"${label}$" if math_text else label


# ---------------------------------------------------------------------------
# Text table


def genotype_to_text(genotype: Genotype) -> str:
    """Format both cells as tables of node, input node and operation, one row per edge."""
    lines = []
    for cell in CELL_TYPES:
        concat = getattr(genotype, f"{cell}_concat")
        concat_labels = ", ".join(node_label(node) for node in concat)
        lines.append(f"{CELL_TITLES[cell]} (output c_{{k}} = concat of nodes {concat_labels})")
        lines.append(f"  {'node':<6}{'input':<10}operation")

        previous_target = None
        for source, target, op in genotype.edges(cell):
            target_text = node_label(target) if target != previous_target else ""
            lines.append(f"  {target_text:<6}{node_label(source):<10}{op}")
            previous_target = target

        edge_count = len(genotype.edges(cell))
        lines.append(f"  skip_connect edges: {genotype.skip_connect_count(cell)} of {edge_count}")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------
# Cell diagram

NODE_RADIUS = 0.36
EDGE_FONT_SIZE = 9
LABEL_PADDING_POINTS = 2.5
Y_LIMIT = 3.0
# Routes and labels must stay within this distance of the middle line, below the axes limits.
Y_BOUND = Y_LIMIT - 0.3
CURVATURES = (0.0, 0.18, -0.18, 0.32, -0.32, 0.48, -0.48, 0.65, -0.65)
LABEL_POSITIONS = (0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73)
CURVE_SAMPLES = 48


@dataclass
class _Box:
    x0: float
    x1: float
    y0: float
    y1: float

    def contains(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    def overlap_area(self, other: _Box) -> float:
        width = min(self.x1, other.x1) - max(self.x0, other.x0)
        height = min(self.y1, other.y1) - max(self.y0, other.y0)
        return max(width, 0.0) * max(height, 0.0)


@dataclass
class _Route:
    points: list[tuple[float, float]]
    label_box: _Box | None
    label_point: tuple[float, float] | None


def _cell_layout(num_nodes: int) -> dict[int, tuple[float, float]]:
    """Place inputs on the left, intermediate nodes in a zigzag row, and the output on the right."""
    positions = {0: (0.0, 1.6), 1: (0.0, -1.6)}
    for index in range(num_nodes):
        positions[NUM_INPUT_NODES + index] = (2.0 + 2.0 * index, 0.55 if index % 2 == 0 else -0.55)
    positions[OUTPUT_NODE] = (2.0 + 2.0 * num_nodes, 0.0)
    return positions


Point = tuple[float, float]


def _bezier(start: Point, end: Point, curvature: float) -> list[Point]:
    """Sample a quadratic Bezier curve whose control point sits ``curvature`` x length off the chord."""
    (x0, y0), (x2, y2) = start, end
    dx, dy = x2 - x0, y2 - y0
    control = ((x0 + x2) / 2 + curvature * dy, (y0 + y2) / 2 - curvature * dx)

    points = []
    for step in range(CURVE_SAMPLES + 1):
        t = step / CURVE_SAMPLES
        a, b, c = (1 - t) ** 2, 2 * (1 - t) * t, t**2
        points.append((a * x0 + b * control[0] + c * x2, a * y0 + b * control[1] + c * y2))
    return points


def _data_units_per_point(ax: Axes) -> float:
    """Return how many data units one typographic point spans in ``ax`` once its aspect is applied."""
    ax.apply_aspect()
    position = ax.get_position()
    width_inches, height_inches = ax.figure.get_size_inches()
    x_min, x_max = ax.get_xlim()
    y_min, y_max = ax.get_ylim()
    return max(
        (x_max - x_min) / (position.width * width_inches * 72),
        (y_max - y_min) / (position.height * height_inches * 72),
    )


def _label_half_size(text: str, units_per_point: float) -> tuple[float, float]:
    """Return half the width and height of an edge label's box, in data units."""
    width, height, _ = text_to_path.get_text_width_height_descent(
        text, FontProperties(size=EDGE_FONT_SIZE), ismath=False
    )
    return (
        (width / 2 + LABEL_PADDING_POINTS) * units_per_point,
        (height / 2 + LABEL_PADDING_POINTS) * units_per_point,
    )


def _label_box(point: tuple[float, float], half_size: tuple[float, float]) -> _Box:
    x, y = point
    half_width, half_height = half_size
    return _Box(x - half_width, x + half_width, y - half_height, y + half_height)


def _route_cost(
    points: list[tuple[float, float]],
    box: _Box | None,
    endpoints: tuple[int, int],
    positions: dict[int, tuple[float, float]],
    placed: list[_Route],
) -> float:
    """Score a candidate route: lower is better. Penalizes passing near nodes and crossing labels."""
    cost = 0.0
    clearance = NODE_RADIUS + 0.15

    cost += 30.0 * sum(1 for _, y in points if abs(y) > Y_BOUND) / CURVE_SAMPLES
    if box is not None and (box.y1 > Y_BOUND or box.y0 < -Y_BOUND):
        cost += 30.0

    for node, (cx, cy) in positions.items():
        if node in endpoints:
            continue
        nearest = min(math.hypot(x - cx, y - cy) for x, y in points)
        cost += 10.0 * max(0.0, clearance - nearest) / clearance

    for route in placed:
        if route.label_box is not None:
            cost += 3.0 * sum(1 for x, y in points if route.label_box.contains(x, y)) / CURVE_SAMPLES * 4

    if box is not None:
        for route in placed:
            if route.label_box is not None:
                cost += 40.0 * box.overlap_area(route.label_box)
            cost += 0.4 * sum(1 for x, y in route.points if box.contains(x, y))
        for node, (cx, cy) in positions.items():
            nearest_x = min(max(cx, box.x0), box.x1)
            nearest_y = min(max(cy, box.y0), box.y1)
            if math.hypot(nearest_x - cx, nearest_y - cy) < NODE_RADIUS + 0.05:
                cost += 5.0
    return cost


def _choose_route(
    source: int,
    target: int,
    label_half_size: tuple[float, float] | None,
    positions: dict[int, tuple[float, float]],
    placed: list[_Route],
) -> _Route:
    """Pick the curvature and label position with the lowest :func:`_route_cost`.

    ``label_half_size`` is None for an unlabelled edge.
    """
    best: tuple[float, _Route] | None = None
    for curvature in CURVATURES:
        points = _bezier(positions[source], positions[target], curvature)
        label_positions = LABEL_POSITIONS if label_half_size is not None else (None,)

        for fraction in label_positions:
            if fraction is None:
                point, box = None, None
            else:
                point = points[round(fraction * CURVE_SAMPLES)]
                box = _label_box(point, label_half_size)

            cost = _route_cost(points, box, (source, target), positions, placed)
            cost += 0.8 * abs(curvature) + (0.6 * abs(fraction - 0.5) if fraction is not None else 0.0)
            if best is None or cost < best[0]:
                best = (cost, _Route(points, box, point))

    assert best is not None
    return best[1]


def _trim_to_nodes(points: list[Point], start: Point, end: Point) -> list[Point]:
    """Drop the curve samples that lie inside the start and end node circles."""
    gap = NODE_RADIUS + 0.03
    return [
        (x, y)
        for x, y in points
        if math.hypot(x - start[0], y - start[1]) > gap and math.hypot(x - end[0], y - end[1]) > gap
    ]


def _draw_edge(ax: Axes, route: _Route, start: Point, end: Point, **style: Any) -> None:
    trimmed = _trim_to_nodes(route.points, start, end)
    if len(trimmed) < 2:
        return
    arrow = FancyArrowPatch(
        path=CurvePath(trimmed),
        arrowstyle="-|>",
        mutation_scale=13,
        shrinkA=0,
        shrinkB=0,
        zorder=1,
        **style,
    )
    ax.add_patch(arrow)


def _draw_node(ax: Axes, node: int, position: tuple[float, float]) -> None:
    if node == OUTPUT_NODE:
        face, edge = "#fff2cc", "#b58900"
    elif node < NUM_INPUT_NODES:
        face, edge = "#d9ead3", "#38761d"
    else:
        face, edge = "#dae8fc", "#3c78d8"

    circle = Circle(position, NODE_RADIUS, facecolor=face, edgecolor=edge, linewidth=1.6, zorder=3)
    ax.add_patch(circle)
    label = node_label(node, math_text=True)
    ax.text(*position, label, ha="center", va="center", fontsize=12, zorder=4)


def _family_legend_handles() -> list[Line2D]:
    seen: dict[str, str] = {}
    for family, color in OPERATION_FAMILIES.values():
        seen.setdefault(family, color)
    handles = [Line2D([], [], color=color, linewidth=2.2, label=family) for family, color in seen.items()]
    handles.append(Line2D([], [], color="#888888", linewidth=1.4, linestyle="--", label="concat"))
    return handles


def plot_cell(
    genotype: Genotype,
    cell: str,
    path: str | os.PathLike[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Draw one cell of ``genotype`` as a graph and return the figure.

    Edges are coloured by operation family and labelled with the operation.
    Dashed grey edges feed the concatenated nodes into the output ``c_{k}``.
    With ``ax`` the cell is drawn into that axes and its figure is returned.
    With ``path`` the figure is also saved as a PNG at 100 dpi.
    """
    if cell not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell!r}. Use one of: {', '.join(CELL_TYPES)}")

    if ax is None:
        figure = Figure(figsize=(10, 5.4))
        ax = figure.add_subplot()
    else:
        figure = ax.figure

    edges = genotype.edges(cell)
    positions = _cell_layout(len(edges) // INPUTS_PER_NODE)

    # Limits and aspect are fixed before routing so that label sizes convert to data units.
    xs = [x for x, _ in positions.values()]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-Y_LIMIT, Y_LIMIT)
    ax.set_aspect("equal")
    ax.axis("off")
    units_per_point = _data_units_per_point(ax)

    # Route short edges first so they stay straight and the long ones bend around them.
    placed: list[_Route] = []
    def horizontal_span(edge: tuple[int, int, str]) -> tuple[float, int, int]:
        source, target, _ = edge
        return positions[target][0] - positions[source][0], target, source

    labelled = sorted(edges, key=horizontal_span)
    for source, target, op in labelled:
        label_half_size = _label_half_size(op, units_per_point)
        route = _choose_route(source, target, label_half_size, positions, placed)
        placed.append(route)
        color = OPERATION_FAMILIES[op][1]
        _draw_edge(ax, route, positions[source], positions[target], color=color, linewidth=1.8)

    for node in getattr(genotype, f"{cell}_concat"):
        route = _choose_route(node, OUTPUT_NODE, None, positions, placed)
        placed.append(route)
        _draw_edge(
            ax,
            route,
            positions[node],
            positions[OUTPUT_NODE],
            color="#888888",
            linewidth=1.2,
            linestyle="--",
        )

    # Labels go on top of every edge, so they are drawn after all routes are fixed.
    for (source, target, op), route in zip(labelled, placed):
        assert route.label_point is not None
        ax.text(
            *route.label_point,
            op,
            ha="center",
            va="center",
            fontsize=EDGE_FONT_SIZE,
            color=OPERATION_FAMILIES[op][1],
            zorder=5,
            bbox={"boxstyle": "round,pad=0.18", "facecolor": "white", "edgecolor": "none", "alpha": 0.9},
        )

    for node, position in positions.items():
        _draw_node(ax, node, position)

    ax.set_title(CELL_TITLES[cell], fontsize=13)
    ax.legend(
        handles=_family_legend_handles(),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.02),
        ncol=5,
        frameon=False,
        fontsize=9,
    )

    if path is not None:
        _save(figure, path)
    return figure


def plot_genotype(genotype: Genotype, path: str | os.PathLike[str], title: str | None = None) -> None:
    """Draw the normal and the reduction cell side by side and save them as one PNG at ``path``."""
    figure = Figure(figsize=(20, 5.4))
    axes = figure.subplots(1, len(CELL_TYPES))
    for ax, cell in zip(axes, CELL_TYPES):
        plot_cell(genotype, cell, ax=ax)

    if title:
        figure.suptitle(title, fontsize=14)
    _save(figure, path)


# ---------------------------------------------------------------------------
# Architecture parameter heatmaps


def _edge_label(edge: int) -> str:
    source, target = EDGES[edge]
    return f"{node_label(source, math_text=True)} → {node_label(target)}"


def _plot_cell_weights(
    figure: Figure,
    heatmap_ax: Axes,
    bar_ax: Axes,
    cell: str,
    alpha_cell: torch.Tensor,
    beta_cell: torch.Tensor,
    genotype: Genotype,
) -> None:
    operation_weights = torch.softmax(alpha_cell, dim=-1)
    edge_weight = edge_weights(beta_cell)

    # Selection score of each edge: B times its strongest weight other than none.
    without_none = operation_weights.clone()
    without_none[:, NONE_INDEX] = -1.0
    scores = edge_weight * without_none.max(dim=-1).values

    image = heatmap_ax.imshow(
        operation_weights.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto"
    )
    for edge in range(NUM_EDGES):
        for column in range(len(PRIMITIVES)):
            value = operation_weights[edge, column].item()
            heatmap_ax.text(
                column,
                edge,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if value > 0.55 else "black",
            )

    # Outline the (edge, operation) entries that the derived genotype keeps.
    kept_operations = {(source, target): op for source, target, op in genotype.edges(cell)}
    for edge, (source, target) in enumerate(EDGES):
        if (source, target) in kept_operations:
            column = PRIMITIVES.index(kept_operations[(source, target)])
            outline = Rectangle(
                (column - 0.5, edge - 0.5), 1, 1, fill=False, edgecolor="#d62728", linewidth=2.0
            )
            heatmap_ax.add_patch(outline)

    heatmap_ax.set_xticks(range(len(PRIMITIVES)), PRIMITIVES, rotation=30, ha="right", fontsize=8)
    edge_labels = [_edge_label(edge) for edge in range(NUM_EDGES)]
    heatmap_ax.set_yticks(range(NUM_EDGES), edge_labels, fontsize=8)
    heatmap_ax.set_title(f"{CELL_TITLES[cell]}: softmax(alpha), derived operations outlined", fontsize=10)
    figure.colorbar(image, ax=heatmap_ax, fraction=0.035, pad=0.02)

    colors = ["#3c78d8" if pair in kept_operations else "#a4c2f4" for pair in EDGES]
    bar_ax.barh(range(NUM_EDGES), edge_weight.numpy(), color=colors, label="B (edge weight)")
    bar_ax.scatter(
        scores.numpy(), range(NUM_EDGES), color="black", s=14, zorder=3, label="B × max A (score)"
    )
    bar_ax.set_ylim(NUM_EDGES - 0.5, -0.5)
    bar_ax.set_xlim(0.0, 1.0)
    bar_ax.set_yticks(range(NUM_EDGES), [])
    bar_ax.set_title("edge weights, kept edges dark", fontsize=10)
    bar_ax.tick_params(axis="x", labelsize=8)
    bar_ax.legend(fontsize=7, loc="lower right")

    # Horizontal rules separate the edges of different target nodes.
    for edge in range(1, NUM_EDGES):
        if EDGES[edge][1] != EDGES[edge - 1][1]:
            for ax in (heatmap_ax, bar_ax):
                ax.axhline(edge - 0.5, color="#666666", linewidth=0.8)


def plot_arch_heatmaps(
    alpha: Mapping[str, Any],
    beta: Mapping[str, Any],
    path: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> Figure:
    """Plot softmax(alpha) heatmaps and edge-weight bars of both cells and return the figure.

    ``alpha`` and ``beta`` have the layout of :func:`idarts.genotypes.derive_genotype`.
    Each cell gets a 14x8 heatmap of operation weights, with the operations
    of the derived genotype outlined, and a bar chart of the edge weights B
    with the selection score B x max A as dots. With ``path`` the figure is
    also saved as a PNG at 100 dpi.
    """
    genotype = derive_genotype(alpha, beta)

    figure = Figure(figsize=(13, 11), layout="constrained")
    grid = figure.add_gridspec(len(CELL_TYPES), 2, width_ratios=(3.2, 1))
    for row, cell in enumerate(CELL_TYPES):
        alpha_cell = _cell_parameter(alpha, "alpha", cell, (NUM_EDGES, len(PRIMITIVES)))
        beta_cell = _cell_parameter(beta, "beta", cell, (NUM_EDGES,))
        heatmap_ax = figure.add_subplot(grid[row, 0])
        bar_ax = figure.add_subplot(grid[row, 1])
        _plot_cell_weights(figure, heatmap_ax, bar_ax, cell, alpha_cell, beta_cell, genotype)

    if title:
        figure.suptitle(title, fontsize=12)
    if path is not None:
        _save(figure, path)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Save ``figure`` as a PNG, creating the parent folder if needed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=SAVE_DPI, bbox_inches="tight", format="png")
    logger.debug("Saved figure to %s", target)
