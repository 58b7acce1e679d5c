"""``run_search``: a search run in an output folder, with its files and checkpoint."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from idarts.artifacts import append_metrics_row, truncate_metrics, write_search_artifacts
from idarts.config import SearchConfig
from idarts.search import SEARCH_METRICS, Searcher, changed_settings

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.csv"
METRIC_COLUMNS = (*SEARCH_METRICS, "genotype")


class RunFolderError(RuntimeError):
    """The output folder does not match the request: an existing search without resume, or the reverse."""


def save_checkpoint(searcher: Searcher, path: Path) -> None:
    """Save the searcher state atomically: a crash while saving keeps the previous checkpoint."""
    temporary = path.with_suffix(".tmp")
    torch.save(searcher.state_dict(), temporary)
    os.replace(temporary, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def resume_config(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> SearchConfig:
    """Return the config saved in ``out_dir`` with ``overrides`` applied.

    Raises:
        RunFolderError: ``out_dir`` has no saved config, or an override changes a
            setting that a resumed search cannot change.
    """
    path = Path(out_dir) / CONFIG_NAME
    if not path.exists():
        raise RunFolderError(
            f"cannot resume: {path} not found; start the search without --resume"
        )
    config = SearchConfig.from_yaml(path)
    if not overrides:
        return config

    updated = config.replace(**overrides)
    differing = changed_settings(config.to_dict(), updated.to_dict())
    if differing:
        raise RunFolderError(
            f"cannot resume {out_dir} with changed settings {differing}; "
            "drop those options or start a new search in another --out folder"
        )
    return updated


def run_search(
    config: SearchConfig,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run a search to the end in ``out_dir``, checkpointing after every epoch.

    Writes ``config.yaml``, ``metrics.csv`` (a row per epoch, as it goes),
    ``checkpoint.pt`` (after every epoch), and at the end ``genotype.json``,
    ``arch.json`` and the cell and heatmap PNGs.

    Args:
        resume: continue from ``out_dir/checkpoint.pt``. Without it, a folder
            that already contains a search is rejected instead of overwritten.

    Returns:
        The metrics of the last epoch.
    """
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    metrics_path = out_dir / METRICS_NAME

    if not resume and (checkpoint_path.exists() or metrics_path.exists()):
        raise RunFolderError(
            f"{out_dir} already contains a search. Pass --resume to continue it, "
            "or choose another --out folder"
        )
    if resume and not checkpoint_path.exists():
        raise RunFolderError(
            f"cannot resume: no checkpoint at {checkpoint_path}; "
            "start the search without --resume"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    searcher = Searcher(config, show_progress=show_progress)
    if resume:
        searcher.load_state_dict(load_checkpoint(checkpoint_path))
        logger.info("resumed %s after epoch %d", out_dir, searcher.epoch)
    else:
        config.to_yaml(out_dir / CONFIG_NAME)
    truncate_metrics(metrics_path, searcher.epoch, METRIC_COLUMNS)

    metrics: dict[str, Any] = {}
    with tqdm(
        total=config.epochs, initial=searcher.epoch, desc="search", unit="epoch",
        disable=not show_progress,
    ) as progress:
        while not searcher.done:
            metrics = searcher.run_epoch()
            append_metrics_row(metrics_path, metrics, METRIC_COLUMNS)
            save_checkpoint(searcher, checkpoint_path)
            progress.set_postfix(valid_acc=f"{metrics['valid_acc']:.2f}")
            progress.update()

    paths = write_search_artifacts(searcher, out_dir)
    logger.info("search finished; genotype written to %s", paths[0])
    return metrics
