"""``SweepRun``: the MLflow parent run of a sweep, opened and closed by the driver."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from tune.sweep_config import SweepConfig
from tune.tracking import (
    RUN_TYPE_SWEEP,
    TAG_DATASET,
    TAG_GIT_COMMIT,
    TAG_MODE,
    TAG_PARENT_RUN_ID,
    TAG_RUN_TYPE,
    TAG_SWEEP,
    TAG_TRIAL_ID,
    TrackingSettings,
    check_reachable,
    default_artifact_location,
    ensure_experiment,
    find_runs,
    git_commit,
    is_http_uri,
    logged_artifact_names,
    make_client,
    with_sqlite_retry,
)

logger = logging.getLogger(__name__)

SWEEP_ARTIFACT_NAME = "sweep.yaml"


def artifact_location_for(tracking_uri: str, storage_root: Path, experiment_name: str) -> str | None:
    """Return where a new experiment keeps artifacts: the server decides for HTTP stores.

    Without a server, MLflow would put artifacts in ``./mlruns`` of whatever
    folder the process runs in, so database stores get a folder in the
    storage path instead.
    """
    if is_http_uri(tracking_uri):
        return None
    return default_artifact_location(storage_root, experiment_name)


def parent_tags(config: SweepConfig) -> dict[str, str]:
    """Return the tags of a sweep's parent run."""
    return {
        TAG_SWEEP: config.name,
        TAG_RUN_TYPE: RUN_TYPE_SWEEP,
        TAG_DATASET: _joined(config, "dataset"),
        TAG_MODE: config.search_mode_tag,
        TAG_GIT_COMMIT: git_commit(),
    }


def _joined(config: SweepConfig, name: str) -> str:
    """Return the one value a setting has in every trial, or "mixed"."""
    values = sorted({str(value) for value in config.value_range(name)})
    return values[0] if len(values) == 1 else "mixed"


