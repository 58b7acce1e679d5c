"""Loaders against a real MLflow server and Tune folders holding the same hand-made sweep."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import analysis
from analysis.frames import REPORTED_METRICS, parse_genotype
from analysis_fixtures import FakeTrial, fake_metrics, make_genotype, running_mlflow_server, write_fake_sweep
from idarts.genotypes import Genotype

SWEEP = "fake_sweep"
OTHER_SWEEP = "other_sweep"
EXPERIMENT = "analysis_loading"
OPS = ["sep_conv_3x3", "sep_conv_5x5", "skip_connect", "dil_conv_3x3",
       "max_pool_3x3", "avg_pool_3x3", "dil_conv_5x5", "sep_conv_3x3"]
BASE = {"subset": 200, "layers": 3, "init_channels": 4, "epochs": 3, "warmup_epochs": 1, "device": "cpu"}

TRIALS = [
    FakeTrial("a0000001", {**BASE, "mode": "idarts", "seed": 0, "threshold": 0.3, "partial_k": 2},
              fake_metrics(3, 60.0, gated=[0, 5, 7]), make_genotype(OPS)),
    FakeTrial("a0000002", {**BASE, "mode": "idarts", "seed": 1, "threshold": 0.7, "partial_k": 4, "subset": None},
              fake_metrics(3, 66.0, gated=[0, 1, 2]), make_genotype(OPS[::-1])),
    FakeTrial("a0000003", {**BASE, "mode": "pcdarts", "seed": 0, "threshold": 0.3, "partial_k": 2},
              fake_metrics(3, 58.0), make_genotype(OPS)),
    FakeTrial("a0000004", {**BASE, "mode": "pcdarts", "seed": 1, "threshold": 0.3, "partial_k": 2},
              fake_metrics(3, 40.0)[:1], make_genotype(OPS), status="KILLED", optuna_state="PRUNED"),
    FakeTrial("a0000005", {**BASE, "mode": "idarts", "seed": 2, "threshold": 0.3, "partial_k": 2},
              [], None, status="FAILED", optuna_state="FAIL"),
]
OTHER_TRIALS = [
    FakeTrial("b0000001", {**BASE, "mode": "idarts", "seed": 0}, fake_metrics(3, 50.0), make_genotype(OPS)),
]
MACHINE_COLUMNS = ["run_id", "start_time", "end_time", "duration_s", "artifact_uri"]


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory):
    """The hand-made sweeps in a real MLflow server and in Tune folders: (tracking URI, storage path)."""
    directory = tmp_path_factory.mktemp("analysis_loading")
    storage = directory / "storage"
    with running_mlflow_server(directory / "mlflow") as server:
        write_fake_sweep(TRIALS, SWEEP, storage, server.uri, EXPERIMENT)
        write_fake_sweep(OTHER_TRIALS, OTHER_SWEEP, storage, server.uri, EXPERIMENT)
        yield server.uri, storage


@pytest.fixture(scope="module")
def mlflow_runs(fake_sweep):
    return analysis.load_runs(fake_sweep[0], EXPERIMENT, sweep=SWEEP)


@pytest.fixture(scope="module")
def tune_runs(fake_sweep):
    return analysis.load_tune_results(fake_sweep[1], sweep=SWEEP)


def by_trial(frame: pd.DataFrame, trial_id: str) -> pd.Series:
    return frame[frame["trial_id"] == trial_id].iloc[0]


def test_loaders_same_columns_and_dtypes(mlflow_runs, tune_runs):
    assert list(mlflow_runs.columns) == list(tune_runs.columns)
    pd.testing.assert_series_equal(mlflow_runs.dtypes, tune_runs.dtypes)


def test_loaders_same_values(mlflow_runs, tune_runs):
    compared = [column for column in mlflow_runs.columns if column not in MACHINE_COLUMNS]

    pd.testing.assert_frame_equal(mlflow_runs[compared], tune_runs[compared])


def test_runs_one_row_per_trial(mlflow_runs):
    assert list(mlflow_runs["trial"]) == [f"{SWEEP}_{trial.trial_id}" for trial in TRIALS]
    assert (mlflow_runs["sweep"] == SWEEP).all()
    assert mlflow_runs["run_id"].map(lambda run_id: isinstance(run_id, str) and len(run_id) == 32).all()


def test_params_have_real_dtypes(mlflow_runs):
    assert mlflow_runs["layers"].dtype == np.int64
    assert mlflow_runs["seed"].dtype == np.int64
    assert mlflow_runs["threshold"].dtype == np.float64
    assert mlflow_runs["lr"].dtype == np.float64
    assert mlflow_runs["subset"].dtype == pd.Int64Dtype()
    assert mlflow_runs["subset"].isna().tolist() == [False, True, False, False, False]
    assert mlflow_runs["arch_betas"].iloc[0] == (0.5, 0.999)
    assert mlflow_runs["mode"].tolist() == ["idarts", "idarts", "pcdarts", "pcdarts", "idarts"]
    assert mlflow_runs["data_dir"].isna().all()


def test_final_and_best_metrics(mlflow_runs):
    first = by_trial(mlflow_runs, "a0000001")
    metrics = TRIALS[0].metrics

    assert first["epochs_run"] == 3
    assert first["valid_acc"] == pytest.approx(metrics[-1]["valid_acc"])
    assert first["best_valid_acc"] == pytest.approx(max(row["valid_acc"] for row in metrics))
    assert first["best_valid_loss"] == pytest.approx(min(row["valid_loss"] for row in metrics))
    assert first["final_lr"] == pytest.approx(metrics[-1]["lr"])
    assert first["lr"] == pytest.approx(0.1)
    assert first["backtracked_edges"] == 7.0
    assert "best_lr" not in mlflow_runs.columns


def test_statuses_and_failed_run(mlflow_runs):
    assert mlflow_runs["status"].tolist() == ["FINISHED", "FINISHED", "FINISHED", "KILLED", "FAILED"]

    failed = by_trial(mlflow_runs, "a0000005")
    assert failed["epochs_run"] == 0
    assert math.isnan(failed["valid_acc"])
    assert failed["genotype"] is None
    assert failed["genotype_json"] is None


def test_genotype_parsed(mlflow_runs):
    genotype = by_trial(mlflow_runs, "a0000002")["genotype"]

    assert isinstance(genotype, Genotype)
    assert genotype == make_genotype(OPS[::-1])
    assert Genotype.from_json(by_trial(mlflow_runs, "a0000002")["genotype_json"]) == genotype


def test_times_and_duration(mlflow_runs, tune_runs):
    for frame in (mlflow_runs, tune_runs):
        assert str(frame["start_time"].dtype) == "datetime64[ns, UTC]"
        finished = frame[frame["status"] == "FINISHED"]
        assert (finished["duration_s"] >= 0).all()
    assert by_trial(tune_runs, "a0000001")["duration_s"] == pytest.approx(6.0)


def test_swept_params_of_sweep(mlflow_runs):
    assert analysis.swept_params(mlflow_runs) == ["subset", "partial_k", "mode", "threshold", "seed"]


def test_experiment_without_sweep_filter(fake_sweep):
    runs = analysis.load_runs(fake_sweep[0], EXPERIMENT)

    assert len(runs) == len(TRIALS) + len(OTHER_TRIALS)
    assert sorted(set(runs["sweep"])) == [SWEEP, OTHER_SWEEP]
    assert not runs["trial"].isin([SWEEP, OTHER_SWEEP]).any()


def test_tune_storage_root_and_sweep_folder(fake_sweep):
    storage = fake_sweep[1]

    assert len(analysis.load_tune_results(storage)) == len(TRIALS) + len(OTHER_TRIALS)
    assert len(analysis.load_tune_results(storage / OTHER_SWEEP)) == 1


def test_history_long_format(fake_sweep, mlflow_runs):
    history = analysis.load_history(fake_sweep[0], EXPERIMENT, sweep=SWEEP)

    swept = analysis.swept_params(mlflow_runs)
    assert list(history.columns) == ["run_id", "trial", *swept, "epoch", "metric", "value"]
    epochs = sum(len(trial.metrics) for trial in TRIALS)
    assert len(history) == epochs * len(REPORTED_METRICS)
    first = history[(history["trial"] == f"{SWEEP}_a0000001") & (history["metric"] == "backtracked_edges")]
    assert first["epoch"].tolist() == [1, 2, 3]
    assert first["value"].tolist() == [0.0, 5.0, 7.0]
    assert (first["threshold"] == 0.3).all()
    assert history["subset"].dtype == pd.Int64Dtype()


def test_history_loaders_match(fake_sweep):
    from_mlflow = analysis.load_history(fake_sweep[0], EXPERIMENT, sweep=SWEEP)
    from_tune = analysis.load_tune_history(fake_sweep[1], sweep=SWEEP)

    assert list(from_mlflow.columns) == list(from_tune.columns)
    pd.testing.assert_frame_equal(from_mlflow.drop(columns="run_id"), from_tune.drop(columns="run_id"))


def test_load_sweep_from_either_source(fake_sweep):
    runs, history = analysis.load_sweep(fake_sweep[0], EXPERIMENT, SWEEP)
    tune_runs, tune_history = analysis.load_sweep(storage_path=fake_sweep[1], sweep=SWEEP)

    assert len(runs) == len(tune_runs) == len(TRIALS)
    assert len(history) == len(tune_history)
    with pytest.raises(ValueError, match="no source given"):
        analysis.load_sweep()


def test_missing_experiment_names_existing(fake_sweep):
    with pytest.raises(ValueError, match=r"'no_such_experiment' not found.*analysis_loading"):
        analysis.load_runs(fake_sweep[0], "no_such_experiment")


def test_unknown_sweep_gives_empty_frame(fake_sweep, mlflow_runs):
    runs = analysis.load_runs(fake_sweep[0], EXPERIMENT, sweep="no_such_sweep")

    assert runs.empty
    assert list(runs.columns) == list(mlflow_runs.columns)


def test_tune_missing_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        analysis.load_tune_results(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no sweep found"):
        analysis.load_tune_results(tmp_path)


def test_arch_record_from_mlflow_and_file(fake_sweep, mlflow_runs, tune_runs):
    from_mlflow = analysis.load_arch_record(by_trial(mlflow_runs, "a0000001"), fake_sweep[0])
    from_file = analysis.load_arch_record(by_trial(tune_runs, "a0000001"))

    assert from_mlflow == from_file
    assert [record["epoch"] for record in from_file["epochs"]] == [1, 2, 3]
    with pytest.raises(ValueError, match="pass tracking_uri"):
        analysis.load_arch_record(by_trial(mlflow_runs, "a0000001"))


def test_invalid_genotype_text_warns(caplog):
    assert parse_genotype('{"normal": []}', "trial_x") is None
    assert "trial_x" in caplog.text
    assert parse_genotype(None, "trial_x") is None


def test_params_json_matches_mlflow_text(fake_sweep):
    params = json.loads((Path(fake_sweep[1]) / SWEEP / f"{SWEEP}_a0000002" / "params.json").read_text())

    assert params["subset"] is None
    assert analysis.parse_param("subset", params["subset"]) is None
