"""summarize, compare_modes, genotype_stability and backtracking_profile on hand-built frames with known results."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from analysis import (
    backtracking_profile,
    best_run,
    compare_modes,
    confidence_interval,
    genotype_overlap,
    genotype_stability,
    operation_frequencies,
    paired_modes,
    parse_param,
    summarize,
    swept_params,
)
from analysis.conclusions import mode_conclusions, sweep_conclusions
from analysis_fixtures import make_genotype

T_975_2 = 4.302652729911275
"""Student's t quantile for a two-sided 95% interval with 2 degrees of freedom."""

BASE_OPS = ["sep_conv_3x3", "sep_conv_5x5", "skip_connect", "dil_conv_3x3",
            "max_pool_3x3", "avg_pool_3x3", "dil_conv_5x5", "sep_conv_3x3"]


def runs(rows: list[dict]) -> pd.DataFrame:
    """Build a runs frame in which every row is FINISHED unless it sets another status."""
    frame = pd.DataFrame(rows)
    if "status" not in frame:
        frame["status"] = "FINISHED"
    frame["status"] = frame["status"].fillna("FINISHED")
    frame["trial"] = [f"t{index}" for index in range(len(frame))]
    return frame


# ---------------------------------------------------------------------------
# summarize


def test_summarize_known_mean_std_ci():
    frame = runs([
        {"mode": "idarts", "threshold": 0.5, "partial_k": 4, "seed": seed, "valid_acc": value}
        for seed, value in enumerate([1.0, 2.0, 3.0])
    ])

    summary = summarize(frame, by=["mode", "threshold", "partial_k"], metric="valid_acc")

    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["mean"] == pytest.approx(2.0)
    assert row["std"] == pytest.approx(1.0)
    assert row["count"] == 3
    half_width = T_975_2 / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(2.0 - half_width)
    assert row["ci_high"] == pytest.approx(2.0 + half_width)
    assert list(summary.columns) == ["mode", "threshold", "partial_k", "mean", "std", "count", "ci_low", "ci_high"]


def test_summarize_groups_sorted_and_single_run_nan():
    frame = runs([
        {"mode": "pcdarts", "threshold": 0.5, "partial_k": 4, "valid_acc": 70.0},
        {"mode": "idarts", "threshold": 0.7, "partial_k": 4, "valid_acc": 80.0},
        {"mode": "idarts", "threshold": 0.3, "partial_k": 4, "valid_acc": 60.0},
        {"mode": "idarts", "threshold": 0.3, "partial_k": 4, "valid_acc": 64.0},
    ])

    summary = summarize(frame)

    assert list(summary["threshold"]) == [0.3, 0.7, 0.5]
    assert list(summary["count"]) == [2, 1, 1]
    assert summary.iloc[0]["mean"] == pytest.approx(62.0)
    assert math.isnan(summary.iloc[1]["std"])
    assert math.isnan(summary.iloc[1]["ci_low"])
    assert math.isnan(summary.iloc[1]["ci_high"])


def test_summarize_skips_unfinished_and_nan():
    frame = runs([
        {"mode": "idarts", "valid_acc": 50.0},
        {"mode": "idarts", "valid_acc": 10.0, "status": "KILLED"},
        {"mode": "idarts", "valid_acc": 20.0, "status": "FAILED"},
        {"mode": "idarts", "valid_acc": float("nan")},
    ])

    assert summarize(frame, by=["mode"]).iloc[0]["count"] == 1
    assert summarize(frame, by=["mode"], finished_only=False).iloc[0]["count"] == 3


def test_summarize_other_confidence_level():
    frame = runs([{"mode": "idarts", "valid_acc": value} for value in [1.0, 2.0, 3.0]])

    row = summarize(frame, by="mode", confidence=0.9).iloc[0]

    half_width = stats.t.ppf(0.95, 2) / math.sqrt(3)
    assert row["ci_high"] - 2.0 == pytest.approx(half_width)


