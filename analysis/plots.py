"""Matplotlib figures of a sweep. Every function returns a ``matplotlib.figure.Figure``.

Figures are built with matplotlib's object API, as in :mod:`idarts.visualize`,
so they need no display and stay out of pyplot's figure list. Jupyter shows
a returned figure as a PNG once the inline backend is active (the notebooks
run ``%matplotlib inline``). :func:`figure_to_png` gives the bytes for files
and HTML.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from analysis.compare import IDARTS, MODE_LABELS, PCDARTS, default_config_columns, paired_modes, summarize
from analysis.frames import check_columns, final_metric_column, finished_runs, higher_is_better
from analysis.stability import has_genotype, operation_frequencies
from idarts.genotypes import GENOTYPE_OPERATIONS, edge_weights
from idarts.search_space import CELL_TYPES, EDGES, NUM_EDGES, PRIMITIVES
from idarts.visualize import CELL_TITLES, node_label, plot_cell

FIGURE_DPI = 100
MAX_LEGEND_ENTRIES = 12
PERCENT_METRICS = ("train_acc", "valid_acc", "best_train_acc", "best_valid_acc")


def figure_to_png(figure: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """Render ``figure`` as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _metric_label(metric: str) -> str:
    return f"{metric} (%)" if metric in PERCENT_METRICS else metric


def _config_label(names: Sequence[str], key: Sequence[Any]) -> str:
    if not names:
        return "all runs"
    return ", ".join(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}" for name, value in zip(names, key))


def _groups(frame: pd.DataFrame, by: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    if not by:
        return [((), frame)]
    return [(key if isinstance(key, tuple) else (key,), group) for key, group in frame.groupby(by, dropna=False, sort=True)]


def _legend(ax: Any, **options: Any) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles[:MAX_LEGEND_ENTRIES], labels[:MAX_LEGEND_ENTRIES], fontsize=8, **options)


def _empty_check(frame: pd.DataFrame, context: str) -> None:
    if frame.empty:
        raise ValueError(f"{context}: no runs to plot; check the sweep name and that trials finished")


def plot_metric_vs_threshold(
    runs: pd.DataFrame,
    metric: str = "valid_acc",
    k_column: str = "partial_k",
    confidence: float = 0.95,
    finished_only: bool = True,
) -> Figure:
    """Plot the mean metric of IDARTS runs against the backtracking threshold, one line per K.

    Error bars are the t confidence intervals over seeds from
    :func:`analysis.compare.summarize` (none for a single run). PC-DARTS
    runs, for which the threshold means nothing, appear as one dashed
    horizontal line per K with its interval as a band.

    Raises:
        ValueError: a needed column is missing, or no run is left to plot.
    """
    check_columns(runs, ["threshold", k_column], "plot_metric_vs_threshold")
    selected = finished_runs(runs) if finished_only else runs
    _empty_check(selected, "plot_metric_vs_threshold")
    has_modes = "mode" in selected.columns
    idarts = selected[selected["mode"] == IDARTS] if has_modes else selected
    pcdarts = selected[selected["mode"] == PCDARTS] if has_modes else selected.iloc[0:0]

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    k_values = sorted(set(selected[k_column].dropna()))
    colors = {k: f"C{index % 10}" for index, k in enumerate(k_values)}

    if not idarts.empty:
        summary = summarize(idarts, by=[k_column, "threshold"], metric=metric, confidence=confidence, finished_only=False)
        for k, group in summary.groupby(k_column, sort=True):
            errors = np.vstack([group["mean"] - group["ci_low"], group["ci_high"] - group["mean"]])
            ax.errorbar(
                group["threshold"], group["mean"], yerr=np.nan_to_num(errors), marker="o", capsize=4,
                color=colors[k], label=f"IDARTS, K={k}",
            )
    if not pcdarts.empty:
        summary = summarize(pcdarts, by=[k_column], metric=metric, confidence=confidence, finished_only=False)
        for row in summary.itertuples(index=False):
            k = getattr(row, k_column)
            ax.axhline(row.mean, color=colors[k], linestyle="--", linewidth=1.2, label=f"PC-DARTS, K={k}")
            if math.isfinite(row.ci_low):
                ax.axhspan(row.ci_low, row.ci_high, color=colors[k], alpha=0.12)

    ax.set_xlabel("backtracking threshold τ")
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"{metric} against threshold, mean and {confidence:.0%} CI over seeds")
    ax.grid(alpha=0.3)
    _legend(ax)
    return figure


