"""``run_sweep``: run (or resume) one sweep with Ray Tune, Optuna and MLflow."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tune.parent_run import SWEEP_ARTIFACT_NAME, SweepRun
from tune.results import (
    MLFLOW_STATUS,
    STATUS_UNFINISHED,
    SweepMetadata,
    TrialSummary,
    best_trials,
    read_study_summary,
    summarize_trial,
)
from tune.sweep_config import ParameterSpace, SweepConfig
from tune.tracking import default_tracking_uri

logger = logging.getLogger(__name__)

RAY_ENVIRONMENT_DEFAULTS = {"RAY_USAGE_STATS_ENABLED": "0"}
"""Environment defaults set before Ray starts (no usage statistics); variables already set win."""


class SweepFolderError(RuntimeError):
    """The sweep folder does not fit the request (an existing sweep without --resume, or the reverse)."""


@dataclass
class SweepOptions:
    """How to run a sweep: where Ray and MLflow are, and whether to resume.

    ``trainable`` replaces ``SearchTrainable`` (a subclass), for fault
    injection in tests.
    """

    address: str | None = None
    """Ray cluster to join ("auto", "HOST:PORT" or "ray://HOST:PORT"); None starts Ray locally."""
    tracking_uri: str | None = None
    """Overrides ``mlflow.tracking_uri`` of the sweep file."""
    resume: bool = False
    storage_path: str | None = None
    """Overrides ``storage_path`` of the sweep file."""
    verbose: int = 1
    """Tune's progress output: 0 silent, 1 status tables, 2 every result."""
    trainable: type | None = None


@dataclass
class SweepOutcome:
    """The results of a finished or interrupted sweep: its folder, MLflow parent run, status and trials."""

    experiment_dir: Path
    tracking_uri: str
    parent_run_id: str | None
    status: str
    """MLflow status of the parent run: FINISHED, or KILLED when trials were left unfinished."""
    trials: list[TrialSummary]
    study: list[dict[str, Any]] = field(default_factory=list)
    tracking_online: bool = False

    def best(self, mode: str, count: int = 5) -> list[TrialSummary]:
        """Return the best trials: finished ones before pruned ones, failed ones left out."""
        return best_trials(self.trials, mode, count)


class TrialNamer:
    """Names each trial (and its folder) ``<sweep name>_<trial id>``; picklable for ``Tuner.restore``."""

    def __init__(self, sweep_name: str) -> None:
        self.sweep_name = sweep_name

    def __call__(self, trial: Any) -> str:
        return f"{self.sweep_name}_{trial.trial_id}"


def resolve_tracking_uri(config: SweepConfig, options: SweepOptions, storage_root: Path) -> str:
    """Return the tracking URI: ``--tracking-uri``, else the sweep file's, else SQLite in the storage path."""
    return options.tracking_uri or config.mlflow.tracking_uri or default_tracking_uri(storage_root)


def build_param_space(config: SweepConfig) -> dict[str, Any]:
    """Return Tune's ``param_space``: the full flat ``SearchConfig`` with swept fields as Tune domains."""
    settings = config.base_search_config().to_dict()
    data_dir = settings.get("data_dir")
    if data_dir and not Path(data_dir).expanduser().is_absolute():
        # Trials run in their own folders, so a relative data_dir would point elsewhere.
        settings["data_dir"] = str(Path(data_dir).expanduser().resolve())
    for name, space in config.space.items():
        settings[name] = _tune_domain(space)
    return settings


def _tune_domain(space: ParameterSpace) -> Any:
    from ray import tune

    if space.type == "fixed":
        return space.value
    if space.type == "categorical":
        return tune.choice(list(space.values))
    if space.type == "float":
        if space.scale == "log":
            return tune.loguniform(space.low, space.high)
        return tune.uniform(space.low, space.high)
    # Tune's integer upper bounds are exclusive; the sweep file's are inclusive.
    if space.scale == "log":
        return tune.lograndint(space.low, space.high + 1)
    return tune.randint(space.low, space.high + 1)


