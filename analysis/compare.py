"""Compare configurations of a sweep over seeds, and IDARTS with PC-DARTS seed by seed.

All functions take the frames of :mod:`analysis.loading` and return new
frames. Confidence intervals use Student's t distribution over runs (seeds),
so they assume roughly normal run-to-run variation. With one run, a group's
standard deviation and interval are NaN.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis.frames import (
    check_columns,
    final_metric_column,
    finished_runs,
    higher_is_better,
    swept_params,
)

logger = logging.getLogger(__name__)

DEFAULT_BY: tuple[str, ...] = ("mode", "threshold", "partial_k")
MIN_PAIRS = 3
"""Fewest IDARTS/PC-DARTS pairs for which :func:`compare_modes` states a conclusion."""

BACKTRACKING_SETTINGS: tuple[str, ...] = ("threshold", "eta_b", "psi_init", "eta_psi")
"""Settings that only IDARTS uses: PC-DARTS runs that differ only in these run the same search."""

IDARTS = "idarts"
PCDARTS = "pcdarts"
MODE_LABELS = {IDARTS: "IDARTS", PCDARTS: "PC-DARTS"}


def confidence_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Return the t-distribution confidence interval of the mean of ``values``; NaNs for fewer than 2 values."""
    data = np.asarray(values, dtype=float)
    count = len(data)
    if count < 2:
        return math.nan, math.nan
    mean = float(data.mean())
    half_width = float(stats.t.ppf((1.0 + confidence) / 2.0, count - 1) * data.std(ddof=1) / math.sqrt(count))
    return mean - half_width, mean + half_width


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"invalid confidence={confidence!r}: use a level strictly between 0 and 1, e.g. 0.95")


def _metric_column(frame: pd.DataFrame, metric: str) -> str:
    """Return the runs-frame column of ``metric``: the column itself, else the final-value column."""
    if metric in frame.columns:
        return metric
    column = final_metric_column(metric)
    check_columns(frame, [column], f"metric {metric!r}")
    return column


def _present(by: Sequence[str] | str | None, frame: pd.DataFrame, context: str) -> list[str]:
    columns = [by] if isinstance(by, str) else list(by or [])
    check_columns(frame, columns, context)
    return columns


def summarize(
    df: pd.DataFrame,
    by: Sequence[str] | str = DEFAULT_BY,
    metric: str = "valid_acc",
    confidence: float = 0.95,
    finished_only: bool = True,
) -> pd.DataFrame:
    """Summarize a metric per configuration over its runs (usually its seeds).

    Args:
        df: a runs frame.
        by: the columns that define a configuration.
        metric: a runs-frame column such as ``valid_acc`` (final) or ``best_valid_acc``.
        confidence: level of the interval, in (0, 1).
        finished_only: use only runs with status FINISHED, so early-stopped
            trials do not mix truncated scores in.

    Returns:
        One row per configuration, sorted by ``by``: the ``by`` columns,
        ``mean``, ``std`` (sample standard deviation), ``count`` (runs with a
        finite value), ``ci_low`` and ``ci_high``. Runs whose metric is NaN
        are not counted.

    Raises:
        ValueError: a ``by`` column or the metric is missing, or ``confidence`` is outside (0, 1).
    """
    _check_confidence(confidence)
    columns = _present(by, df, "summarize(by=...)")
    value_column = _metric_column(df, metric)
    runs = finished_runs(df) if finished_only else df
    runs = runs[np.isfinite(runs[value_column].astype(float))]

    rows = []
    for key, group in runs.groupby(columns, dropna=False, sort=True) if columns else [((), runs)]:
        values = group[value_column].to_numpy(dtype=float)
        low, high = confidence_interval(values, confidence)
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(columns, key)),
                "mean": float(values.mean()) if len(values) else math.nan,
                "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                "count": len(values),
                "ci_low": low,
                "ci_high": high,
            }
        )
    result = pd.DataFrame(rows, columns=[*columns, "mean", "std", "count", "ci_low", "ci_high"])
    return result.astype({"count": "int64"})


