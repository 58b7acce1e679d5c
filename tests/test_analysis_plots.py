"""Plots and the HTML report on a hand-made sweep in Tune folders (no server needed)."""

from __future__ import annotations

import base64
import re

import pytest
from matplotlib.figure import Figure

import analysis
from analysis_fixtures import FakeTrial, fake_metrics, free_port, make_genotype, write_fake_sweep
from idarts.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
OPS = ["sep_conv_3x3", "sep_conv_5x5", "skip_connect", "dil_conv_3x3",
       "max_pool_3x3", "avg_pool_3x3", "dil_conv_5x5", "sep_conv_3x3"]
SWEEP = "plot_sweep"


def trials() -> list[FakeTrial]:
    fake_trials = []
    for seed in range(3):
        for k in (2, 4):
            base = {"epochs": 3, "warmup_epochs": 1, "init_channels": 4, "seed": seed, "partial_k": k}
            fake_trials.append(FakeTrial(f"i{seed}{k}00000", {**base, "mode": "idarts", "threshold": 0.3},
                                  fake_metrics(3, 60.0 + seed + k, gated=[0, seed, k]), make_genotype(OPS)))
            fake_trials.append(FakeTrial(f"p{seed}{k}00000", {**base, "mode": "pcdarts", "threshold": 0.3},
                                  fake_metrics(3, 58.0 + k), make_genotype(OPS[::-1], OPS)))
    return fake_trials


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    storage = tmp_path_factory.mktemp("analysis_plots") / "storage"
    write_fake_sweep(trials(), SWEEP, storage, tracking_uri=None)
    return storage


@pytest.fixture(scope="module")
def frames(storage):
    return analysis.load_sweep(storage_path=storage)


def assert_png_figure(figure):
    assert isinstance(figure, Figure)
    assert figure.axes
    assert analysis.figure_to_png(figure).startswith(PNG_SIGNATURE)


def test_plot_metric_vs_threshold(frames):
    figure = analysis.plot_metric_vs_threshold(frames[0])

    assert_png_figure(figure)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["IDARTS, K=2", "IDARTS, K=4", "PC-DARTS, K=2", "PC-DARTS, K=4"]


def test_plot_learning_curves(frames):
    figure = analysis.plot_learning_curves(frames[1], "valid_acc")

    assert_png_figure(figure)
    labels = figure.axes[0].get_legend_handles_labels()[1]
    assert labels[0] == "partial_k=2, mode=idarts (3 runs)"


def test_plot_learning_curves_unknown_metric(frames):
    with pytest.raises(ValueError, match="test_acc"):
        analysis.plot_learning_curves(frames[1], "test_acc")


def test_plot_backtracking(frames):
    assert_png_figure(analysis.plot_backtracking(frames[1], by=["mode"]))


def test_plot_operation_heatmap(frames):
    figure = analysis.plot_operation_heatmap(frames[0], {"mode": "idarts", "partial_k": 2})

    assert_png_figure(figure)
    assert figure.get_suptitle().endswith("mode=idarts, partial_k=2 (3 runs)")
    with pytest.raises(ValueError, match="no finished run"):
        analysis.plot_operation_heatmap(frames[0], {"mode": "darts"})


def test_plot_best_genotypes(frames):
    figure = analysis.plot_best_genotypes(frames[0], count=2)

    assert_png_figure(figure)
    assert len(figure.axes) == 4


def test_plot_arch_trajectories(frames):
    record = analysis.load_arch_record(analysis.best_run(frames[0]))

    figure = analysis.plot_arch_trajectories(record, "normal")

    assert_png_figure(figure)
    with pytest.raises(ValueError, match="cell type"):
        analysis.plot_arch_trajectories(record, "middle")
    with pytest.raises(ValueError, match="no epochs"):
        analysis.plot_arch_trajectories({"epochs": []})


def test_plot_paired_modes(frames):
    figure = analysis.plot_paired_modes(frames[0])

    assert_png_figure(figure)
    assert len(figure.axes[0].lines) == 6


def test_report_from_tune_storage(storage, tmp_path, capsys):
    out = tmp_path / "nested" / "report.html"

    status = main(["report", "--storage-path", str(storage), "--sweep", SWEEP, "--out", str(out)])

    assert status == 0
    assert str(out) in capsys.readouterr().out
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "Sweep report: plot_sweep" in page
    assert "IDARTS is better than PC-DARTS" in page
    images = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(images) >= 8
    for source in images:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert not re.search(r'(src|href)="(?!data:)', page)


def test_report_notes_missing_sections(storage, tmp_path):
    runs, history = analysis.load_sweep(storage_path=storage)
    only_idarts = runs[runs["mode"] == "idarts"]
    history = history[history["trial"].isin(only_idarts["trial"])]

    page = analysis.render_report(only_idarts, history, "only idarts", "test frames")

    assert "The sweep has no finished runs of both modes." in page
    assert "Only IDARTS runs finished" in page


def test_report_requires_experiment_with_tracking_uri(tmp_path, capsys):
    status = main(["report", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "r.html")])

    assert status == 2
    assert "--experiment is missing" in capsys.readouterr().err


def test_report_requires_one_source(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--out", str(tmp_path / "r.html")])
    assert exit_info.value.code == 2


def test_report_unreachable_server(tmp_path, capsys):
    port = free_port()

    status = main([
        "report", "--tracking-uri", f"http://127.0.0.1:{port}", "--experiment", "any",
        "--out", str(tmp_path / "r.html"),
    ])

    assert status == 2
    assert f"http://127.0.0.1:{port} is unreachable" in capsys.readouterr().err