def build_tune_config(config: SweepConfig) -> Any:
    """Return the ``TuneConfig``: seeded TPE through Optuna, the optional ASHA scheduler, the trial names."""
    from optuna.samplers import TPESampler
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from tune.optuna_search import SweepOptunaSearch

    sampler = TPESampler(seed=config.optuna.seed, n_startup_trials=config.optuna.n_startup_trials)
    search = SweepOptunaSearch(sampler=sampler, points_to_evaluate=config.points_to_evaluate or None)

    scheduler = None
    if config.scheduler is not None:
        max_t = config.scheduler.max_t or max(config.value_range("epochs"))
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=max_t,
            grace_period=config.scheduler.grace_period,
            reduction_factor=config.scheduler.reduction_factor,
            brackets=1,
        )

    namer = TrialNamer(config.name)
    return tune.TuneConfig(
        metric=config.metric,
        mode=config.mode,
        search_alg=search,
        scheduler=scheduler,
        num_samples=config.num_samples,
        max_concurrent_trials=config.max_concurrent,
        trial_name_creator=namer,
        trial_dirname_creator=namer,
    )


def build_run_config(config: SweepConfig, storage_root: Path, verbose: int) -> Any:
    """Return the ``RunConfig``: storage, per-epoch checkpoints, retries."""
    from ray import tune

    return tune.RunConfig(
        name=config.name,
        storage_path=str(storage_root),
        checkpoint_config=tune.CheckpointConfig(
            checkpoint_frequency=config.checkpoint_frequency,
            checkpoint_at_end=True,
            num_to_keep=config.checkpoints_to_keep,
        ),
        failure_config=tune.FailureConfig(max_failures=config.max_failures),
        verbose=verbose,
    )


def build_trainable(
    config: SweepConfig, settings: Any, experiment_dir: Path, trainable_class: type | None
) -> Any:
    """Return the trainable with its tracking settings, experiment folder and per-trial resources attached."""
    from ray import tune

    from tune.trainable import SearchTrainable

    trainable_class = trainable_class or SearchTrainable
    trainable = tune.with_parameters(
        trainable_class, tracking=settings, experiment_dir=str(experiment_dir)
    )
    return tune.with_resources(trainable, config.resources.to_ray())


def init_ray(address: str | None) -> bool:
    """Connect to the Ray cluster at ``address`` or start a local one.

    Without ``address``, a ``RAY_ADDRESS`` in the environment (set by ``ray
    job submit`` and KubeRay) selects the cluster; only without both does Ray
    start locally.

    Returns:
        Whether this call initialized Ray, so that the caller shuts it down
        (a local Ray) or disconnects (a cluster) at the end.
    """
    import ray

    for name, value in RAY_ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if ray.is_initialized():
        logger.info("using the Ray session already running in this process")
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    resources = ray.cluster_resources()
    logger.info(
        "Ray %s: %d node(s), %g CPUs, %g GPUs",
        "started locally" if address is None else f"cluster at {address}",
        len([node for node in ray.nodes() if node.get("Alive")]),
        resources.get("CPU", 0),
        resources.get("GPU", 0),
    )
    return True


def check_sweep_folder(experiment_dir: Path, resume: bool) -> None:
    """Reject a new sweep over an existing one, and a resume of a sweep that has no saved state."""
    from ray.tune import Tuner

    exists = experiment_dir.exists() and Tuner.can_restore(str(experiment_dir))
    if exists and not resume:
        raise SweepFolderError(
            f"{experiment_dir} already contains a sweep; pass --resume to continue it, "
            "or change the sweep name or --storage-path"
        )
    if resume and not exists:
        raise SweepFolderError(
            f"cannot resume: no saved sweep state found in {experiment_dir}; start the sweep without --resume"
        )


RESUME_CHANGEABLE_KEYS = frozenset({"mlflow", "storage_path"})
"""Sweep file keys that may change on ``--resume``; Tune restores everything else from its saved state."""


def check_resumed_config(config: SweepConfig, experiment_dir: Path) -> None:
    """Reject a ``--resume`` whose sweep file changed keys that Tune would silently ignore."""
    saved_path = experiment_dir / SWEEP_ARTIFACT_NAME
    if not saved_path.exists():
        return
    saved = SweepConfig.from_yaml(saved_path).to_dict()
    current = config.to_dict()
    changed = sorted(
        key for key in set(saved) | set(current) if key not in RESUME_CHANGEABLE_KEYS and saved.get(key) != current.get(key)
    )
    if changed:
        raise SweepFolderError(
            f"cannot resume {experiment_dir} with a changed sweep file: {changed} differ from the saved "
            f"{saved_path}; a resumed sweep keeps its saved settings, so resume with that file "
            "or start a new sweep under another name"
        )


