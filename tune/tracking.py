"""MLflow runs of a sweep: one parent run per sweep, one child run per Tune trial.

``SweepRun`` lives in the driver, ``TrialRun`` in each trial's Ray actor. Both
find an existing run before they create one (by run id, then by tags), so a
restored sweep or trial continues its own run. ``TrialRun`` logs an epoch
only if its step is above the last step the run already has, so re-running
epochs after a crash never duplicates metric steps.

Tracking never stops a search: when the tracking server cannot be reached,
a ``TrialRun`` logs one warning, keeps working without MLflow, and
``idarts sync-mlflow`` pushes the results from Tune's storage later.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

# MLflow's client retries a failing HTTP request 7 times with a backoff factor
# of 2 (MLflow 3.17), which blocks a trial for minutes when the server is down.
# These defaults bound that to seconds; variables the user sets win.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# set_terminated otherwise prints "View run ..." links to stdout.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

TAG_SWEEP = "idarts.sweep"
TAG_RUN_TYPE = "idarts.run_type"
TAG_DATASET = "idarts.dataset"
TAG_MODE = "idarts.mode"
TAG_GIT_COMMIT = "idarts.git_commit"
TAG_TRIAL_ID = "idarts.trial_id"
TAG_GENOTYPE = "idarts.genotype"
TAG_RAY_NODE_ID = "idarts.ray_node_id"
TAG_PARENT_RUN_ID = "mlflow.parentRunId"
RUN_TYPE_SWEEP = "sweep"
RUN_TYPE_TRIAL = "trial"

STEP_METRIC = "valid_acc"
"""Metric whose history gives the last logged epoch (every epoch logs all metrics in one batch)."""

HEALTH_CHECK_TIMEOUT_S = 5.0
SQLITE_LOCK_RETRIES = 5
MLFLOW_DB_NAME = "mlflow.db"
MLFLOW_ARTIFACTS_DIR = "mlartifacts"

RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


def default_tracking_uri(storage_root: Path) -> str:
    """Return the default tracking store of a storage path: an SQLite file in it."""
    return f"sqlite:///{Path(storage_root) / MLFLOW_DB_NAME}"


def default_artifact_location(storage_root: Path, experiment_name: str) -> str:
    """Return the artifact folder of an experiment in the default SQLite store, as a file URI."""
    return (Path(storage_root) / MLFLOW_ARTIFACTS_DIR / experiment_name).as_uri()


def is_http_uri(uri: str) -> bool:
    """Return whether ``uri`` points at a tracking server rather than a database."""
    return uri.startswith(("http://", "https://"))


def ui_command(tracking_uri: str) -> str:
    """Return how to open the MLflow UI for ``tracking_uri``."""
    if is_http_uri(tracking_uri):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def check_reachable(tracking_uri: str, timeout: float = HEALTH_CHECK_TIMEOUT_S) -> str | None:
    """Return None when the tracking server's ``/health`` endpoint returns HTTP 200, else the reason.

    Non-HTTP stores (SQLite, PostgreSQL) are opened directly and always pass here.
    """
    if not is_http_uri(tracking_uri):
        return None
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            if response.status == 200:
                return None
            return f"GET {url} returned HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        return f"GET {url} failed: {error}"


def param_value(value: Any) -> str:
    """Format a config value as an MLflow param: strings as they are, lists and None as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def flatten_params(config: dict[str, Any]) -> dict[str, str]:
    """Return one MLflow param per ``SearchConfig`` field."""
    return {name: param_value(value) for name, value in config.items()}


def git_commit(directory: Path | None = None) -> str:
    """Return the commit of the idarts checkout, or "unknown" outside a git checkout."""
    directory = directory or Path(__file__).resolve().parent.parent
    try:
        output = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return output.stdout.strip() or "unknown"


