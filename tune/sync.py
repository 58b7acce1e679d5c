"""``sync_mlflow``: push the results that a sweep kept in Tune's storage to MLflow.

A trial that cannot reach the tracking server keeps running and leaves its
results only in Tune's storage. This module replays them. It finds or
creates the parent run and one child run per trial, looking runs up by tags
so that a second sync changes nothing. Then it logs what each run lacks: the
epochs, the params, the genotype tag, the artifacts and the final status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tune.parent_run import SWEEP_ARTIFACT_NAME, artifact_location_for, parent_tags
from tune.results import (
    ARTIFACTS_DIR,
    MLFLOW_STATUS,
    STATUS_UNFINISHED,
    SWEEP_FILE,
    SWEEP_METADATA_FILE,
    SweepMetadata,
    TrialSummary,
    read_results,
    summarize_sweep,
)
from tune.sweep_config import REPORTED_METRICS, SweepConfig
from tune.tracking import (
    RUN_TYPE_SWEEP,
    RUN_TYPE_TRIAL,
    TAG_PARENT_RUN_ID,
    TAG_RUN_TYPE,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    check_reachable,
    ensure_experiment,
    find_runs,
    flatten_params,
    last_logged_step,
    log_epoch_batch,
    log_params,
    logged_artifact_names,
    make_client,
    with_sqlite_retry,
)

logger = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """Nothing can be synced: no sweep folder found, or the tracking server is unreachable."""


@dataclass
class SyncReport:
    """Counts of what one ``sync_mlflow`` call added to MLflow."""

    sweeps: int = 0
    runs_created: int = 0
    epochs_logged: int = 0
    artifacts_logged: int = 0


def find_sweep_folders(path: Path) -> list[Path]:
    """Return ``path`` when it is a sweep folder, else its sweep subfolders."""
    path = Path(path).expanduser().resolve()
    if (path / SWEEP_METADATA_FILE).exists():
        return [path]
    if not path.is_dir():
        raise SyncError(f"{path} is not a folder; pass the storage path of a sweep")
    folders = sorted(child for child in path.iterdir() if (child / SWEEP_METADATA_FILE).exists())
    if not folders:
        raise SyncError(
            f"no sweep found in {path}: neither it nor its subfolders have {SWEEP_METADATA_FILE}; "
            "pass the storage_path of a sweep"
        )
    return folders


def sync_mlflow(storage_path: str | Path, tracking_uri: str | None = None) -> SyncReport:
    """Push every sweep under ``storage_path`` to MLflow.

    Args:
        tracking_uri: overrides the store each sweep recorded when it ran.

    Raises:
        SyncError: no sweep folder was found, or the tracking server is unreachable.
    """
    report = SyncReport()
    for folder in find_sweep_folders(Path(storage_path)):
        _sync_sweep(folder, tracking_uri, report)
    return report


def _sync_sweep(folder: Path, tracking_uri: str | None, report: SyncReport) -> None:
    metadata = SweepMetadata.read(folder)
    config = SweepConfig.from_yaml(folder / SWEEP_FILE)
    uri = tracking_uri or metadata.tracking_uri
    reason = check_reachable(uri)
    if reason is not None:
        raise SyncError(f"cannot sync sweep {metadata.sweep_name}: the MLflow tracking server is unreachable ({reason})")

    logger.info("syncing sweep %s from %s to %s", metadata.sweep_name, folder, uri)
    client = make_client(uri)
    storage_root = folder.parent
    experiment_id = ensure_experiment(
        client,
        metadata.experiment_name,
        artifact_location_for(uri, storage_root, metadata.experiment_name),
    )

    parent_id = _parent_run(client, experiment_id, metadata, config, report)
    if parent_id != metadata.parent_run_id or uri != metadata.tracking_uri:
        metadata.parent_run_id = parent_id
        metadata.tracking_uri = uri
        metadata.write(folder)
    if SWEEP_ARTIFACT_NAME not in logged_artifact_names(client, parent_id):
        client.log_artifact(parent_id, str(folder / SWEEP_FILE))
        report.artifacts_logged += 1

    for trial in summarize_sweep(folder, metadata.metric):
        _sync_trial(client, experiment_id, parent_id, metadata, trial, report)

    if metadata.status != "RUNNING" and client.get_run(parent_id).info.status != metadata.status:
        with_sqlite_retry(lambda: client.set_terminated(parent_id, metadata.status), "set_terminated")
    report.sweeps += 1


def _parent_run(client, experiment_id: str, metadata: SweepMetadata, config: SweepConfig, report: SyncReport) -> str:
    if metadata.parent_run_id:
        try:
            run = client.get_run(metadata.parent_run_id)
            if run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment_id:
                return metadata.parent_run_id
        except Exception:  # noqa: BLE001 - an unknown run id is looked up by tags below
            pass
    existing = find_runs(client, experiment_id, {TAG_SWEEP: metadata.sweep_name, TAG_RUN_TYPE: RUN_TYPE_SWEEP})
    if existing:
        return existing[0].info.run_id
    run = client.create_run(experiment_id, run_name=metadata.sweep_name, tags=parent_tags(config))
    report.runs_created += 1
    return run.info.run_id


def _sync_trial(
    client, experiment_id: str, parent_id: str, metadata: SweepMetadata, trial: TrialSummary, report: SyncReport
) -> None:
    tags = {TAG_SWEEP: metadata.sweep_name, TAG_TRIAL_ID: trial.trial_id, TAG_PARENT_RUN_ID: parent_id}
    existing = find_runs(client, experiment_id, tags)
    if existing:
        run_id = existing[0].info.run_id
    else:
        run = client.create_run(
            experiment_id, run_name=trial.trial_name, tags={**tags, TAG_RUN_TYPE: RUN_TYPE_TRIAL}
        )
        run_id = run.info.run_id
        report.runs_created += 1

    log_params(client, run_id, flatten_params(trial.config))
    last_step = last_logged_step(client, run_id)
    for result in read_results(Path(trial.trial_dir)):
        epoch = int(result["epoch"])
        if epoch <= last_step:
            continue
        metrics = {name: result[name] for name in REPORTED_METRICS if isinstance(result.get(name), (int, float))}
        timestamp_ms = int(result["timestamp"]) * 1000 if "timestamp" in result else None
        log_epoch_batch(client, run_id, epoch, metrics, result.get("genotype") or None, timestamp_ms)
        report.epochs_logged += 1

    artifact_dir = Path(trial.trial_dir) / ARTIFACTS_DIR
    if artifact_dir.is_dir():
        logged = logged_artifact_names(client, run_id)
        for path in sorted(artifact_dir.iterdir()):
            if path.is_file() and path.name not in logged:
                client.log_artifact(run_id, str(path))
                report.artifacts_logged += 1

    sweep_running = metadata.status == "RUNNING"
    if trial.status == STATUS_UNFINISHED and sweep_running:
        return
    expected = MLFLOW_STATUS[trial.status]
    if client.get_run(run_id).info.status != expected:
        with_sqlite_retry(lambda: client.set_terminated(run_id, expected), "set_terminated")