def best_run(df: pd.DataFrame, metric: str = "valid_acc", finished_only: bool = True) -> pd.Series:
    """Return the row of the run with the best value of ``metric`` (highest, or lowest for losses).

    Raises:
        ValueError: the metric is missing, or no (finished) run has a value of it.
    """
    value_column = _metric_column(df, metric)
    runs = finished_runs(df) if finished_only else df
    runs = runs[np.isfinite(runs[value_column].astype(float))]
    if runs.empty:
        kind = "finished run" if finished_only else "run"
        raise ValueError(f"no {kind} has a value of {metric}; check that the sweep's trials finished")
    return runs.sort_values(value_column, ascending=not higher_is_better(metric), kind="stable").iloc[0]


# ---------------------------------------------------------------------------
# IDARTS against PC-DARTS


def default_pair_on(df: pd.DataFrame) -> list[str]:
    """Return the columns that match an IDARTS run with its PC-DARTS run.

    These are ``seed`` and every swept setting except ``mode`` and the
    backtracking settings, because PC-DARTS ignores the latter.
    """
    swept = swept_params(df)
    columns = ["seed"] if "seed" in df.columns else []
    columns += [name for name in swept if name not in ("mode", "seed", *BACKTRACKING_SETTINGS)]
    return columns


def default_compare_by(df: pd.DataFrame) -> list[str]:
    """Return the backtracking settings that vary among the IDARTS runs: each value is compared on its own."""
    if "mode" not in df.columns:
        return []
    idarts = df[df["mode"] == IDARTS]
    return [name for name in BACKTRACKING_SETTINGS if name in idarts.columns and idarts[name].nunique(dropna=False) > 1]


def paired_modes(
    df: pd.DataFrame,
    metric: str = "valid_acc",
    pair_on: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    finished_only: bool = True,
) -> pd.DataFrame:
    """Match every IDARTS result with the PC-DARTS result of the same seed and settings.

    Args:
        df: a runs frame with a ``mode`` column.
        metric: the runs-frame column compared.
        pair_on: columns that must be equal within a pair; default :func:`default_pair_on`.
        by: IDARTS settings compared separately; default :func:`default_compare_by`.
        finished_only: use only runs with status FINISHED.

    Returns:
        One row per pair: the ``by`` and ``pair_on`` columns, ``idarts`` and
        ``pcdarts`` (the metric, averaged over runs that share all these
        columns), ``difference`` (IDARTS minus PC-DARTS), ``idarts_runs`` and
        ``pcdarts_runs`` (how many runs each side averages).

    Raises:
        ValueError: a column is missing.
    """
    check_columns(df, ["mode"], "paired_modes")
    value_column = _metric_column(df, metric)
    pair_on = list(default_pair_on(df) if pair_on is None else pair_on)
    by = list(default_compare_by(df) if by is None else by)
    check_columns(df, [*pair_on, *by], "paired_modes(pair_on=..., by=...)")

    runs = finished_runs(df) if finished_only else df
    runs = runs[np.isfinite(runs[value_column].astype(float))]
    idarts = runs[runs["mode"] == IDARTS]
    pcdarts = runs[runs["mode"] == PCDARTS]
    output_columns = [*by, *pair_on, IDARTS, PCDARTS, "difference", "idarts_runs", "pcdarts_runs"]
    if idarts.empty or pcdarts.empty:
        return pd.DataFrame(columns=output_columns)

    def averaged(frame: pd.DataFrame, keys: list[str], name: str) -> pd.DataFrame:
        if not keys:
            return pd.DataFrame({name: [frame[value_column].mean()], f"{name}_runs": [len(frame)]})
        grouped = frame.groupby(keys, dropna=False)[value_column]
        return pd.DataFrame({name: grouped.mean(), f"{name}_runs": grouped.size()}).reset_index()

    idarts_means = averaged(idarts, [*by, *pair_on], IDARTS)
    pcdarts_means = averaged(pcdarts, pair_on, PCDARTS)
    if pair_on:
        pairs = idarts_means.merge(pcdarts_means, on=pair_on, how="inner")
    else:
        pairs = idarts_means.merge(pcdarts_means, how="cross")
    pairs["difference"] = pairs[IDARTS] - pairs[PCDARTS]
    pairs = pairs[output_columns].sort_values([*by, *pair_on], kind="stable") if by or pair_on else pairs[output_columns]
    return pairs.reset_index(drop=True)