def make_client(tracking_uri: str) -> MlflowClient:
    """Create an MLflow client for ``tracking_uri`` (MLflow is imported here, not at module import)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def with_sqlite_retry(action: Any, description: str) -> Any:
    """Run ``action()``, retrying when SQLite reports a locked database.

    Several trial processes write to the default SQLite store at once; SQLite
    lets one writer in at a time and the others fail with "database is locked".
    """
    for attempt in range(SQLITE_LOCK_RETRIES):
        try:
            return action()
        except Exception as error:
            if "database is locked" not in str(error) or attempt == SQLITE_LOCK_RETRIES - 1:
                raise
            delay = 0.2 * 2**attempt
            logger.debug("%s: SQLite database is locked, retrying in %.1f s", description, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """Return the id of experiment ``name``, creating it when missing (safe when two processes race)."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI "
                "or set mlflow.experiment to another name"
            )
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list[Any]:
    """Return the active runs of an experiment that have all ``tags``."""
    filters = [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
    return client.search_runs([experiment_id], filter_string=" and ".join(filters), max_results=1000)


def last_logged_step(client: MlflowClient, run_id: str) -> int:
    """Return the last epoch logged to a run, 0 when none."""
    history = client.get_metric_history(run_id, STEP_METRIC)
    return max((metric.step for metric in history), default=0)


def log_epoch_batch(
    client: MlflowClient,
    run_id: str,
    epoch: int,
    metrics: dict[str, float],
    genotype: str | None,
    timestamp_ms: int | None = None,
) -> None:
    """Log one epoch's metrics with ``step = epoch`` and the genotype tag in one request."""
    from mlflow.entities import Metric, RunTag

    timestamp_ms = timestamp_ms or int(time.time() * 1000)
    batch = [Metric(key, float(value), timestamp_ms, epoch) for key, value in metrics.items()]
    tags = [RunTag(TAG_GENOTYPE, genotype)] if genotype else []
    with_sqlite_retry(lambda: client.log_batch(run_id, metrics=batch, tags=tags), "log_batch")


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params that the run does not have yet (MLflow params cannot change once logged)."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    missing = [Param(key, value) for key, value in params.items() if key not in existing]
    if missing:
        with_sqlite_retry(lambda: client.log_batch(run_id, params=missing), "log params")


def logged_artifact_names(client: MlflowClient, run_id: str) -> set[str]:
    """Return the names of the files at the top of a run's artifact folder."""
    return {info.path for info in client.list_artifacts(run_id) if not info.is_dir}


@dataclass(frozen=True)
class TrackingSettings:
    """MLflow settings that the driver passes to every trial of a sweep.

    ``enabled`` is False when tracking is off for the sweep or the driver could
    not reach the tracking server. Trials then keep their results in Tune's
    storage only.
    """

    tracking_uri: str
    experiment_name: str
    sweep_name: str
    storage_root: str
    parent_run_id: str | None = None
    enabled: bool = True
    artifact_location: str | None = None

    @property
    def sync_command(self) -> str:
        """The command that pushes results kept in Tune's storage to MLflow."""
        return f"idarts sync-mlflow {self.storage_root} --tracking-uri {self.tracking_uri}"


class TrialRun:
    """The MLflow child run of one Tune trial, used inside the trial's actor.

    Every method returns normally when MLflow fails: the first failure logs a
    warning naming the trial and the sync command, and the run goes offline
    for the rest of this actor's life.
    """

    def __init__(
        self,
        settings: TrackingSettings,
        trial_id: str,
        trial_name: str,
        params: dict[str, str],
        extra_tags: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.trial_id = trial_id
        self.trial_name = trial_name
        self.params = params
        self.extra_tags = extra_tags or {}
        self.run_id: str | None = None
        self.last_step = 0
        self._client: MlflowClient | None = None
        self._offline = not settings.enabled
        self._warned = False
        if self._offline:
            self._warn("MLflow tracking is off for this sweep")

    @property
    def online(self) -> bool:
        """Whether this trial still logs to MLflow."""
        return not self._offline

    def _warn(self, reason: str) -> None:
        if self._warned:
            return
        self._warned = True
        logger.warning(
            "trial %s: %s; its results stay in Tune's storage under %s. "
            "Push them to MLflow later with `%s`",
            self.trial_name,
            reason,
            self.settings.storage_root,
            self.settings.sync_command,
        )

    def _go_offline(self, action: str, error: BaseException) -> None:
        self._offline = True
        self._warn(f"MLflow at {self.settings.tracking_uri} failed to {action} ({type(error).__name__}: {error})")

    def attach(self, run_id: str | None = None) -> None:
        """Continue run ``run_id`` (from the trial's checkpoint), else the trial's tagged run, else a new one."""
        if self._offline:
            return
        reason = check_reachable(self.settings.tracking_uri)
        if reason is not None:
            self._offline = True
            self._warn(f"the MLflow tracking server is unreachable ({reason})")
            return
        try:
            self._client = make_client(self.settings.tracking_uri)
            self.run_id = self._find_or_create_run(run_id)
            self.last_step = last_logged_step(self._client, self.run_id)
            log_params(self._client, self.run_id, self.params)
            with_sqlite_retry(lambda: self._client.update_run(self.run_id, status="RUNNING"), "update_run")
        except Exception as error:  # noqa: BLE001 - tracking must never stop the search
            self._go_offline("open the trial's run", error)
            return
        logger.debug("trial %s logs to MLflow run %s from epoch %d", self.trial_name, self.run_id, self.last_step + 1)

    def _find_or_create_run(self, run_id: str | None) -> str:
        client = self._client
        if run_id is not None:
            try:
                run = client.get_run(run_id)
            except Exception:  # noqa: BLE001 - a missing run is looked up by tags below
                run = None
            if run is not None and run.info.lifecycle_stage == "active":
                return run_id
            logger.warning("trial %s: MLflow run %s from its checkpoint is gone; looking it up by tags", self.trial_name, run_id)

        experiment_id = ensure_experiment(client, self.settings.experiment_name, self.settings.artifact_location)
        tags = {TAG_SWEEP: self.settings.sweep_name, TAG_TRIAL_ID: self.trial_id}
        if self.settings.parent_run_id:
            tags[TAG_PARENT_RUN_ID] = self.settings.parent_run_id
        existing = find_runs(client, experiment_id, tags)
        if existing:
            return existing[0].info.run_id

        all_tags = {**tags, TAG_RUN_TYPE: RUN_TYPE_TRIAL, **self.extra_tags}
        run = with_sqlite_retry(
            lambda: client.create_run(experiment_id, run_name=self.trial_name, tags=all_tags),
            "create_run",
        )
        return run.info.run_id

    def log_epoch(self, epoch: int, metrics: dict[str, float], genotype: str | None) -> None:
        """Log an epoch unless the run already has it (a re-run after a restore)."""
        if self._offline or self.run_id is None or epoch <= self.last_step:
            return
        try:
            log_epoch_batch(self._client, self.run_id, epoch, metrics, genotype)
        except Exception as error:  # noqa: BLE001 - tracking must never stop the search
            self._go_offline(f"log epoch {epoch}", error)
            return
        self.last_step = epoch

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """Upload files to the top of the run's artifact folder."""
        if self._offline or self.run_id is None:
            return
        try:
            for path in paths:
                self._client.log_artifact(self.run_id, str(path))
        except Exception as error:  # noqa: BLE001 - tracking must never stop the search
            self._go_offline("upload artifacts", error)

    def set_status(self, status: str) -> None:
        """Mark the run FINISHED, FAILED or KILLED (with an end time), or RUNNING again."""
        if self._offline or self.run_id is None:
            return
        try:
            if status == "RUNNING":
                with_sqlite_retry(lambda: self._client.update_run(self.run_id, status=status), "update_run")
            else:
                with_sqlite_retry(lambda: self._client.set_terminated(self.run_id, status), "set_terminated")
        except Exception as error:  # noqa: BLE001 - tracking must never stop the search
            self._go_offline(f"mark the run {status}", error)
