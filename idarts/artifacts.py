"""Files that describe a search: genotype, architecture history and figures."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from idarts.search_space import CELL_TYPES  # noqa: E402
from idarts.visualize import plot_arch_heatmaps, plot_cell  # noqa: E402

if TYPE_CHECKING:
    from idarts.search import Searcher

SEARCH_ARTIFACTS = ("genotype.json", "arch.json", "normal.png", "reduce.png", "arch_heatmap.png")
"""File names that :func:`write_search_artifacts` writes."""


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
        temporary = Path(handle.name)
    os.replace(temporary, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def write_search_artifacts(searcher: Searcher, directory: str | Path) -> list[Path]:
    """Write the genotype, the architecture history and the figures of a search.

    Returns:
        The paths written, in the order of :data:`SEARCH_ARTIFACTS`.
    """
    directory = Path(directory)
    genotype = searcher.genotype()
    paths = [directory / name for name in SEARCH_ARTIFACTS]

    write_text_atomic(paths[0], genotype.to_json(indent=1) + "\n")
    write_json_atomic(paths[1], searcher.arch_record())

    for cell, path in zip(CELL_TYPES, paths[2:4]):
        figure = plot_cell(genotype, cell)
        figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(figure)

    alpha = {cell: searcher.network.alpha[cell].detach().cpu() for cell in CELL_TYPES}
    beta = {cell: searcher.network.beta[cell].detach().cpu() for cell in CELL_TYPES}
    figure = plot_arch_heatmaps(alpha, beta)
    figure.savefig(paths[4], dpi=100, bbox_inches="tight")
    plt.close(figure)
    return paths
