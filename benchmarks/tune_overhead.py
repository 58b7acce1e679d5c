"""Overhead of ``idarts sweep``: the same 4 short searches run directly vs through Ray Tune.

Both sides run as a fresh Python process, one search at a time, with the
same number of torch threads:

* direct: one process runs the 4 searches with ``idarts.runner.run_search``
  (a checkpoint per epoch, the artifacts at the end);
* sweep: ``idarts sweep`` runs the same 4 settings (listed in
  ``points_to_evaluate``) as 4 trials, 1 at a time, each reserving
  ``--threads`` CPUs, with Ray started locally, a checkpoint per epoch, and
  MLflow logging to the default SQLite store.

One torch thread is the default: on a 2-core machine that other jobs also
loaded, the first epoch of the default search took 356 s with 2 threads and
22 s with 1.

The ratio is sweep wall time / direct wall time; the target is at most 1.10.
This is a benchmark, not a test: it prints the numbers and a Markdown row.

    python benchmarks/tune_overhead.py --epochs 3 --subset 1000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

POINTS = [
    {"threshold": 0.3, "seed": 0},
    {"threshold": 0.5, "seed": 1},
    {"threshold": 0.7, "seed": 2},
    {"threshold": 0.9, "seed": 3},
]
"""The 4 searches: one threshold and seed each."""


def base_search(args: argparse.Namespace) -> dict[str, Any]:
    """Return the search settings shared by the 4 searches."""
    return {
        "dataset": "fashion-mnist",
        "subset": args.subset,
        "batch_size": 32,
        "layers": 3,
        "init_channels": 8,
        "partial_k": 4,
        "epochs": args.epochs,
        "warmup_epochs": 1,
        "device": "cpu",
    }


def run_direct_searches(settings: list[dict[str, Any]], out_dir: Path, threads: int) -> None:
    """Run each search to the end in this process (the body of the direct side)."""
    import torch

    from idarts.config import SearchConfig
    from idarts.runner import run_search

    torch.set_num_threads(threads)
    for index, search in enumerate(settings):
        run_search(SearchConfig.from_dict(search), out_dir / f"search_{index}", show_progress=False)


def time_direct(settings: list[dict[str, Any]], work_dir: Path, threads: int) -> float:
    """Return the wall time of a fresh process that runs the searches directly."""
    command = [
        sys.executable,
        __file__,
        "--direct-worker",
        json.dumps({"settings": settings, "out_dir": str(work_dir / "direct"), "threads": threads}),
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def time_sweep(args: argparse.Namespace, work_dir: Path, threads: int) -> float:
    """Return the wall time of ``idarts sweep`` over the same searches, 1 trial at a time."""
    sweep = {
        "name": "tune_overhead",
        "search": {key: value for key, value in base_search(args).items()},
        "space": {
            "threshold": {"type": "categorical", "values": sorted({point["threshold"] for point in POINTS})},
            "seed": {"type": "categorical", "values": sorted({point["seed"] for point in POINTS})},
        },
        "points_to_evaluate": POINTS,
        "num_samples": len(POINTS),
        "max_concurrent": 1,
        "resources": {"cpu": threads, "gpu": 0},
        "max_failures": 0,
        "storage_path": str(work_dir / "sweeps"),
    }
    config_path = work_dir / "tune_overhead.yaml"
    config_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    command = [sys.executable, "-m", "idarts.cli_sweep", "sweep", str(config_path), "--progress", "0"]
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Time both sides once each and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="epochs per search (default: 3)")
    parser.add_argument("--subset", type=int, default=1000, help="Fashion-MNIST images per search (default: 1000)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, and CPUs per trial (default: 1)")
    parser.add_argument("--output", type=Path, help="also write the numbers as JSON to this file")
    parser.add_argument("--direct-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.direct_worker:
        job = json.loads(args.direct_worker)
        run_direct_searches(job["settings"], Path(job["out_dir"]), job["threads"])
        return 0

    settings = [{**base_search(args), **point} for point in POINTS]
    with tempfile.TemporaryDirectory(prefix="tune_overhead_") as directory:
        work_dir = Path(directory)
        direct_s = time_direct(settings, work_dir, args.threads)
        sweep_s = time_sweep(args, work_dir, args.threads)

    ratio = sweep_s / direct_s
    record = {
        "searches": len(POINTS),
        "epochs": args.epochs,
        "subset": args.subset,
        "threads": args.threads,
        "direct_s": round(direct_s, 1),
        "sweep_s": round(sweep_s, 1),
        "ratio": round(ratio, 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    print(json.dumps(record, indent=1))
    print(
        f"| {record['searches']} x {args.epochs} epochs, subset {args.subset}, {args.threads} threads "
        f"| {record['direct_s']} s | {record['sweep_s']} s | {record['ratio']:.2f} |"
    )
    if args.output:
        args.output.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