def test_summarize_rejects_missing_column():
    frame = runs([{"mode": "idarts", "valid_acc": 1.0}])

    with pytest.raises(ValueError, match="partial_k"):
        summarize(frame, by=["mode", "partial_k"])
    with pytest.raises(ValueError, match="test_acc"):
        summarize(frame, by=["mode"], metric="test_acc")
    with pytest.raises(ValueError, match="confidence=1.5"):
        summarize(frame, by=["mode"], confidence=1.5)


def test_confidence_interval_needs_two_values():
    assert all(math.isnan(bound) for bound in confidence_interval([3.0]))
    low, high = confidence_interval([1.0, 3.0])
    assert (low + high) / 2 == pytest.approx(2.0)


# ---------------------------------------------------------------------------
# compare_modes


def paired_frame(differences: list[float], base: float = 80.0, metric: str = "valid_acc") -> pd.DataFrame:
    rows = []
    for seed, difference in enumerate(differences):
        pcdarts_value = base + seed
        rows.append({"mode": "pcdarts", "seed": seed, "threshold": 0.5, metric: pcdarts_value})
        rows.append({"mode": "idarts", "seed": seed, "threshold": 0.5, metric: pcdarts_value + difference})
    return runs(rows)


def test_compare_modes_known_paired_test():
    comparison = compare_modes(paired_frame([1.0, 2.0, 3.0]), "valid_acc")

    assert len(comparison) == 1
    row = comparison.iloc[0]
    assert row["n_pairs"] == 3
    assert row["mean_difference"] == pytest.approx(2.0)
    assert row["std_difference"] == pytest.approx(1.0)
    assert row["ci_low"] == pytest.approx(2.0 - T_975_2 / math.sqrt(3))
    assert row["ci_high"] == pytest.approx(2.0 + T_975_2 / math.sqrt(3))
    assert row["t_statistic"] == pytest.approx(2.0 * math.sqrt(3))
    assert row["p_value"] == pytest.approx(2 * stats.t.sf(2.0 * math.sqrt(3), 2))
    assert row["wilcoxon_p_value"] == pytest.approx(0.25)
    assert row["mean_idarts"] - row["mean_pcdarts"] == pytest.approx(2.0)
    assert row["conclusion"].startswith("No significant difference")


def test_compare_modes_significant_win():
    comparison = compare_modes(paired_frame([1.0, 1.1, 0.9, 1.05, 0.95]), "valid_acc")

    row = comparison.iloc[0]
    assert row["p_value"] < 0.001
    assert row["conclusion"].startswith("IDARTS is better than PC-DARTS on valid_acc")
    assert "5 pairs" in row["conclusion"]


def test_compare_modes_lower_loss_is_better():
    comparison = compare_modes(paired_frame([-0.2, -0.21, -0.19, -0.2], base=1.0, metric="valid_loss"), "valid_loss")

    assert comparison.iloc[0]["conclusion"].startswith("IDARTS is better than PC-DARTS on valid_loss")


def test_compare_modes_pcdarts_better():
    comparison = compare_modes(paired_frame([-1.0, -1.1, -0.9, -1.0]), "valid_acc")

    assert comparison.iloc[0]["conclusion"].startswith("PC-DARTS is better than IDARTS")


def test_compare_modes_two_pairs_claims_nothing():
    comparison = compare_modes(paired_frame([5.0, 6.0]), "valid_acc")

    row = comparison.iloc[0]
    assert row["n_pairs"] == 2
    for column in ("mean_difference", "ci_low", "ci_high", "t_statistic", "p_value", "wilcoxon_p_value"):
        assert math.isnan(row[column]), column
    assert "Too few pairs" in row["conclusion"]
    assert "2" in row["conclusion"]


def test_compare_modes_without_pcdarts_has_zero_pairs():
    frame = runs([{"mode": "idarts", "seed": seed, "valid_acc": 1.0} for seed in range(3)])

    comparison = compare_modes(frame, "valid_acc")

    assert comparison.iloc[0]["n_pairs"] == 0
    assert "Too few pairs" in comparison.iloc[0]["conclusion"]


