"""Notebooks, report and loaders on a tiny sweep run by the real pipeline (``idarts sweep``, local Ray, MLflow server)."""

from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient

import analysis
from analysis_fixtures import requires_fashion_mnist, run_tiny_sweep, running_mlflow_server
from idarts.cli import main

pytestmark = [requires_fashion_mnist, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "analysis" / "notebooks"
KERNEL_NAME = "idarts-analysis-test"
NOTEBOOK_TIMEOUT_S = 300
MACHINE_COLUMNS = ["run_id", "start_time", "end_time", "duration_s", "artifact_uri"]


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """A 4-trial sweep (mode idarts/pcdarts x seed 0/1, 2 epochs) logged to a real MLflow server."""
    directory = tmp_path_factory.mktemp("analysis_pipeline")
    with running_mlflow_server(directory / "mlflow") as server:
        yield run_tiny_sweep(directory, server.uri)


@pytest.fixture(scope="module")
def frames(tiny_sweep):
    return analysis.load_sweep(tiny_sweep.tracking_uri, tiny_sweep.experiment, tiny_sweep.sweep)


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory):
    """A Jupyter kernel spec that runs this interpreter, so that CI needs no registered kernel."""
    spec_dir = tmp_path_factory.mktemp("jupyter") / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "idarts analysis tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(spec_dir.parent.parent))
        yield KERNEL_NAME


def tagged(notebook, tag: str):
    cells = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def run_notebook(name: str, sweep, kernel: str, workdir: Path):
    """Execute a notebook with its parameters cell replaced by the tiny sweep's location."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = tagged(notebook, "parameters")
    names = re.findall(r"^(\w+) =", parameters.source, flags=re.MULTILINE)
    assert names == ["TRACKING_URI", "EXPERIMENT", "SWEEP", "STORAGE_PATH", "METRIC"]
    parameters.source = (
        f"TRACKING_URI = {sweep.tracking_uri!r}\nEXPERIMENT = {sweep.experiment!r}\n"
        f"SWEEP = {sweep.sweep!r}\nSTORAGE_PATH = None\nMETRIC = 'valid_acc'\n"
    )
    client = NotebookClient(
        notebook, kernel_name=kernel, timeout=NOTEBOOK_TIMEOUT_S, resources={"metadata": {"path": str(workdir)}}
    )
    client.execute()
    return notebook


def output_data(cell, mime: str) -> str:
    for output in cell.outputs:
        if mime in output.get("data", {}):
            return output["data"][mime]
    raise AssertionError(f"cell {cell.metadata.get('tags')} has no {mime} output; outputs: {cell.outputs}")


def plot_cells(notebook):
    return [cell for cell in notebook.cells if any(tag.startswith("plot-") for tag in cell.metadata.get("tags", []))]


def test_tiny_sweep_finished(frames):
    runs, history = frames

    assert len(runs) == 4
    assert (runs["status"] == "FINISHED").all()
    assert set(runs["mode"]) == {"idarts", "pcdarts"}
    assert (runs["epochs_run"] == 2).all()
    assert runs["genotype"].notna().all()
    assert set(history["epoch"]) == {1, 2}


def test_loaders_match_on_real_sweep(tiny_sweep, frames):
    runs, history = frames
    tune_runs = analysis.load_tune_results(tiny_sweep.storage_path, sweep=tiny_sweep.sweep)
    tune_history = analysis.load_tune_history(tiny_sweep.storage_path, sweep=tiny_sweep.sweep)

    assert list(runs.columns) == list(tune_runs.columns)
    pd.testing.assert_series_equal(runs.dtypes, tune_runs.dtypes)
    compared = [column for column in runs.columns if column not in MACHINE_COLUMNS]
    pd.testing.assert_frame_equal(runs[compared], tune_runs[compared])
    assert list(history.columns) == list(tune_history.columns)
    pd.testing.assert_frame_equal(history.drop(columns="run_id"), tune_history.drop(columns="run_id"))


def test_sweep_overview_notebook(tiny_sweep, frames, kernel_name, tmp_path):
    runs, history = frames

    notebook = run_notebook("sweep_overview.ipynb", tiny_sweep, kernel_name, tmp_path)

    runs_table = output_data(tagged(notebook, "runs"), "text/html")
    for trial in runs["trial"]:
        assert trial in runs_table
    summary = output_data(tagged(notebook, "summary"), "text/plain")
    assert "idarts" in summary
    assert "pcdarts" in summary
    assert "ci_low" in summary
    assert "cumulative_mean" in output_data(tagged(notebook, "backtracking"), "text/plain")
    assert "mean_overlap" in output_data(tagged(notebook, "stability"), "text/plain")
    assert len(plot_cells(notebook)) == 6
    for cell in plot_cells(notebook):
        assert output_data(cell, "image/png")
    expected = analysis.as_markdown(analysis.sweep_conclusions(runs, history, "valid_acc"))
    assert output_data(tagged(notebook, "conclusion"), "text/markdown") == expected


def test_idarts_vs_pcdarts_notebook(tiny_sweep, frames, kernel_name, tmp_path):
    runs, _ = frames
    comparison = analysis.compare_modes(runs, "valid_acc")

    notebook = run_notebook("idarts_vs_pcdarts.ipynb", tiny_sweep, kernel_name, tmp_path)

    table = output_data(tagged(notebook, "comparison"), "text/html")
    assert f"<td>{comparison.iloc[0]['n_pairs']}</td>" in table
    pairs = output_data(tagged(notebook, "pairs"), "text/plain")
    assert "difference" in pairs
    assert len(plot_cells(notebook)) == 5
    for cell in plot_cells(notebook):
        assert output_data(cell, "image/png")
    conclusion = output_data(tagged(notebook, "conclusion"), "text/markdown")
    assert conclusion == analysis.as_markdown(analysis.mode_conclusions(runs, "valid_acc"))
    assert comparison.iloc[0]["conclusion"] in conclusion


def test_report_command_on_real_sweep(tiny_sweep, frames, tmp_path):
    runs, history = frames
    out = tmp_path / "report.html"

    status = main([
        "report", "--tracking-uri", tiny_sweep.tracking_uri, "--experiment", tiny_sweep.experiment,
        "--sweep", tiny_sweep.sweep, "--out", str(out),
    ])

    assert status == 0
    page = out.read_text()
    assert f"<title>Sweep report: {tiny_sweep.sweep}</title>" in page
    for trial in runs["trial"]:
        assert trial in page
    for sentence in analysis.sweep_conclusions(runs, history, "valid_acc"):
        assert html.escape(sentence) in page
    assert "not shown" not in page
    images = re.findall(r'src="([^"]+)"', page)
    assert len(images) == 8
    assert all(source.startswith("data:image/png;base64,") for source in images)
    assert not re.search(r'href="', page)


def test_report_command_unknown_experiment(tiny_sweep, tmp_path, capsys):
    status = main([
        "report", "--tracking-uri", tiny_sweep.tracking_uri, "--experiment", "missing_experiment",
        "--out", str(tmp_path / "report.html"),
    ])

    assert status == 2
    assert "'missing_experiment' not found" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()
