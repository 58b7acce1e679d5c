"""Sweeps run in this process on a local Ray session, logging to a real MLflow server."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest

from idarts.config import SearchConfig
from tune.results import read_results, read_study_summary
from tune.runner import SweepOptions, run_sweep
from tune.sweep_config import REPORTED_METRICS
from tune.sync import sync_mlflow
from tune_helpers import (  # noqa: F401 - fixtures
    FailOnceTrainable,
    LateGenotypeTrainable,
    NanMetricTrainable,
    ScoreByOrderTrainable,
    artifact_names,
    free_port,
    metric_steps,
    mlflow_runs,
    mlflow_server,
    ray_session,
    requires_fashion_mnist,
    result_epochs,
    tiny_sweep,
)

pytestmark = [requires_fashion_mnist, pytest.mark.usefixtures("ray_session")]

SEARCH_ARTIFACTS = {"genotype.json", "arch.json", "normal.png", "reduce.png", "arch_heatmap.png"}
QUIET = SweepOptions(verbose=0)


def states_by_trial(experiment_dir: Path) -> dict[str, str]:
    return {record["tune_trial_id"]: record["state"] for record in read_study_summary(experiment_dir)}


def test_two_trial_sweep_lands_in_mlflow(tmp_path, mlflow_server):
    config = tiny_sweep(tmp_path, "two_trials", mlflow_server.uri)

    outcome = run_sweep(config, QUIET)

    assert outcome.status == "FINISHED"
    assert [trial.status for trial in outcome.trials] == ["finished", "finished"]
    parent, children = mlflow_runs(mlflow_server.uri, "two_trials")
    assert parent.info.run_id == outcome.parent_run_id
    assert parent.info.run_name == "two_trials"
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["idarts.sweep"] == "two_trials"
    assert parent.data.tags["idarts.dataset"] == "fashion-mnist"
    assert parent.data.tags["idarts.mode"] == "idarts"
    assert "idarts.git_commit" in parent.data.tags
    assert artifact_names(mlflow_server.uri, parent.info.run_id) == {"sweep.yaml"}

    assert len(children) == 2
    trial_names = {trial.trial_name for trial in outcome.trials}
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert tags["idarts.sweep"] == "two_trials"
        assert child.info.run_name in trial_names
        assert child.info.run_name == f"two_trials_{tags['idarts.trial_id']}"
        assert child.info.status == "FINISHED"
        assert json.loads(tags["idarts.genotype"])["normal"]

        assert set(child.data.params) == set(SearchConfig().to_dict())
        assert child.data.params["arch_betas"] == "[0.5, 0.999]"
        assert child.data.params["subset"] == "200"
        for metric in REPORTED_METRICS:
            assert metric_steps(mlflow_server.uri, child.info.run_id, metric) == [1, 2], metric
        assert artifact_names(mlflow_server.uri, child.info.run_id) == SEARCH_ARTIFACTS

    for trial in outcome.trials:
        trial_dir = Path(trial.trial_dir)
        assert result_epochs(trial_dir) == [1, 2]
        assert [result["epoch"] for result in read_results(trial_dir)] == [1, 2]
        params = json.loads((trial_dir / "params.json").read_text())
        assert SearchConfig.from_dict(params).threshold == trial.config["threshold"]
        assert {path.name for path in (trial_dir / "artifacts").iterdir()} == SEARCH_ARTIFACTS

    assert sorted(states_by_trial(outcome.experiment_dir).values()) == ["COMPLETE", "COMPLETE"]


def test_trial_failing_at_epoch_two_resumes(tmp_path, mlflow_server):
    config = tiny_sweep(
        tmp_path, "fail_once", mlflow_server.uri, num_samples=1, max_failures=1, search={"epochs": 3}
    )

    outcome = run_sweep(config, SweepOptions(verbose=0, trainable=FailOnceTrainable))

    (trial,) = outcome.trials
    trial_dir = Path(trial.trial_dir)
    starts = [json.loads(line)["next_epoch"] for line in (trial_dir / "starts.jsonl").read_text().splitlines()]
    assert starts == [1, 2]
    assert trial.status == "finished"
    assert [result["epoch"] for result in read_results(trial_dir)] == [1, 2, 3]
    # Ray 2.60 may drop result.json lines reported shortly before a trial
    # failure (the retry copies back a stale storage copy), so only its end is fixed.
    assert result_epochs(trial_dir)[-1] == 3

    _, children = mlflow_runs(mlflow_server.uri, "fail_once")
    assert len(children) == 1
    assert children[0].info.status == "FINISHED"
    assert metric_steps(mlflow_server.uri, children[0].info.run_id) == [1, 2, 3]
    assert states_by_trial(outcome.experiment_dir) == {trial.trial_id: "COMPLETE"}


def test_nan_metric_fails_its_trial_only(tmp_path, mlflow_server):
    config = tiny_sweep(tmp_path, "nan_metric", mlflow_server.uri, max_failures=1)

    outcome = run_sweep(config, SweepOptions(verbose=0, trainable=NanMetricTrainable))

    by_status = {trial.status: trial for trial in outcome.trials}
    assert sorted(by_status) == ["failed", "finished"]
    failed = by_status["failed"]
    assert "non-finite metrics" in failed.error
    assert "valid_acc" in failed.error
    assert failed.trial_name in failed.error
    assert outcome.best("max") == [by_status["finished"]]

    states = states_by_trial(outcome.experiment_dir)
    assert states == {failed.trial_id: "FAIL", by_status["finished"].trial_id: "COMPLETE"}

    _, children = mlflow_runs(mlflow_server.uri, "nan_metric")
    statuses = {child.data.tags["idarts.trial_id"]: child.info.status for child in children}
    assert statuses == {failed.trial_id: "FAILED", by_status["finished"].trial_id: "FINISHED"}
    failed_run = next(child for child in children if child.data.tags["idarts.trial_id"] == failed.trial_id)
    assert metric_steps(mlflow_server.uri, failed_run.info.run_id) == [1]


def test_asha_stopped_trial_is_pruned_in_optuna(tmp_path, mlflow_server):
    config = tiny_sweep(
        tmp_path,
        "asha",
        mlflow_server.uri,
        max_concurrent=1,
        search={"epochs": 3},
        scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2},
    )

    outcome = run_sweep(config, SweepOptions(verbose=0, trainable=ScoreByOrderTrainable))

    first, second = sorted(outcome.trials, key=lambda trial: -trial.score)
    assert (first.status, first.epoch) == ("finished", 3)
    assert (second.status, second.epoch) == ("pruned", 2)
    records = {record["tune_trial_id"]: record for record in read_study_summary(outcome.experiment_dir)}
    assert records[first.trial_id]["state"] == "COMPLETE"
    assert records[second.trial_id]["state"] == "PRUNED"
    assert records[second.trial_id]["intermediate_values"] == {"1": 80.0, "2": 80.0}
    assert records[second.trial_id]["value"] == 80.0

    _, children = mlflow_runs(mlflow_server.uri, "asha")
    pruned_run = next(child for child in children if child.data.tags["idarts.trial_id"] == second.trial_id)
    assert pruned_run.info.status == "KILLED"
    assert metric_steps(mlflow_server.uri, pruned_run.info.run_id) == [1, 2]
    assert artifact_names(mlflow_server.uri, pruned_run.info.run_id) == SEARCH_ARTIFACTS


def test_genotype_reported_after_warmup_is_a_column(tmp_path):
    from ray.tune import ExperimentAnalysis

    config = tiny_sweep(tmp_path, "late_genotype", num_samples=1, mlflow={"enabled": False})

    outcome = run_sweep(config, SweepOptions(verbose=0, trainable=LateGenotypeTrainable))

    (trial,) = outcome.trials
    with open(Path(trial.trial_dir) / "progress.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["genotype"] for row in rows][0] == ""
    assert json.loads(rows[1]["genotype"])["normal"]

    analysis = ExperimentAnalysis(str(outcome.experiment_dir))
    assert "genotype" in analysis.dataframe().columns
    (history,) = analysis.trial_dataframes.values()
    assert history["genotype"].tolist()[1] == trial.genotype


def test_unreachable_server_keeps_results_for_sync(tmp_path, mlflow_server, caplog):
    down_uri = f"http://127.0.0.1:{free_port()}"
    config = tiny_sweep(tmp_path / "storage", "offline", down_uri)

    with caplog.at_level(logging.WARNING, logger="tune"):
        outcome = run_sweep(config, QUIET)

    assert outcome.status == "FINISHED"
    assert not outcome.tracking_online
    assert any("unreachable" in record.getMessage() for record in caplog.records)
    assert [trial.status for trial in outcome.trials] == ["finished", "finished"]

    report = sync_mlflow(tmp_path / "storage", tracking_uri=mlflow_server.uri)

    assert (report.sweeps, report.runs_created, report.epochs_logged) == (1, 3, 4)
    parent, children = mlflow_runs(mlflow_server.uri, "offline")
    assert parent.info.status == "FINISHED"
    assert len(children) == 2
    for child in children:
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert metric_steps(mlflow_server.uri, child.info.run_id) == [1, 2]
        assert artifact_names(mlflow_server.uri, child.info.run_id) == SEARCH_ARTIFACTS

    again = sync_mlflow(tmp_path / "storage", tracking_uri=mlflow_server.uri)

    assert (again.runs_created, again.epochs_logged, again.artifacts_logged) == (0, 0, 0)
    _, children = mlflow_runs(mlflow_server.uri, "offline")
    assert len(children) == 2


def test_restored_trial_run_skips_logged_epochs(tmp_path, mlflow_server):
    from tune.tracking import TrackingSettings, TrialRun

    settings = TrackingSettings(
        tracking_uri=mlflow_server.uri,
        experiment_name="restored_run",
        sweep_name="restored_run",
        storage_root=str(tmp_path),
    )
    first = TrialRun(settings, trial_id="t1", trial_name="restored_run_t1", params={"lr": "0.1"})
    first.attach()
    for epoch in (1, 2):
        first.log_epoch(epoch, {"valid_acc": 10.0 * epoch}, "{}")

    restored = TrialRun(settings, trial_id="t1", trial_name="restored_run_t1", params={"lr": "0.1"})
    restored.attach(first.run_id)
    for epoch in (2, 3):
        restored.log_epoch(epoch, {"valid_acc": 10.0 * epoch}, "{}")

    assert restored.run_id == first.run_id
    assert metric_steps(mlflow_server.uri, first.run_id) == [1, 2, 3]

    without_id = TrialRun(settings, trial_id="t1", trial_name="restored_run_t1", params={"lr": "0.1"})
    without_id.attach()

    assert without_id.run_id == first.run_id
    assert without_id.last_step == 3


def test_parent_run_deletes_runs_of_unknown_trials(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    from tune.parent_run import SweepRun
    from tune.tracking import TrialRun

    config = tiny_sweep(tmp_path, "orphans", mlflow_server.uri)
    sweep_run = SweepRun(config, mlflow_server.uri, tmp_path)
    settings = sweep_run.open()
    runs = {}
    for trial_id in ("kept", "lost"):
        runs[trial_id] = TrialRun(settings, trial_id=trial_id, trial_name=f"orphans_{trial_id}", params={})
        runs[trial_id].attach()

    sweep_run.reconcile({"kept": "FINISHED"})

    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(runs["lost"].run_id).info.lifecycle_stage == "deleted"
    kept = client.get_run(runs["kept"].run_id)
    assert kept.info.lifecycle_stage == "active"
    assert kept.info.status == "FINISHED"