def plot_learning_curves(
    history: pd.DataFrame, metric: str = "valid_acc", by: Sequence[str] | None = None
) -> Figure:
    """Plot a metric over epochs: the mean per configuration in bold, each run thin behind it.

    Args:
        history: a history frame.
        metric: the metric to plot.
        by: configuration columns; default the swept settings except ``seed``.

    Raises:
        ValueError: a column is missing, or the history has no values of ``metric``.
    """
    by = list(default_config_columns(history) if by is None else by)
    check_columns(history, [*by, "trial", "epoch", "metric", "value"], "plot_learning_curves")
    values = history[history["metric"] == metric]
    if values.empty:
        raise ValueError(f"plot_learning_curves: no values of metric {metric!r}; logged metrics: {sorted(history['metric'].unique())}")

    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.add_subplot()
    for index, (key, group) in enumerate(_groups(values, by)):
        color = f"C{index % 10}"
        for _, run in group.groupby("trial"):
            ax.plot(run["epoch"], run["value"], color=color, alpha=0.25, linewidth=0.8)
        mean = group.groupby("epoch")["value"].mean()
        runs = group["trial"].nunique()
        ax.plot(mean.index, mean.to_numpy(), color=color, marker="o", linewidth=2, label=f"{_config_label(by, key)} ({runs} runs)")

    ax.set_xlabel("epoch")
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"{metric} per epoch: mean per configuration, runs thin")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(ax)
    return figure