def test_compare_modes_constant_differences():
    comparison = compare_modes(paired_frame([1.0, 1.0, 1.0]), "valid_acc")

    row = comparison.iloc[0]
    assert row["mean_difference"] == pytest.approx(1.0)
    assert row["conclusion"].startswith("All 3 pairs differ by exactly +1 on valid_acc")
    assert "no significance is claimed" in row["conclusion"]


def test_compare_modes_one_row_per_threshold():
    rows = []
    for seed in range(3):
        # Optuna also samples a threshold for PC-DARTS trials; PC-DARTS ignores it.
        rows.append({"mode": "pcdarts", "seed": seed, "threshold": 0.3, "valid_acc": 70.0 + seed})
        rows.append({"mode": "pcdarts", "seed": seed, "threshold": 0.7, "valid_acc": 72.0 + seed})
        rows.append({"mode": "idarts", "seed": seed, "threshold": 0.3, "valid_acc": 71.0 + seed + 0.1 * seed})
        rows.append({"mode": "idarts", "seed": seed, "threshold": 0.7, "valid_acc": 75.0 + seed})
    frame = runs(rows)

    pairs = paired_modes(frame, "valid_acc")
    comparison = compare_modes(frame, "valid_acc")

    assert list(pairs.columns[:2]) == ["threshold", "seed"]
    assert (pairs["pcdarts_runs"] == 2).all()
    assert pairs.loc[0, "pcdarts"] == pytest.approx(71.0)
    assert list(comparison["threshold"]) == [0.3, 0.7]
    assert list(comparison["n_pairs"]) == [3, 3]
    assert comparison.iloc[1]["mean_difference"] == pytest.approx(4.0)
    assert "threshold=0.7" in comparison.iloc[1]["conclusion"]


def test_paired_modes_match_other_swept_values():
    rows = []
    for seed in range(2):
        for k in (2, 4):
            rows.append({"mode": "pcdarts", "seed": seed, "partial_k": k, "valid_acc": 10.0 * k})
            rows.append({"mode": "idarts", "seed": seed, "partial_k": k, "valid_acc": 10.0 * k + 1})

    pairs = paired_modes(runs(rows), "valid_acc")

    assert len(pairs) == 4
    assert (pairs["difference"] == 1.0).all()
    assert set(pairs.columns) >= {"seed", "partial_k"}


def test_paired_modes_drop_unmatched_seed():
    frame = paired_frame([1.0, 2.0, 3.0])
    frame = frame[~((frame["mode"] == "pcdarts") & (frame["seed"] == 2))]

    assert list(paired_modes(frame, "valid_acc")["seed"]) == [0, 1]


# ---------------------------------------------------------------------------
# genotype_stability


def changed(ops: list[str], positions: list[int], op: str = "avg_pool_3x3") -> list[str]:
    result = list(ops)
    for position in positions:
        result[position] = op if result[position] != op else "max_pool_3x3"
    return result


def test_genotype_overlap_known_values():
    same = make_genotype(BASE_OPS)
    four_changed = make_genotype(changed(BASE_OPS, [0, 1, 2, 3]), BASE_OPS)
    all_changed = make_genotype(["skip_connect"] * 8, ["skip_connect"] * 8)

    assert genotype_overlap(same, make_genotype(BASE_OPS)) == 1.0
    assert genotype_overlap(same, four_changed) == pytest.approx(12 / 16)
    assert genotype_overlap(same, four_changed, cells=("reduce",)) == 1.0
    assert genotype_overlap(same, four_changed, cells=("normal",)) == pytest.approx(4 / 8)
    # BASE_OPS has one skip_connect (node 3 from node 1) per cell, which all_changed shares.
    assert genotype_overlap(same, all_changed) == pytest.approx(2 / 16)


