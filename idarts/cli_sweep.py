"""The ``idarts sweep`` and ``idarts sync-mlflow`` commands.

Ray, Optuna and MLflow are imported inside the handlers: the core package
does not depend on them, and a sweep file is validated before Ray starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger("idarts")

BEST_TRIALS_SHOWN = 5


def add_sweep_commands(subparsers: Any) -> None:
    """Register ``sweep`` and ``sync-mlflow`` on an ``argparse`` subparsers object."""
    sweep = subparsers.add_parser(
        "sweep",
        help="run a Ray Tune sweep of searches described by a YAML file",
        description=(
            "Run (or resume) a sweep: Optuna proposes search settings, Ray Tune runs one search "
            "per trial, MLflow records a parent run for the sweep and a child run per trial."
        ),
    )
    sweep.add_argument("config", help="sweep YAML file (see tune/configs/ for examples)")
    sweep.add_argument(
        "--address",
        help='Ray cluster to join: "auto" (a cluster started with `ray start` on this machine), '
        '"HOST:PORT" or "ray://HOST:PORT"; without it Ray starts locally',
    )
    sweep.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI, e.g. http://HOST:PORT of an `mlflow server` "
        "(default: mlflow.tracking_uri of the file, else sqlite:///STORAGE_PATH/mlflow.db)",
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep: unfinished and failed trials resume from their checkpoints",
    )
    sweep.add_argument("--storage-path", help="folder for Tune's results and checkpoints (overrides storage_path)")
    sweep.add_argument(
        "--progress",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="Tune's progress output: 0 none, 1 status tables (default), 2 every result",
    )
    sweep.set_defaults(handler=command_sweep)

    sync = subparsers.add_parser(
        "sync-mlflow",
        help="push sweep results kept in Tune's storage to MLflow",
        description=(
            "Push the results of every sweep under STORAGE_PATH to MLflow: runs, per-epoch metrics, "
            "params, artifacts and statuses that are missing there. Running it again changes nothing."
        ),
    )
    sync.add_argument("storage_path", help="a sweep's storage path, or one sweep folder in it")
    sync.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: the one each sweep recorded when it ran)"
    )
    sync.set_defaults(handler=command_sync_mlflow)


def command_sweep(args: argparse.Namespace) -> int:
    """Validate the sweep file, run the sweep, and print its best trials."""
    from tune.sweep_config import SweepConfig

    config = SweepConfig.from_yaml(args.config)

    from tune.results import format_best_table
    from tune.runner import SweepFolderError, SweepOptions, run_sweep
    from tune.tracking import ui_command

    options = SweepOptions(
        address=args.address,
        tracking_uri=args.tracking_uri,
        resume=args.resume,
        storage_path=args.storage_path,
        verbose=args.progress,
    )
    try:
        outcome = run_sweep(config, options)
    except SweepFolderError as error:
        print(f"idarts sweep: error: {error}", file=sys.stderr)
        return 2

    best = outcome.best(config.mode, BEST_TRIALS_SHOWN)
    swept = [name for name, space in config.space.items() if space.is_swept]
    print()
    print(f"sweep {config.name}: {outcome.status}, {len(outcome.trials)} trials in {outcome.experiment_dir}")
    for trial in outcome.trials:
        if trial.error:
            print(f"  {trial.trial_name} failed: {trial.error}")
    if best:
        print(f"best trials by {config.metric} ({config.mode}):")
        print(format_best_table(best, config.metric, swept))
    else:
        print("no trial reported a finite score")
    if outcome.tracking_online:
        print(f"MLflow: experiment {config.experiment_name!r}, parent run {outcome.parent_run_id}")
        print(f"open the MLflow UI: {ui_command(outcome.tracking_uri)}")
    elif config.mlflow.enabled:
        print(
            "MLflow was not reachable; push the results later with "
            f"`idarts sync-mlflow {outcome.experiment_dir.parent} --tracking-uri {outcome.tracking_uri}`"
        )
    if outcome.status == "KILLED":
        print(f"the sweep was interrupted; continue it with `idarts sweep {args.config} --resume`")
    return 0 if outcome.status == "FINISHED" else 1


def command_sync_mlflow(args: argparse.Namespace) -> int:
    """Push the results of the sweeps under a storage path to MLflow."""
    from tune.sync import SyncError, sync_mlflow

    try:
        report = sync_mlflow(args.storage_path, tracking_uri=args.tracking_uri)
    except SyncError as error:
        print(f"idarts sync-mlflow: error: {error}", file=sys.stderr)
        return 2
    print(
        f"synced {report.sweeps} sweep(s): {report.runs_created} runs created, "
        f"{report.epochs_logged} epochs and {report.artifacts_logged} artifacts logged"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep commands alone (``python -m idarts.cli_sweep``), as ``idarts`` would."""
    from idarts.config import ConfigError

    parser = argparse.ArgumentParser(prog="idarts", description="Ray Tune sweeps of IDARTS searches.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_sweep_commands(subparsers)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (ConfigError, FileNotFoundError) as error:
        logger.debug("command failed", exc_info=True)
        print(f"idarts {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
