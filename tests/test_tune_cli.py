"""``idarts sweep`` as a separate driver process: killed and resumed, and joining a two-node cluster."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tune.results import read_results, read_study_summary
from tune_helpers import (  # noqa: F401 - fixtures
    QUIET_ENVIRONMENT,
    TINY_SEARCH,
    metric_steps,
    mlflow_runs,
    mlflow_server,
    requires_fashion_mnist,
)

pytestmark = requires_fashion_mnist

SWEEP_TIMEOUT_S = 600
KILL_WAIT_TIMEOUT_S = 300


def write_sweep(path: Path, name: str, **settings) -> Path:
    data = {
        "name": name,
        "search": {**TINY_SEARCH, **settings.pop("search", {})},
        "space": {"threshold": {"type": "float", "low": 0.3, "high": 0.9}},
        "max_concurrent": 2,
        "max_failures": 0,
        **settings,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def sweep_command(config: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "idarts.cli_sweep", "sweep", str(config), "--progress", "0", *options]


def run_cli(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SWEEP_TIMEOUT_S,
        env={**os.environ, **QUIET_ENVIRONMENT},
    )


def first_checkpoint_written(experiment_dir: Path) -> bool:
    """Whether Tune saved the sweep state and some trial saved a checkpoint."""
    if not list(experiment_dir.glob("experiment_state-*.json")):
        return False
    return any(experiment_dir.glob("*/checkpoint_*"))


def test_killed_driver_resumes_without_duplicates(tmp_path, mlflow_server):
    config = write_sweep(tmp_path / "sweep.yaml", "killed", num_samples=3, search={"epochs": 3})
    storage = tmp_path / "storage"
    options = ["--storage-path", str(storage), "--tracking-uri", mlflow_server.uri]
    experiment_dir = storage / "killed"

    driver = subprocess.Popen(
        sweep_command(config, *options),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **QUIET_ENVIRONMENT},
    )
    try:
        deadline = time.monotonic() + KILL_WAIT_TIMEOUT_S
        while not first_checkpoint_written(experiment_dir):
            assert driver.poll() is None, "the sweep ended before it could be killed"
            assert time.monotonic() < deadline, "no trial checkpoint appeared"
            time.sleep(0.5)
        assert driver.poll() is None
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        # Ray's processes started by the driver share its process group; end those that outlive it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)

    resumed = run_cli(sweep_command(config, *options, "--resume"), tmp_path)

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "best trials by valid_acc" in resumed.stdout
    assert "open the MLflow UI" in resumed.stdout
    study = read_study_summary(experiment_dir)
    assert [record["state"] for record in study] == ["COMPLETE"] * 3
    trial_dirs = sorted(path for path in experiment_dir.iterdir() if (path / "params.json").exists())
    assert len(trial_dirs) == 3
    for trial_dir in trial_dirs:
        assert [result["epoch"] for result in read_results(trial_dir)] == [1, 2, 3]

    parent, children = mlflow_runs(mlflow_server.uri, "killed")
    assert parent.info.status == "FINISHED"
    assert sorted(child.data.tags["idarts.trial_id"] for child in children) == sorted(
        record["tune_trial_id"] for record in study
    )
    for child in children:
        assert child.info.status == "FINISHED"
        assert metric_steps(mlflow_server.uri, child.info.run_id) == [1, 2, 3]
        assert metric_steps(mlflow_server.uri, child.info.run_id, "epoch_seconds") == [1, 2, 3]


def test_sweep_joins_two_node_cluster(tmp_path, mlflow_server):
    from ray.cluster_utils import Cluster

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        node_ids = {cluster.head_node.node_id, worker.node_id}
        config = write_sweep(tmp_path / "sweep.yaml", "two_nodes", num_samples=2)

        completed = run_cli(
            sweep_command(
                config,
                "--address",
                cluster.address,
                "--storage-path",
                str(tmp_path / "storage"),
                "--tracking-uri",
                mlflow_server.uri,
            ),
            tmp_path,
        )
    finally:
        cluster.shutdown()

    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "2 node(s)" in completed.stderr
    _, children = mlflow_runs(mlflow_server.uri, "two_nodes")
    assert len(children) == 2
    assert {child.data.tags["idarts.ray_node_id"] for child in children} == node_ids
    for child in children:
        assert child.info.status == "FINISHED"
        assert metric_steps(mlflow_server.uri, child.info.run_id) == [1, 2]
    assert json.loads((tmp_path / "storage" / "two_nodes" / "idarts_sweep.json").read_text())["status"] == "FINISHED"
