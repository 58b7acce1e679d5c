"""Conclusions of a sweep as plain sentences, computed from the frames.

The notebooks and ``idarts report`` show these sentences, so each states its
numbers and how many runs they rest on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from analysis.compare import (
    DEFAULT_BY,
    IDARTS,
    MODE_LABELS,
    PCDARTS,
    compare_modes,
    default_config_columns,
    summarize,
)
from analysis.frames import FINISHED, finished_runs, higher_is_better, swept_params
from analysis.stability import genotype_stability

MAX_LISTED_VALUES = 6
"""A swept setting with more distinct values than this (e.g. a sampled float) gets no per-value sentence."""


def overview_by(runs: pd.DataFrame) -> list[str]:
    """Return the columns that define a configuration in the overview.

    These are ``mode``, ``threshold`` and ``partial_k`` when present, then any
    other swept setting except ``seed``.
    """
    columns = [name for name in DEFAULT_BY if name in runs.columns]
    columns += [name for name in default_config_columns(runs) if name not in columns]
    return columns


def _format(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "n/a"


def _setting(names: Sequence[str], values: Sequence[object]) -> str:
    return ", ".join(f"{name}={value}" for name, value in zip(names, values)) or "all runs"


def _interval(row: pd.Series, confidence: float) -> str:
    runs = int(row["count"])
    if runs < 2:
        return "1 run, so no interval"
    return f"{confidence:.0%} CI {_format(row['ci_low'])} to {_format(row['ci_high'])} over {runs} runs"


def status_sentence(runs: pd.DataFrame) -> str:
    """Say how many trials finished, stopped early (KILLED) or failed."""
    counts = runs["status"].value_counts()
    finished = int(counts.get(FINISHED, 0))
    return (
        f"{finished} of {len(runs)} trials finished ({int(counts.get('KILLED', 0))} stopped early, "
        f"{int(counts.get('FAILED', 0))} failed, {int(counts.get('RUNNING', 0))} still running); "
        "the statistics below use the finished ones."
    )


def best_setting_sentences(runs: pd.DataFrame, metric: str = "valid_acc", confidence: float = 0.95) -> list[str]:
    """Name the best configuration by mean metric, then the mean per value of ``partial_k`` and ``threshold``."""
    by = overview_by(runs)
    summary = summarize(runs, by=by, metric=metric, confidence=confidence)
    if summary.empty:
        return [f"No finished run has a value of {metric}."]

    ascending = not higher_is_better(metric)
    best = summary.sort_values("mean", ascending=ascending).iloc[0]
    sentences = [
        f"Best setting by mean {metric}: {_setting(by, [best[name] for name in by])} with "
        f"{_format(best['mean'])} ({_interval(best, confidence)})."
    ]

    idarts = runs[runs["mode"] == IDARTS] if "mode" in runs.columns else runs
    for name, selection, selection_label in (("partial_k", runs, "all modes"), ("threshold", idarts, "IDARTS runs")):
        if name not in swept_params(runs):
            continue
        per_value = summarize(selection, by=[name], metric=metric, confidence=confidence)
        if per_value.empty or len(per_value) > MAX_LISTED_VALUES:
            continue
        parts = [f"{name}={row[name]}: {_format(row['mean'])} ({int(row['count'])} runs)" for _, row in per_value.iterrows()]
        sentences.append(f"Mean {metric} per {name} ({selection_label}): " + "; ".join(parts) + ".")
    return sentences


def seed_sentence(runs: pd.DataFrame, metric: str = "valid_acc") -> str:
    """Compare the spread over seeds within a configuration with the spread between configurations."""
    summary = summarize(runs, by=overview_by(runs), metric=metric)
    repeated = summary[summary["count"] >= 2]
    if repeated.empty:
        return "No setting ran with more than one seed, so the effect of the seed is unknown."
    between = summary["mean"].std(ddof=1) if len(summary) > 1 else math.nan
    return (
        f"Seeds: within a setting, {metric} varies with a standard deviation of {_format(repeated['std'].mean())} "
        f"on average (largest {_format(repeated['std'].max())}, {len(repeated)} settings with 2 or more seeds), "
        f"against a standard deviation of {_format(between)} between the means of the {len(summary)} settings."
    )


def stability_sentence(runs: pd.DataFrame, by: Sequence[str] | None = None) -> str:
    """Summarize the mean genotype overlap across seeds over all configurations."""
    by = overview_by(runs) if by is None else list(by)
    stability = genotype_stability(runs, by=by)
    compared = stability[stability["pairs"] > 0]
    if compared.empty:
        return "No setting has two finished runs with a genotype, so the stability of the cell is unknown."
    return (
        f"Cell stability: runs of the same setting share {compared['mean_overlap'].mean():.0%} of their chosen "
        f"(edge, operation) pairs on average (from {compared['mean_overlap'].min():.0%} to "
        f"{compared['mean_overlap'].max():.0%} over {len(compared)} settings)."
    )


def backtracking_sentence(history: pd.DataFrame) -> str:
    """Give the mean number of gated edges per IDARTS run over the whole search."""
    counts = history[history["metric"] == "backtracked_edges"]
    if "mode" in counts.columns:
        counts = counts[counts["mode"] == IDARTS]
    if counts.empty:
        return "No IDARTS run reported backtracked edges."
    totals = counts.groupby("trial")["value"].sum()
    return (
        f"Backtracking: IDARTS runs gated {_format(totals.mean())} edges per search on average "
        f"(summed over steps, epochs and both cells; from {_format(totals.min())} to {_format(totals.max())}, "
        f"{len(totals)} runs)."
    )


def sweep_conclusions(
    runs: pd.DataFrame, history: pd.DataFrame | None = None, metric: str = "valid_acc", confidence: float = 0.95
) -> list[str]:
    """Answer the sweep questions in sentences: which setting works, how much seeds matter,
    IDARTS against PC-DARTS, how stable the cell is, and how much backtracking happened."""
    if runs.empty:
        return ["The sweep has no trial runs."]
    sentences = [status_sentence(runs), *best_setting_sentences(runs, metric, confidence), seed_sentence(runs, metric)]

    modes = set(finished_runs(runs)["mode"]) if "mode" in runs.columns else set()
    if {IDARTS, PCDARTS} <= modes:
        sentences.extend(compare_modes(runs, metric, confidence=confidence)["conclusion"])
    else:
        present = ", ".join(MODE_LABELS.get(mode, str(mode)) for mode in sorted(modes)) or "no"
        sentences.append(f"Only {present} runs finished, so IDARTS is not compared with PC-DARTS here.")

    sentences.append(stability_sentence(runs))
    if history is not None:
        sentences.append(backtracking_sentence(history))
    return sentences


def mode_conclusions(runs: pd.DataFrame, metric: str = "valid_acc", confidence: float = 0.95) -> list[str]:
    """Compare IDARTS with PC-DARTS in sentences: the paired test, cell stability and skip connections."""
    sentences = list(compare_modes(runs, metric, confidence=confidence)["conclusion"])
    if "mode" not in runs.columns:
        return sentences

    stability = genotype_stability(runs, by=["mode"])
    parts = []
    for _, row in stability.iterrows():
        label = MODE_LABELS.get(row["mode"], row["mode"])
        if row["pairs"] > 0:
            parts.append(f"{label} runs share {row['mean_overlap']:.0%} of their chosen pairs ({row['runs']} runs)")
        else:
            parts.append(f"{label} has {row['runs']} finished run(s), too few to measure")
    if parts:
        sentences.append("Cell stability across seeds and settings: " + "; ".join(parts) + ".")

    finished = finished_runs(runs)
    if "skip_connect_count" in finished.columns and not finished.empty:
        means = finished.groupby("mode")["skip_connect_count"].mean()
        parts = [f"{MODE_LABELS.get(mode, mode)} {_format(value)}" for mode, value in means.items()]
        sentences.append("Mean skip connections in the final normal cell: " + ", ".join(parts) + ".")
    return sentences


def as_markdown(sentences: Sequence[str]) -> str:
    """Format sentences as a Markdown bullet list."""
    return "\n".join(f"- {sentence}" for sentence in sentences)