def run_sweep(config: SweepConfig, options: SweepOptions | None = None) -> SweepOutcome:
    """Run every trial of ``config`` (or the rest of an interrupted sweep with ``options.resume``).

    The driver opens the MLflow parent run, runs the trials with Ray Tune,
    then fixes the MLflow status of every child run from Tune's final state
    and deletes child runs whose trials the restored sweep no longer has.

    Raises:
        SweepFolderError: the sweep folder already contains a sweep and resume is
            off, or resume is on and there is nothing to resume or the sweep
            file changed.
    """
    from ray.tune import Tuner

    options = options or SweepOptions()
    storage_root = config.storage_root(options.storage_path)
    experiment_dir = storage_root / config.name
    tracking_uri = resolve_tracking_uri(config, options, storage_root)

    check_sweep_folder(experiment_dir, options.resume)
    if options.resume:
        check_resumed_config(config, experiment_dir)
    started_ray = init_ray(options.address)
    try:
        experiment_dir.mkdir(parents=True, exist_ok=True)
        previous = SweepMetadata.read(experiment_dir)

        sweep_run = SweepRun(config, tracking_uri, storage_root)
        settings = sweep_run.open(previous.parent_run_id if previous else None, resume=options.resume)
        metadata = SweepMetadata(
            sweep_name=config.name,
            experiment_name=config.experiment_name,
            tracking_uri=tracking_uri,
            metric=config.metric,
            mode=config.mode,
            parent_run_id=sweep_run.run_id or (previous.parent_run_id if previous else None),
            artifact_location=settings.artifact_location,
        )
        metadata.write(experiment_dir)
        (experiment_dir / SWEEP_ARTIFACT_NAME).write_text(config.to_yaml_text())

        trainable = build_trainable(config, settings, experiment_dir, options.trainable)
        if options.resume:
            logger.info("resuming sweep %s from %s", config.name, experiment_dir)
            tuner = Tuner.restore(str(experiment_dir), trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = Tuner(
                trainable,
                param_space=build_param_space(config),
                tune_config=build_tune_config(config),
                run_config=build_run_config(config, storage_root, options.verbose),
            )

        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            # Tune saved the sweep state before it stopped, so --resume continues it.
            _close_sweep(sweep_run, metadata, experiment_dir, "KILLED")
            raise
        except Exception:
            _close_sweep(sweep_run, metadata, experiment_dir, "FAILED")
            raise

        trials = summarize_grid(grid, config.metric, experiment_dir)
        interrupted = any(trial.status == STATUS_UNFINISHED for trial in trials)
        status = "KILLED" if interrupted else "FINISHED"
        sweep_run.reconcile({trial.trial_id: MLFLOW_STATUS[trial.status] for trial in trials})
        sweep_run.set_tags({"idarts.trials": str(len(trials))})
        _close_sweep(sweep_run, metadata, experiment_dir, status)
        return SweepOutcome(
            experiment_dir=experiment_dir,
            tracking_uri=tracking_uri,
            parent_run_id=metadata.parent_run_id,
            status=status,
            trials=trials,
            study=read_study_summary(experiment_dir),
            tracking_online=sweep_run.online,
        )
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def summarize_grid(grid: Any, metric: str, experiment_dir: Path) -> list[TrialSummary]:
    """Summarize every trial of a ``ResultGrid`` from its folder, with the error Tune recorded."""
    states = {
        record["tune_trial_id"]: record["state"]
        for record in read_study_summary(experiment_dir)
        if record.get("tune_trial_id")
    }
    trials = []
    for result in grid:
        if result.path is None:
            continue
        error = None if result.error is None else str(result.error).strip().splitlines()[-1]
        summary = summarize_trial(
            Path(result.path), metric, states, errored=result.error is not None, error=error
        )
        if summary is not None:
            trials.append(summary)
    return trials


def _close_sweep(sweep_run: SweepRun, metadata: SweepMetadata, experiment_dir: Path, status: str) -> None:
    sweep_run.close(status)
    metadata.status = status
    metadata.write(experiment_dir)
