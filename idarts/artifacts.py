"""Files that describe a search: genotype, architecture history and figures."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
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
    # NamedTemporaryFile creates the file readable by its owner only; give it the usual mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def append_metrics_row(path: Path, metrics: dict[str, Any], columns: Sequence[str]) -> None:
    """Append one epoch's metrics to a CSV file, writing the header first when the file is new.

    The row is flushed and synced to disk, so a crash right after an epoch keeps it.
    """
    new_file = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new_file:
            writer.writeheader()
        writer.writerow({name: metrics[name] for name in columns})
        handle.flush()
        os.fsync(handle.fileno())


def truncate_metrics(path: Path, last_epoch: int, columns: Sequence[str]) -> None:
    """Drop the rows after ``last_epoch``: they were written after the checkpoint that a resume restores."""
    if not path.exists():
        return
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) <= last_epoch]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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