class SweepRun:
    """The parent run of one sweep.

    ``open`` returns the ``TrackingSettings`` that every trial gets. When
    tracking is off or the server is unreachable, the settings have
    ``enabled=False`` and the sweep runs without MLflow.
    """

    def __init__(self, config: SweepConfig, tracking_uri: str, storage_root: Path) -> None:
        self.config = config
        self.tracking_uri = tracking_uri
        self.storage_root = Path(storage_root)
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: Any = None

    def _settings(self, enabled: bool) -> TrackingSettings:
        return TrackingSettings(
            tracking_uri=self.tracking_uri,
            experiment_name=self.config.experiment_name,
            sweep_name=self.config.name,
            storage_root=str(self.storage_root),
            parent_run_id=self.run_id,
            enabled=enabled,
            artifact_location=artifact_location_for(
                self.tracking_uri, self.storage_root, self.config.experiment_name
            ),
        )

    @property
    def online(self) -> bool:
        """Whether the parent run is open in MLflow."""
        return self.run_id is not None and self._client is not None

    def open(self, previous_run_id: str | None = None, resume: bool = False) -> TrackingSettings:
        """Open the parent run: ``previous_run_id`` or, on resume, the sweep's tagged run, else a new one."""
        if not self.config.mlflow.enabled:
            logger.info("MLflow tracking is off for sweep %s (mlflow.enabled: false)", self.config.name)
            return self._settings(enabled=False)

        reason = check_reachable(self.tracking_uri)
        if reason is not None:
            logger.warning(
                "the MLflow tracking server is unreachable (%s); sweep %s runs without MLflow and "
                "keeps its results in %s. Push them later with `idarts sync-mlflow %s --tracking-uri %s`",
                reason,
                self.config.name,
                self.storage_root,
                self.storage_root,
                self.tracking_uri,
            )
            return self._settings(enabled=False)

        if not is_http_uri(self.tracking_uri) and self.tracking_uri.startswith("sqlite:///"):
            Path(self.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._client = make_client(self.tracking_uri)
            settings = self._settings(enabled=True)
            self.experiment_id = ensure_experiment(
                self._client, settings.experiment_name, settings.artifact_location
            )
            self.run_id = self._find_or_create(previous_run_id, resume)
            self._log_sweep_file()
            with_sqlite_retry(lambda: self._client.update_run(self.run_id, status="RUNNING"), "update_run")
        except Exception as error:  # noqa: BLE001 - tracking must never stop the sweep
            logger.warning(
                "opening the parent run of sweep %s in MLflow at %s failed (%s: %s); the sweep runs "
                "without MLflow. Push its results later with `idarts sync-mlflow %s --tracking-uri %s`",
                self.config.name,
                self.tracking_uri,
                type(error).__name__,
                error,
                self.storage_root,
                self.tracking_uri,
            )
            self._client = None
            self.run_id = None
            return self._settings(enabled=False)

        logger.info("sweep %s logs to MLflow run %s at %s", self.config.name, self.run_id, self.tracking_uri)
        return self._settings(enabled=True)

    def _find_or_create(self, previous_run_id: str | None, resume: bool) -> str:
        client = self._client
        if previous_run_id is not None:
            try:
                run = client.get_run(previous_run_id)
                if run.info.lifecycle_stage == "active":
                    return previous_run_id
            except Exception:  # noqa: BLE001 - a missing run is looked up by tags below
                pass
            logger.warning("the parent run %s of sweep %s is gone from MLflow", previous_run_id, self.config.name)
        if resume:
            existing = find_runs(
                client, self.experiment_id, {TAG_SWEEP: self.config.name, TAG_RUN_TYPE: RUN_TYPE_SWEEP}
            )
            if existing:
                return existing[0].info.run_id
        run = with_sqlite_retry(
            lambda: client.create_run(
                self.experiment_id, run_name=self.config.name, tags=parent_tags(self.config)
            ),
            "create_run",
        )
        return run.info.run_id

    def _log_sweep_file(self) -> None:
        if SWEEP_ARTIFACT_NAME in logged_artifact_names(self._client, self.run_id):
            return
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / SWEEP_ARTIFACT_NAME
            path.write_text(self.config.to_yaml_text())
            self._client.log_artifact(self.run_id, str(path))

    def child_runs(self) -> list[Any]:
        """Return the active child runs of the parent run."""
        if not self.online:
            return []
        return find_runs(self._client, self.experiment_id, {TAG_PARENT_RUN_ID: self.run_id})

    def remove_orphans(self, trial_ids: set[str]) -> list[str]:
        """Delete child runs whose trial Tune does not know (started after its last experiment checkpoint).

        A driver killed between two experiment checkpoints loses the trials it
        started since the last one. The restored sweep starts new trials in
        their place, so the runs of the lost trials belong to no trial.
        MLflow keeps deleted runs restorable.

        Returns:
            The deleted run ids.
        """
        if not self.online:
            return []
        removed = []
        try:
            for run in self.child_runs():
                trial_id = run.data.tags.get(TAG_TRIAL_ID)
                if trial_id in trial_ids:
                    continue
                logger.warning(
                    "deleting MLflow run %s of trial %s: the restored sweep %s has no such trial",
                    run.info.run_id,
                    trial_id,
                    self.config.name,
                )
                with_sqlite_retry(lambda: self._client.delete_run(run.info.run_id), "delete_run")
                removed.append(run.info.run_id)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the sweep
            logger.warning("checking the child runs of sweep %s failed: %s", self.config.name, error)
        return removed

    def reconcile(self, expected_status: dict[str, str]) -> None:
        """Delete child runs of unknown trials, then give each child run the status of its trial.

        Args:
            expected_status: MLflow status (FINISHED, FAILED, KILLED) by Tune trial id.

        Trials set their own status, but an actor that dies (out of memory, a
        lost node) cannot, so the driver checks every run at the end.
        """
        if not self.online:
            return
        self.remove_orphans(set(expected_status))
        try:
            for run in self.child_runs():
                trial_id = run.data.tags.get(TAG_TRIAL_ID, "")
                expected = expected_status.get(trial_id)
                if expected is None or run.info.status == expected:
                    continue
                logger.info(
                    "MLflow run %s of trial %s: %s -> %s", run.info.run_id, trial_id, run.info.status, expected
                )
                with_sqlite_retry(
                    lambda: self._client.set_terminated(run.info.run_id, expected), "set_terminated"
                )
        except Exception as error:  # noqa: BLE001 - tracking must never stop the sweep
            logger.warning("updating the status of the child runs of sweep %s failed: %s", self.config.name, error)

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set tags on the parent run."""
        if not self.online:
            return
        try:
            for key, value in tags.items():
                with_sqlite_retry(lambda: self._client.set_tag(self.run_id, key, value), "set_tag")
        except Exception as error:  # noqa: BLE001 - tracking must never stop the sweep
            logger.warning("tagging the parent run %s failed: %s", self.run_id, error)

    def close(self, status: str) -> None:
        """Mark the parent run FINISHED, FAILED or KILLED."""
        if not self.online:
            return
        try:
            with_sqlite_retry(lambda: self._client.set_terminated(self.run_id, status), "set_terminated")
        except Exception as error:  # noqa: BLE001 - tracking must never stop the sweep
            logger.warning("marking the parent run %s %s failed: %s", self.run_id, status, error)
