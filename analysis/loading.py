"""Load a sweep's trials into the frames of :mod:`analysis.frames`, from MLflow or from Tune's storage.

The MLflow loaders (:func:`load_runs`, :func:`load_history`) and the Tune
loaders (:func:`load_tune_results`, :func:`load_tune_history`) return the same
columns with the same dtypes for the same sweep. Values can differ slightly:
MLflow times include the trial's setup, Tune's are whole seconds, and Tune
frames have no ``run_id``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from analysis.frames import TrialRecord, history_frame, parse_param, runs_frame
from tune.sweep_config import REPORTED_METRICS

logger = logging.getLogger(__name__)


TAG_SWEEP = "idarts.sweep"
TAG_RUN_TYPE = "idarts.run_type"
TAG_TRIAL_ID = "idarts.trial_id"
TAG_GENOTYPE = "idarts.genotype"
RUN_TYPE_TRIAL = "trial"

TUNE_PARAMS_FILE = "params.json"
TUNE_ARTIFACTS_DIR = "artifacts"
ARCH_RECORD_FILE = "arch.json"
MLFLOW_PAGE_SIZE = 1000
HEALTH_CHECK_TIMEOUT_S = 5.0

# ---------------------------------------------------------------------------
# MLflow


def check_tracking_server(tracking_uri: str, timeout_s: float = HEALTH_CHECK_TIMEOUT_S) -> None:
    """Raise ``ConnectionError`` when an HTTP tracking server does not respond to ``/health``.

    MLflow's client retries a failing request for minutes before it gives up,
    so the loaders check the server once first. Database URIs such as
    ``sqlite:///mlflow.db`` are not checked.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            status = response.status
    except OSError as error:
        raise ConnectionError(
            f"MLflow tracking server {tracking_uri} is unreachable (GET {url} failed: {error}); "
            "start the server, or read Tune's files with storage_path instead"
        ) from error
    if status != 200:
        raise ConnectionError(f"MLflow tracking server {tracking_uri} returned HTTP {status} for GET {url}")


def _mlflow_client(tracking_uri: str) -> Any:
    check_tracking_server(tracking_uri)
    try:
        from mlflow import MlflowClient
    except ImportError as error:
        raise ImportError(
            "loading runs from MLflow needs the mlflow package; install it with "
            "`pip install 'idarts[tune]'`, or load Tune's files with load_tune_results"
        ) from error
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: Any, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(item.name for item in client.search_experiments())
        raise ValueError(f"MLflow experiment {experiment!r} not found; existing experiments: {names}")
    if found.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {experiment!r} is deleted; restore it in the MLflow UI first")
    return found.experiment_id


def _trial_filter(sweep: str | None) -> str:
    filters = [f"tags.`{TAG_RUN_TYPE}` = '{RUN_TYPE_TRIAL}'"]
    if sweep is not None:
        if "'" in sweep or "\\" in sweep:
            raise ValueError(f"invalid sweep name {sweep!r}: sweep names contain no quotes or backslashes")
        filters.append(f"tags.`{TAG_SWEEP}` = '{sweep}'")
    return " and ".join(filters)


def _search_trial_runs(client: Any, experiment_id: str, sweep: str | None) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=_trial_filter(sweep), max_results=MLFLOW_PAGE_SIZE, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _mlflow_history(client: Any, run: Any, metrics: Iterable[str]) -> dict[str, dict[int, float]]:
    """Return ``{metric: {step: value}}``; of values logged twice at one step, the later one wins."""
    # NOTE: one request per run and metric (about 10 per trial), which takes
    # seconds for hundreds of trials on a local server and longer over a network.
    history: dict[str, dict[int, float]] = {}
    for metric in metrics:
        values = sorted(client.get_metric_history(run.info.run_id, metric), key=lambda item: (item.step, item.timestamp))
        history[metric] = {int(item.step): float(item.value) for item in values}
    return history


def _timestamp_ms(value: int | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value, unit="ms", tz="UTC")