def plot_arch_trajectories(arch_record: Mapping[str, Any], cell: str = "normal", title: str | None = None) -> Figure:
    """Plot how one run's alpha and beta evolve over epochs, for one cell.

    One panel per edge shows softmax(alpha) of its 8 operations. The y range
    follows the data, so that small early changes show. A red tick at the
    bottom marks each epoch in which backtracking gated the edge, and the
    number next to it counts the steps that gated it. The last panel shows the edge
    weights softmax(beta) within each target node.

    Args:
        arch_record: the content of ``arch.json`` (:func:`analysis.loading.load_arch_record`).
        cell: "normal" or "reduce".

    Raises:
        ValueError: unknown cell, or a record without epochs.
    """
    if cell not in CELL_TYPES:
        raise ValueError(f"unknown cell type {cell!r}; use one of {list(CELL_TYPES)}")
    snapshots = arch_record.get("epochs") or []
    if not snapshots:
        raise ValueError("the architecture record has no epochs; the run ended before its first epoch")

    epochs = [snapshot["epoch"] for snapshot in snapshots]
    alpha = torch.softmax(torch.tensor([snapshot["alpha"][cell] for snapshot in snapshots]), dim=-1).numpy()
    beta = torch.stack([edge_weights(torch.tensor(snapshot["beta"][cell])) for snapshot in snapshots]).numpy()
    gates = np.array([snapshot.get("gate_counts", {}).get(cell, [0] * NUM_EDGES) for snapshot in snapshots])

    columns = 4
    rows = math.ceil((NUM_EDGES + 1) / columns)
    figure = Figure(figsize=(3.2 * columns, 2.3 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, sharex=True, squeeze=False).ravel()
    for edge, ax in enumerate(axes[:NUM_EDGES]):
        for column, op in enumerate(PRIMITIVES):
            ax.plot(epochs, alpha[:, edge, column], marker=".", linewidth=1.2, color=f"C{column}", label=op)
        # Gate ticks sit at a fixed height in axes coordinates, because the y range follows the data.
        gate_height = ax.get_xaxis_transform()
        for epoch, count in zip(epochs, gates[:, edge]):
            if count:
                ax.plot([epoch], [0.04], marker="|", markersize=12, color="red", transform=gate_height)
                ax.annotate(str(int(count)), (epoch, 0.1), xycoords=gate_height, fontsize=7, color="red", ha="center")
        source, target = EDGES[edge]
        ax.set_title(f"{node_label(source, math_text=True)} → {node_label(target)}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)

    beta_ax = axes[NUM_EDGES]
    for edge in range(NUM_EDGES):
        source, target = EDGES[edge]
        beta_ax.plot(epochs, beta[:, edge], linewidth=1, label=f"{source}→{target}")
    beta_ax.set_title("edge weights softmax(β) per node", fontsize=9)
    beta_ax.tick_params(labelsize=7)

    legend_ax = axes[NUM_EDGES + 1] if len(axes) > NUM_EDGES + 1 else None
    handles, labels = axes[0].get_legend_handles_labels()
    if legend_ax is not None:
        legend_ax.axis("off")
        legend_ax.legend(handles, labels, fontsize=7, loc="center", title="softmax(α)", title_fontsize=8)
    for ax in axes[NUM_EDGES + 2:]:
        ax.axis("off")
    for ax in axes[-columns:]:
        ax.set_xlabel("epoch", fontsize=8)
    figure.suptitle(title or f"{CELL_TITLES[cell]}: architecture weights over epochs, red ticks = backtracking")
    return figure


def plot_backtracking(
    history: pd.DataFrame, by: Sequence[str] | None = None, metric: str = "backtracked_edges"
) -> Figure:
    """Plot gated-edge counts per epoch for each configuration: per epoch (left) and cumulative (right).

    Lines are means over the configuration's runs; the band spans the runs' minimum to maximum.

    Raises:
        ValueError: a column is missing, or the history has no values of ``metric``.
    """
    from analysis.compare import backtracking_profile

    by = list(default_config_columns(history) if by is None else by)
    profile = backtracking_profile(history, by=by, metric=metric)
    if profile.empty:
        raise ValueError(f"plot_backtracking: the history has no {metric!r} values")

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    per_epoch, cumulative = figure.subplots(1, 2)
    for index, (key, group) in enumerate(_groups(profile, by)):
        color = f"C{index % 10}"
        label = _config_label(by, key)
        per_epoch.plot(group["epoch"], group["mean"], marker="o", color=color, label=label)
        per_epoch.fill_between(group["epoch"], group["min"], group["max"], color=color, alpha=0.15)
        cumulative.plot(group["epoch"], group["cumulative_mean"], marker="o", color=color, label=label)

    per_epoch.set_title("gated edges per epoch (mean, band = min to max over runs)")
    cumulative.set_title("gated edges, cumulative (mean over runs)")
    for ax in (per_epoch, cumulative):
        ax.set_xlabel("epoch")
        ax.set_ylabel("gated edges (steps × edges)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    _legend(per_epoch)
    return figure


def plot_operation_heatmap(
    runs: pd.DataFrame, config: Mapping[str, Any] | None = None, finished_only: bool = True, title: str | None = None
) -> Figure:
    """Plot how often each operation was chosen on each edge across the runs (seeds) of one selection.

    Args:
        runs: a runs frame with a ``genotype`` column.
        config: column values that select the runs, e.g. ``{"mode": "idarts", "threshold": 0.5}``; None uses all.
        finished_only: use only runs with status FINISHED.

    Raises:
        ValueError: a ``config`` column is missing, or no run with a genotype is selected.
    """
    selected = finished_runs(runs) if finished_only else runs
    config = dict(config or {})
    check_columns(selected, config, "plot_operation_heatmap(config=...)")
    for name, value in config.items():
        selected = selected[selected[name] == value]
    frequencies = operation_frequencies(selected, by=[], finished_only=False)
    run_count = int(has_genotype(selected).sum())
    if run_count == 0:
        raise ValueError(f"plot_operation_heatmap: no finished run with a genotype matches {config}")

    figure = Figure(figsize=(12, 6), layout="constrained")
    axes = figure.subplots(1, len(CELL_TYPES), sharey=True)
    for ax, cell in zip(axes, CELL_TYPES):
        matrix = np.zeros((NUM_EDGES, len(GENOTYPE_OPERATIONS)))
        for row in frequencies[frequencies["cell"] == cell].itertuples(index=False):
            matrix[EDGES.index((row.source, row.target)), GENOTYPE_OPERATIONS.index(row.operation)] = row.frequency
        image = ax.imshow(matrix, cmap="Greens", vmin=0.0, vmax=1.0, aspect="auto")
        for edge in range(NUM_EDGES):
            for column in range(len(GENOTYPE_OPERATIONS)):
                if matrix[edge, column] > 0:
                    count = round(matrix[edge, column] * run_count)
                    ax.text(column, edge, f"{count}/{run_count}", ha="center", va="center", fontsize=7,
                            color="white" if matrix[edge, column] > 0.6 else "black")
        ax.set_xticks(range(len(GENOTYPE_OPERATIONS)), GENOTYPE_OPERATIONS, rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(NUM_EDGES), [f"{node_label(s, math_text=True)} → {node_label(t)}" for s, t in EDGES], fontsize=8)
        ax.set_title(CELL_TITLES[cell], fontsize=10)
    figure.colorbar(image, ax=list(axes), fraction=0.03, label="fraction of runs choosing the operation")
    where = _config_label(list(config), list(config.values())) if config else "all runs"
    figure.suptitle(title or f"Operation frequency across seeds: {where} ({run_count} runs)")
    return figure


def plot_best_genotypes(
    runs: pd.DataFrame, metric: str = "valid_acc", count: int = 2, finished_only: bool = True
) -> Figure:
    """Draw the normal and reduction cells of the ``count`` runs with the best metric, one row per run.

    Raises:
        ValueError: ``count`` is below 1, the metric column is missing, or no run has a genotype.
    """
    if count < 1:
        raise ValueError(f"invalid count={count!r}: draw at least 1 genotype")
    check_columns(runs, ["genotype", "trial"], "plot_best_genotypes")
    column = metric if metric in runs.columns else final_metric_column(metric)
    check_columns(runs, [column], "plot_best_genotypes")
    selected = finished_runs(runs) if finished_only else runs
    selected = selected[has_genotype(selected) & selected[column].notna()]
    if selected.empty:
        raise ValueError(f"plot_best_genotypes: no finished run has a genotype and a value of {metric}")
    best = selected.sort_values(column, ascending=not higher_is_better(metric), kind="stable").head(count)

    figure = Figure(figsize=(20, 6.2 * len(best)), layout="constrained")
    axes = figure.subplots(len(best), len(CELL_TYPES), squeeze=False)
    for row_axes, (_, run) in zip(axes, best.iterrows()):
        for ax, cell in zip(row_axes, CELL_TYPES):
            plot_cell(run["genotype"], cell, ax=ax)
            ax.set_title(f"{run['trial']}: {CELL_TITLES[cell]}, {metric} {run[column]:.4g}", fontsize=11)
    figure.suptitle(f"Cells of the {len(best)} best runs by {metric}", fontsize=13)
    return figure


def plot_paired_modes(
    runs: pd.DataFrame, metric: str = "valid_acc", pair_on: Sequence[str] | None = None, by: Sequence[str] | None = None
) -> Figure:
    """Plot each IDARTS/PC-DARTS pair as a line from its PC-DARTS to its IDARTS value (slope chart).

    Pairs are those of :func:`analysis.compare.paired_modes`; a rising line
    means IDARTS scored higher in that pair.

    Raises:
        ValueError: the frame has no pairs.
    """
    pairs = paired_modes(runs, metric, pair_on=pair_on, by=by)
    if pairs.empty:
        raise ValueError(f"plot_paired_modes: no IDARTS/PC-DARTS pairs with finished runs and a {metric} value")
    label_columns = [name for name in pairs.columns if name not in (IDARTS, PCDARTS, "difference", "idarts_runs", "pcdarts_runs")]

    figure = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = figure.add_subplot()
    for index, row in enumerate(pairs.itertuples(index=False)):
        values = row._asdict()
        ax.plot([0, 1], [values[PCDARTS], values[IDARTS]], marker="o", color=f"C{index % 10}",
                label=_config_label(label_columns, [values[name] for name in label_columns]))
    ax.set_xticks([0, 1], [MODE_LABELS[PCDARTS], MODE_LABELS[IDARTS]])
    ax.set_xlim(-0.3, 1.3)
    ax.set_ylabel(_metric_label(metric))
    ax.set_title(f"{metric} per pair ({len(pairs)} pairs)")
    ax.grid(alpha=0.3)
    _legend(ax, loc="best")
    return figure