def _paired_statistics(idarts: np.ndarray, pcdarts: np.ndarray, confidence: float) -> dict[str, float]:
    """Return the mean difference, its interval, the paired t-test and the Wilcoxon signed-rank test."""
    differences = idarts - pcdarts
    count = len(differences)
    low, high = confidence_interval(differences, confidence)
    with warnings.catch_warnings():
        # Identical differences make the t statistic 0/0; scipy warns and returns NaN, which is kept.
        warnings.simplefilter("ignore", RuntimeWarning)
        t_test = stats.ttest_rel(idarts, pcdarts)
    try:
        wilcoxon = stats.wilcoxon(idarts, pcdarts)
        wilcoxon_statistic, wilcoxon_p = float(wilcoxon.statistic), float(wilcoxon.pvalue)
    except ValueError:
        # scipy rejects a Wilcoxon test whose differences are all zero.
        wilcoxon_statistic = wilcoxon_p = math.nan
    return {
        "mean_difference": float(differences.mean()),
        "std_difference": float(differences.std(ddof=1)) if count > 1 else math.nan,
        "ci_low": low,
        "ci_high": high,
        "t_statistic": float(t_test.statistic),
        "p_value": float(t_test.pvalue),
        "wilcoxon_statistic": wilcoxon_statistic,
        "wilcoxon_p_value": wilcoxon_p,
    }


def mode_conclusion(
    n_pairs: int,
    mean_difference: float,
    ci_low: float,
    ci_high: float,
    p_value: float,
    metric: str,
    confidence: float = 0.95,
    significance: float = 0.05,
    higher_better: bool | None = None,
    setting: str = "",
    std_difference: float = math.nan,
) -> str:
    """Phrase the outcome of a paired IDARTS/PC-DARTS comparison as one sentence.

    With fewer than :data:`MIN_PAIRS` pairs the sentence states that and
    claims nothing. When every pair differs by the same amount (``std_difference``
    is 0) the t-test is degenerate, and the sentence reports the difference
    without a test.
    """
    where = f" at {setting}" if setting else ""
    if n_pairs < MIN_PAIRS:
        return (
            f"Too few pairs{where} to compare IDARTS with PC-DARTS on {metric}: {n_pairs} "
            f"(need at least {MIN_PAIRS} seeds run in both modes with the same settings)."
        )

    higher_better = higher_is_better(metric) if higher_better is None else higher_better
    level = f"{confidence:.0%}"
    numbers = (
        f"mean difference {mean_difference:+.3g} (IDARTS minus PC-DARTS, {level} CI {ci_low:.3g} to {ci_high:.3g}), "
        f"paired t-test p = {p_value:.3g}, {n_pairs} pairs"
    )
    if std_difference == 0.0:
        return (
            f"All {n_pairs} pairs{where} differ by exactly {mean_difference:+.3g} on {metric} (IDARTS minus "
            "PC-DARTS); with no spread the t-test is undefined, so no significance is claimed."
        )
    if not math.isfinite(p_value):
        return f"The paired t-test{where} is undefined: {numbers}."
    if p_value >= significance:
        return f"No significant difference between IDARTS and PC-DARTS on {metric}{where} (p >= {significance:g}): {numbers}."
    better = (mean_difference > 0) == higher_better
    winner, loser = ("IDARTS", "PC-DARTS") if better else ("PC-DARTS", "IDARTS")
    return f"{winner} is better than {loser} on {metric}{where}: {numbers}."


def _setting_text(by: Sequence[str], key: Sequence[Any]) -> str:
    return ", ".join(f"{name}={value}" for name, value in zip(by, key))


