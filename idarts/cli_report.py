"""The ``idarts report`` command: a static HTML report of a sweep.

pandas, matplotlib and MLflow are imported inside the handler, so the core
command line starts without the ``analysis`` extra.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

logger = logging.getLogger("idarts")


def add_report_commands(subparsers: Any) -> None:
    """Register ``report`` on an ``argparse`` subparsers object."""
    report = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a sweep",
        description=(
            "Load a sweep's trials from MLflow (or from Tune's files with --storage-path) and write one "
            "HTML page with the summary tables, the IDARTS/PC-DARTS comparison, the stability of the "
            "found cells and the plots, images inlined."
        ),
    )
    source = report.add_mutually_exclusive_group(required=True)
    source.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 or sqlite:///mlflow.db")
    source.add_argument(
        "--storage-path", help="read Tune's files instead: the sweep's storage path, or one sweep folder in it"
    )
    report.add_argument(
        "--experiment", help="MLflow experiment name (default: the sweep name); needed with --tracking-uri"
    )
    report.add_argument("--sweep", help="only the runs of this sweep (default: every sweep found)")
    report.add_argument("--out", required=True, help="HTML file to write; its folder is created when missing")
    report.add_argument(
        "--metric", default="valid_acc", help="metric to compare, as logged per epoch (default: valid_acc)"
    )
    report.add_argument("--title", help="page title (default: 'Sweep report: ' and the sweep name)")
    report.set_defaults(handler=command_report)


def command_report(args: argparse.Namespace) -> int:
    """Write the report and print where it went; return 2 when the sweep cannot be loaded."""
    if args.tracking_uri and not (args.experiment or args.sweep):
        print("idarts report: error: --experiment is missing; name the MLflow experiment of the sweep", file=sys.stderr)
        return 2

    from analysis.report import write_report

    mlflow_errors = _mlflow_error_types()
    try:
        path = write_report(
            args.out,
            tracking_uri=args.tracking_uri,
            experiment=args.experiment,
            sweep=args.sweep,
            storage_path=args.storage_path,
            metric=args.metric,
            title=args.title,
        )
    except (ImportError, ConnectionError) as error:
        print(f"idarts report: error: {error}", file=sys.stderr)
        return 2
    except mlflow_errors as error:
        logger.debug("loading the sweep from MLflow failed", exc_info=True)
        print(f"idarts report: error: MLflow at {args.tracking_uri} failed: {error}", file=sys.stderr)
        return 2
    print(f"report written to {path}")
    return 0


def _mlflow_error_types() -> tuple[type[BaseException], ...]:
    """Return MLflow's exception class, or no class when MLflow is not installed."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        return ()
    return (MlflowException,)