def _mlflow_records(tracking_uri: str, experiment: str, sweep: str | None) -> list[TrialRecord]:
    client = _mlflow_client(tracking_uri)
    experiment_id = _experiment_id(client, experiment)
    runs = _search_trial_runs(client, experiment_id, sweep)
    if not runs:
        where = f"sweep {sweep!r} of " if sweep is not None else ""
        logger.warning("%sMLflow experiment %r at %s has no trial runs", where, experiment, tracking_uri)

    records = []
    for run in runs:
        tags = run.data.tags
        records.append(
            TrialRecord(
                run_id=run.info.run_id,
                trial=run.info.run_name,
                trial_id=tags.get(TAG_TRIAL_ID, ""),
                sweep=tags.get(TAG_SWEEP, ""),
                status=run.info.status,
                params={name: parse_param(name, value) for name, value in run.data.params.items()},
                history=_mlflow_history(client, run, sorted(set(run.data.metrics) | set(REPORTED_METRICS))),
                genotype_json=tags.get(TAG_GENOTYPE),
                start_time=_timestamp_ms(run.info.start_time),
                end_time=_timestamp_ms(run.info.end_time),
                artifact_uri=run.info.artifact_uri,
            )
        )
    logger.info("loaded %d trial runs of experiment %r from %s", len(records), experiment, tracking_uri)
    return records


def load_runs(tracking_uri: str, experiment: str, sweep: str | None = None) -> pd.DataFrame:
    """Load one row per trial run of an MLflow experiment.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``http://127.0.0.1:5000`` or ``sqlite:///mlflow.db``.
        experiment: MLflow experiment name (the sweep's ``mlflow.experiment``, by default its name).
        sweep: only the runs of this sweep (tag ``idarts.sweep``); None loads every sweep of the experiment.

    Returns:
        A frame sorted by sweep and trial name. Its columns are:

        * ``run_id``, ``trial`` (Tune trial name), ``trial_id``, ``sweep`` and
          ``status`` (FINISHED, FAILED, KILLED or RUNNING);
        * one column per ``SearchConfig`` setting with its real dtype
          (``Int64`` where an int setting is None);
        * ``epochs_run`` and the last value of every reported metric
          (accuracies in percent, the ``lr`` metric as ``final_lr``);
        * ``best_train_loss``, ``best_train_acc``, ``best_valid_loss`` and
          ``best_valid_acc``;
        * ``genotype_json`` (text) and ``genotype``
          (:class:`~idarts.genotypes.Genotype`, None when missing);
        * ``start_time`` and ``end_time`` (UTC), ``duration_s`` (seconds)
          and ``artifact_uri``.

    Raises:
        ValueError: the experiment does not exist or is deleted.
        ConnectionError: the tracking server does not respond.
        ImportError: mlflow is not installed.
    """
    records = _mlflow_records(tracking_uri, experiment, sweep)
    return runs_frame(records)


def load_history(tracking_uri: str, experiment: str, sweep: str | None = None) -> pd.DataFrame:
    """Load every logged metric of every trial run as a long frame.

    Arguments are those of :func:`load_runs`. The frame has one row per
    (trial, epoch, metric) with the columns ``run_id``, ``trial``, the swept
    settings (see :func:`swept_params`), ``epoch`` (1-based), ``metric`` and
    ``value``, sorted by trial, epoch and metric.
    """
    records = _mlflow_records(tracking_uri, experiment, sweep)
    return history_frame(records, runs_frame(records))


# ---------------------------------------------------------------------------
# Tune storage


def _is_tune_experiment(folder: Path) -> bool:
    return folder.is_dir() and any((child / TUNE_PARAMS_FILE).is_file() for child in folder.iterdir() if child.is_dir())