def test_genotype_stability_known_overlap_and_top_operations():
    first = make_genotype(BASE_OPS)
    third = make_genotype(changed(BASE_OPS, [0, 1, 2, 3]), BASE_OPS)
    frame = runs([
        {"mode": "idarts", "seed": 0, "genotype": first},
        {"mode": "idarts", "seed": 1, "genotype": make_genotype(BASE_OPS)},
        {"mode": "idarts", "seed": 2, "genotype": third},
        {"mode": "pcdarts", "seed": 0, "genotype": first},
        {"mode": "idarts", "seed": 3, "genotype": third, "status": "KILLED"},
    ])

    stability = genotype_stability(frame, by=["mode"])

    idarts = stability[stability["mode"] == "idarts"].iloc[0]
    assert idarts["runs"] == 3
    assert idarts["pairs"] == 3
    assert idarts["mean_overlap"] == pytest.approx((1.0 + 0.75 + 0.75) / 3)
    assert idarts["min_overlap"] == pytest.approx(0.75)
    assert idarts["max_overlap"] == pytest.approx(1.0)
    assert idarts["mean_overlap_normal"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert idarts["mean_overlap_reduce"] == pytest.approx(1.0)
    assert idarts["distinct_genotypes"] == 2
    assert idarts["top_operations"]["normal 0->2"] == ("sep_conv_3x3", pytest.approx(2 / 3))
    assert idarts["top_operations"]["reduce 0->2"] == ("sep_conv_3x3", 1.0)

    pcdarts = stability[stability["mode"] == "pcdarts"].iloc[0]
    assert pcdarts["runs"] == 1
    assert pcdarts["pairs"] == 0
    assert math.isnan(pcdarts["mean_overlap"])


def test_genotype_stability_default_by_is_swept_without_seed():
    frame = runs([
        {"mode": "idarts", "seed": seed, "threshold": 0.5, "genotype": make_genotype(BASE_OPS)} for seed in range(2)
    ] + [{"mode": "pcdarts", "seed": 0, "threshold": 0.5, "genotype": make_genotype(BASE_OPS)}])

    stability = genotype_stability(frame)

    assert list(stability.columns[:2]) == ["mode", "runs"]
    assert list(stability["mode"]) == ["idarts", "pcdarts"]


def test_genotype_stability_skips_runs_without_genotype():
    frame = runs([
        {"mode": "idarts", "genotype": make_genotype(BASE_OPS)},
        {"mode": "idarts", "genotype": None},
    ])

    assert genotype_stability(frame, by=["mode"]).iloc[0]["runs"] == 1


def test_operation_frequencies_counts_each_edge():
    frame = runs([
        {"mode": "idarts", "genotype": make_genotype(BASE_OPS)},
        {"mode": "idarts", "genotype": make_genotype(changed(BASE_OPS, [0]), BASE_OPS)},
    ])

    frequencies = operation_frequencies(frame, by=[])

    first_edge = frequencies[frequencies["edge"] == "normal 0->2"]
    assert list(first_edge["operation"]) == ["avg_pool_3x3", "sep_conv_3x3"]
    assert list(first_edge["frequency"]) == [0.5, 0.5]
    assert frequencies[frequencies["edge"] == "reduce 0->2"]["count"].tolist() == [2]


# ---------------------------------------------------------------------------
# backtracking_profile


def history(rows: list[tuple[str, str, list[float]]]) -> pd.DataFrame:
    records = []
    for trial, mode, counts in rows:
        for epoch, count in enumerate(counts, start=1):
            records.append({"run_id": None, "trial": trial, "mode": mode, "epoch": epoch,
                            "metric": "backtracked_edges", "value": count})
            records.append({"run_id": None, "trial": trial, "mode": mode, "epoch": epoch,
                            "metric": "valid_acc", "value": 50.0})
    return pd.DataFrame(records)


def test_backtracking_profile_known_counts():
    profile = backtracking_profile(history([
        ("a", "idarts", [0, 4, 6]),
        ("b", "idarts", [0, 2, 2]),
        ("c", "pcdarts", [0, 0, 0]),
    ]))

    idarts = profile[profile["mode"] == "idarts"]
    assert list(idarts["epoch"]) == [1, 2, 3]
    assert list(idarts["mean"]) == [0.0, 3.0, 4.0]
    assert list(idarts["min"]) == [0.0, 2.0, 2.0]
    assert list(idarts["max"]) == [0.0, 4.0, 6.0]
    assert list(idarts["runs"]) == [2, 2, 2]
    assert list(idarts["cumulative_mean"]) == [0.0, 3.0, 7.0]
    assert profile[profile["mode"] == "pcdarts"]["cumulative_mean"].max() == 0.0


def test_backtracking_profile_rejects_missing_by():
    with pytest.raises(ValueError, match="threshold"):
        backtracking_profile(history([("a", "idarts", [1])]), by=["threshold"])


# ---------------------------------------------------------------------------
# Frames and conclusions


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("layers", "8", 8),
        ("threshold", "0.5", 0.5),
        ("subset", "null", None),
        ("subset", "None", None),
        ("arch_betas", "[0.5, 0.999]", (0.5, 0.999)),
        ("arch_betas", [0.5, 0.999], (0.5, 0.999)),
        ("mode", "pcdarts", "pcdarts"),
        ("data_dir", "null", None),
        ("not_a_field", "[1, 2]", (1, 2)),
        ("not_a_field", "plain text", "plain text"),
    ],
)
def test_parse_param(name, text, expected):
    assert parse_param(name, text) == expected