def compare_modes(
    df: pd.DataFrame,
    metric: str = "valid_acc",
    pair_on: Sequence[str] | None = None,
    by: Sequence[str] | None = None,
    confidence: float = 0.95,
    significance: float = 0.05,
    finished_only: bool = True,
) -> pd.DataFrame:
    """Compare IDARTS with PC-DARTS on a metric, paired by seed and by the other swept settings.

    Pairs come from :func:`paired_modes`. Each distinct IDARTS setting of
    ``by`` (by default the swept backtracking settings, such as ``threshold``)
    is compared on its own against the PC-DARTS runs, because PC-DARTS
    ignores those settings.

    Returns:
        One row per ``by`` setting, or a single row when ``by`` is empty. The
        columns are the ``by`` columns, ``metric``, ``n_pairs``,
        ``mean_idarts``, ``mean_pcdarts`` and ``mean_difference`` (IDARTS
        minus PC-DARTS, in the metric's unit). Then come ``std_difference``,
        ``ci_low`` and ``ci_high`` (t interval of the mean difference),
        ``t_statistic`` and ``p_value`` (two-sided paired t-test),
        ``wilcoxon_statistic`` and ``wilcoxon_p_value`` (Wilcoxon signed-rank
        test) and ``conclusion``.
        With fewer than :data:`MIN_PAIRS` pairs every statistic is NaN and
        the conclusion states that there are too few pairs. Nothing is raised.

    Raises:
        ValueError: a column is missing, or ``confidence`` is outside (0, 1).
    """
    _check_confidence(confidence)
    by = list(default_compare_by(df) if by is None else by)
    pairs = paired_modes(df, metric, pair_on=pair_on, by=by, finished_only=finished_only)

    groups = list(pairs.groupby(by, dropna=False, sort=True)) if by and not pairs.empty else [((), pairs)]
    rows = []
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        differences = group["difference"].to_numpy(dtype=float)
        count = len(differences)
        if count >= MIN_PAIRS:
            statistics = _paired_statistics(
                group[IDARTS].to_numpy(dtype=float), group[PCDARTS].to_numpy(dtype=float), confidence
            )
        else:
            statistics = dict.fromkeys(
                ["mean_difference", "std_difference", "ci_low", "ci_high", "t_statistic", "p_value",
                 "wilcoxon_statistic", "wilcoxon_p_value"],
                math.nan,
            )
        conclusion = mode_conclusion(
            count,
            statistics["mean_difference"],
            statistics["ci_low"],
            statistics["ci_high"],
            statistics["p_value"],
            metric,
            confidence=confidence,
            significance=significance,
            setting=_setting_text(by, key),
            std_difference=statistics["std_difference"],
        )
        rows.append(
            {
                **dict(zip(by, key)),
                "metric": metric,
                "n_pairs": count,
                "mean_idarts": float(group[IDARTS].mean()) if count else math.nan,
                "mean_pcdarts": float(group[PCDARTS].mean()) if count else math.nan,
                **statistics,
                "conclusion": conclusion,
            }
        )
    if not rows:
        logger.warning("compare_modes: no IDARTS/PC-DARTS pairs on %s", metric)
    return pd.DataFrame(rows).astype({"n_pairs": "int64"})


# ---------------------------------------------------------------------------
# Backtracking over epochs


def default_config_columns(frame: pd.DataFrame) -> list[str]:
    """Return the swept settings except ``seed``: the columns that name a configuration."""
    return [name for name in swept_params(frame) if name != "seed"]


def backtracking_profile(
    history: pd.DataFrame, by: Sequence[str] | None = None, metric: str = "backtracked_edges"
) -> pd.DataFrame:
    """Count the gated (backtracked) edges per epoch for each configuration.

    ``backtracked_edges`` of an epoch is the number of edge gatings summed
    over the epoch's steps and both cells.

    Args:
        history: a history frame (:func:`analysis.loading.load_history`).
        by: the configuration columns; default the swept settings except ``seed``.
        metric: the per-epoch count to profile.

    Returns:
        One row per (configuration, epoch), sorted: the ``by`` columns,
        ``epoch``, ``mean``, ``std``, ``min``, ``max`` and ``runs`` of the
        count over the configuration's runs, and ``cumulative_mean`` (the mean
        over runs of each run's total up to that epoch).

    Raises:
        ValueError: a column is missing.
    """
    check_columns(history, ["trial", "epoch", "metric", "value"], "backtracking_profile")
    by = list(default_config_columns(history) if by is None else by)
    check_columns(history, by, "backtracking_profile(by=...)")

    counts = history[history["metric"] == metric].copy()
    counts = counts.sort_values(["trial", "epoch"], kind="stable")
    counts["cumulative"] = counts.groupby("trial")["value"].cumsum()

    grouped = counts.groupby([*by, "epoch"], dropna=False, sort=True)
    profile = grouped["value"].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "runs"})
    profile["cumulative_mean"] = grouped["cumulative"].mean()
    return profile.reset_index()