def tune_experiment_dirs(storage_path: str | os.PathLike[str], sweep: str | None = None) -> list[Path]:
    """Return the Tune experiment folders under ``storage_path``.

    ``storage_path`` is either a sweep's storage path (which contains one
    folder per sweep) or one sweep folder itself. With ``sweep`` only the folder of
    that name is returned.

    Raises:
        FileNotFoundError: the path does not exist, or contains no sweep (of that name).
    """
    root = Path(storage_path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Tune storage path {root} not found; pass the sweep's storage_path")
    if _is_tune_experiment(root):
        folders = [root]
    else:
        folders = sorted(child for child in root.iterdir() if _is_tune_experiment(child))
    if sweep is not None:
        folders = [folder for folder in folders if folder.name == sweep]
    if not folders:
        description = f"sweep {sweep!r}" if sweep is not None else "sweep"
        raise FileNotFoundError(
            f"no {description} found in {root}: expected folders of trials with {TUNE_PARAMS_FILE} "
            "(the Tune experiment folder <storage_path>/<sweep name>)"
        )
    return folders


def _optuna_states(experiment_dir: Path) -> dict[str, str]:
    """Return the Optuna state of every Tune trial id recorded in the sweep's ``optuna_study.json``."""
    from tune.results import read_study_summary

    return {
        record["tune_trial_id"]: record["state"]
        for record in read_study_summary(experiment_dir)
        if record.get("tune_trial_id")
    }


def _tune_record(experiment_dir: Path, trial_dir: Path, optuna_states: Mapping[str, str]) -> TrialRecord:
    """Read one trial folder; the status is the MLflow status that ``idarts sweep`` gives its run."""
    from tune.results import MLFLOW_STATUS, TUNE_ERROR_FILE, read_results, trial_status

    raw_params = json.loads((trial_dir / TUNE_PARAMS_FILE).read_text())
    params = {name: parse_param(name, value) for name, value in raw_params.items()}
    results = read_results(trial_dir)
    last = results[-1] if results else {}

    history: dict[str, dict[int, float]] = {}
    for result in results:
        for metric in REPORTED_METRICS:
            value = result.get(metric)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                history.setdefault(metric, {})[int(result["epoch"])] = float(value)

    trial_id = str(last.get("trial_id") or trial_dir.name.rsplit("_", 1)[-1])
    last_epoch = int(last.get("epoch", 0))
    errored = (trial_dir / TUNE_ERROR_FILE).exists()
    epochs = int(params.get("epochs") or 0)
    status = MLFLOW_STATUS[trial_status(optuna_states.get(trial_id), errored, last_epoch, epochs)]

    start = end = None
    if last:
        end_seconds = float(last["timestamp"])
        start = pd.Timestamp(end_seconds - float(last.get("time_total_s", 0.0)), unit="s", tz="UTC")
        end = pd.Timestamp(end_seconds, unit="s", tz="UTC")

    artifacts = trial_dir / TUNE_ARTIFACTS_DIR
    genotype_json = last.get("genotype") or None
    return TrialRecord(
        run_id=None,
        trial=trial_dir.name,
        trial_id=trial_id,
        sweep=experiment_dir.name,
        status=status,
        params=params,
        history=history,
        genotype_json=genotype_json,
        start_time=start,
        end_time=end,
        artifact_uri=artifacts.resolve().as_uri() if artifacts.is_dir() else None,
    )


def _tune_records(storage_path: str | os.PathLike[str], sweep: str | None) -> list[TrialRecord]:
    records = []
    for experiment_dir in tune_experiment_dirs(storage_path, sweep):
        states = _optuna_states(experiment_dir)
        for trial_dir in sorted(child for child in experiment_dir.iterdir() if (child / TUNE_PARAMS_FILE).is_file()):
            records.append(_tune_record(experiment_dir, trial_dir, states))
    logger.info("loaded %d trials from Tune storage %s", len(records), storage_path)
    return records


def load_tune_results(storage_path: str | os.PathLike[str], sweep: str | None = None) -> pd.DataFrame:
    """Load one row per trial from Tune's files, for sweeps that ran without MLflow.

    Reads ``params.json``, ``result.json`` and ``error.txt`` of every trial
    folder, and ``optuna_study.json`` of the sweep folder for the status of
    trials that ASHA stopped. The columns and dtypes are those of
    :func:`load_runs`; ``run_id`` is None and ``artifact_uri`` is the
    ``file://`` URI of the trial's ``artifacts`` folder (None when it has none).

    Args:
        storage_path: the sweep's storage path, or one sweep folder in it.
        sweep: only this sweep's folder; None loads every sweep found.

    Raises:
        FileNotFoundError: no sweep folder was found.
    """
    return runs_frame(_tune_records(storage_path, sweep))


def load_tune_history(storage_path: str | os.PathLike[str], sweep: str | None = None) -> pd.DataFrame:
    """Load the per-epoch metrics from Tune's files as the long frame of :func:`load_history`."""
    records = _tune_records(storage_path, sweep)
    return history_frame(records, runs_frame(records))


def load_sweep(
    tracking_uri: str | None = None,
    experiment: str | None = None,
    sweep: str | None = None,
    storage_path: str | os.PathLike[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Load the runs and the history frames of a sweep with one read of each trial.

    Reads MLflow when ``tracking_uri`` is given (``experiment`` then names the
    MLflow experiment, by default ``sweep``), else Tune's files under
    ``storage_path``.

    Raises:
        ValueError: neither source is given, or MLflow is given without an experiment or sweep name.
    """
    if tracking_uri:
        experiment = experiment or sweep
        if not experiment:
            raise ValueError("experiment is missing: pass the MLflow experiment name (by default the sweep name)")
        records = _mlflow_records(tracking_uri, experiment, sweep)
    elif storage_path:
        records = _tune_records(storage_path, sweep)
    else:
        raise ValueError("no source given: pass tracking_uri (MLflow) or storage_path (Tune's files)")

    runs = runs_frame(records)
    return runs, history_frame(records, runs)


# ---------------------------------------------------------------------------
# Architecture history


def load_arch_record(run: Mapping[str, Any] | pd.Series, tracking_uri: str | None = None) -> dict[str, Any]:
    """Read the ``arch.json`` artifact of one row of a runs frame.

    The record contains the trial's config and, per epoch, ``alpha`` (14x8 per
    cell), ``beta`` (14 per cell), ``psi``, ``gate_counts`` and
    ``gate_events``. Artifacts under a ``file://`` URI are read directly;
    others are downloaded through MLflow, which needs ``tracking_uri``.

    Raises:
        FileNotFoundError: the run has no ``arch.json`` (it ended before its first epoch finished).
        ValueError: the artifact is remote and ``tracking_uri`` is missing.
    """
    artifact_uri = run.get("artifact_uri")
    trial = run.get("trial")
    if not artifact_uri:
        raise FileNotFoundError(f"trial {trial} has no artifact folder, so no {ARCH_RECORD_FILE}")

    parsed = urlparse(artifact_uri)
    if parsed.scheme in ("", "file"):
        path = Path(unquote(parsed.path)) / ARCH_RECORD_FILE
        if not path.is_file():
            raise FileNotFoundError(f"trial {trial}: {path} not found; the trial wrote no artifacts")
        return json.loads(path.read_text())

    if not tracking_uri:
        raise ValueError(
            f"trial {trial}: artifacts live at {artifact_uri}; pass tracking_uri to download {ARCH_RECORD_FILE}"
        )
    import tempfile

    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as folder, _without_progress_bar():
        try:
            local = download_artifacts(
                artifact_uri=f"{artifact_uri.rstrip('/')}/{ARCH_RECORD_FILE}", dst_path=folder, tracking_uri=tracking_uri
            )
        except (MlflowException, OSError) as error:
            raise FileNotFoundError(f"trial {trial}: downloading {ARCH_RECORD_FILE} failed: {error}") from error
        return json.loads(Path(local).read_text())


@contextlib.contextmanager
def _without_progress_bar() -> Iterator[None]:
    """Turn off MLflow's download progress bar (it clutters notebooks) unless the user set the variable."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if name in os.environ:
        yield
        return
    os.environ[name] = "false"
    try:
        yield
    finally:
        os.environ.pop(name, None)