def test_parse_param_rejects_bad_int():
    with pytest.raises(ValueError, match="layers"):
        parse_param("layers", "eight")


def test_swept_params_ignores_machine_settings():
    frame = runs([
        {"mode": "idarts", "seed": 0, "layers": 8, "device": "cpu"},
        {"mode": "pcdarts", "seed": 1, "layers": 8, "device": "cuda"},
    ])

    assert swept_params(frame) == ["mode", "seed"]


def test_best_run_by_metric_direction():
    frame = runs([
        {"valid_acc": 50.0, "valid_loss": 1.0},
        {"valid_acc": 60.0, "valid_loss": 2.0},
        {"valid_acc": 90.0, "valid_loss": 0.5, "status": "KILLED"},
    ])

    assert best_run(frame, "valid_acc")["trial"] == "t1"
    assert best_run(frame, "valid_loss")["trial"] == "t0"
    with pytest.raises(ValueError, match="no finished run"):
        best_run(frame[frame["status"] == "KILLED"], "valid_acc")


def test_sweep_conclusions_answer_every_question():
    frame = paired_frame([1.0, 1.1, 0.9, 1.05])
    frame["partial_k"] = 4
    frame["genotype"] = [make_genotype(BASE_OPS)] * len(frame)

    sentences = sweep_conclusions(frame, metric="valid_acc")

    assert sentences[0].startswith("8 of 8 trials finished")
    assert any(sentence.startswith("Best setting by mean valid_acc: mode=idarts") for sentence in sentences)
    assert any(sentence.startswith("Seeds:") for sentence in sentences)
    assert any(sentence.startswith("IDARTS is better than PC-DARTS") for sentence in sentences)
    assert any("share 100%" in sentence for sentence in sentences)


def test_mode_conclusions_mention_stability_and_skips():
    frame = paired_frame([1.0, 2.0])
    frame["genotype"] = [make_genotype(BASE_OPS)] * len(frame)
    frame["skip_connect_count"] = np.where(frame["mode"] == "idarts", 1.0, 3.0)

    sentences = mode_conclusions(frame, "valid_acc")

    assert "Too few pairs" in sentences[0]
    assert "IDARTS runs share 100%" in sentences[1]
    assert sentences[2] == "Mean skip connections in the final normal cell: IDARTS 1, PC-DARTS 3."
