"""Shared pieces of the tune tests: a real MLflow server, a Ray session, tiny sweeps, fault injection.

The trainables here subclass the real ``SearchTrainable`` and change one
thing each (raise once, report a NaN, score by start order, report the
genotype late). Ray ships them to its workers by value, because this module
is not importable there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tune.sweep_config import SweepConfig
from tune.trainable import SearchTrainable

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MLFLOW_BIN = Path(sys.executable).with_name("mlflow")
SERVER_START_TIMEOUT_S = 90.0

TINY_SEARCH: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "subset": 200,
    "layers": 3,
    "init_channels": 4,
    "partial_k": 2,
    "batch_size": 16,
    "epochs": 2,
    "warmup_epochs": 1,
    "device": "cpu",
}
"""A search whose epoch takes a few seconds on one CPU core: 100 weight and 100 architecture images."""

QUIET_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}

requires_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason=f"Fashion-MNIST is not installed in {FASHION_MNIST_DIR}",
)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """An ``mlflow server`` subprocess with an SQLite store, bound to 127.0.0.1."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until ``/health`` returns HTTP 200."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            str(MLFLOW_BIN),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.directory / 'mlflow.db'}",
            "--default-artifact-root",
            (self.directory / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log = open(self.directory / "server.log", "ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **QUIET_ENVIRONMENT},
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self.process.returncode}; "
                    f"log: {(self.directory / 'server.log').read_text()[-2000:]}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not respond on {self.uri} within {SERVER_START_TIMEOUT_S} s")

    def healthy(self) -> bool:
        """Return whether ``/health`` returns HTTP 200."""
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and the workers it started (its whole process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None


@contextlib.contextmanager
def running_mlflow_server(directory: Path, port: int | None = None) -> Iterator[MlflowServer]:
    """Run an MLflow server for the duration of a ``with`` block."""
    server = MlflowServer(directory, port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server shared by the tests of one module."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    """A local Ray session with 2 CPUs shared by the tests of one module."""
    import ray

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def tiny_sweep(storage: Path, name: str, tracking_uri: str | None = None, **settings: Any) -> SweepConfig:
    """Return a sweep of tiny Fashion-MNIST searches; ``settings`` override top-level keys.

    ``search`` in ``settings`` updates :data:`TINY_SEARCH` instead of replacing it.
    """
    data: dict[str, Any] = {
        "name": name,
        "search": {**TINY_SEARCH, **settings.pop("search", {})},
        "space": {"threshold": {"type": "float", "low": 0.3, "high": 0.9}},
        "num_samples": 2,
        "max_concurrent": 2,
        "max_failures": 0,
        "storage_path": str(storage),
        "mlflow": {"tracking_uri": tracking_uri},
    }
    data.update(settings)
    return SweepConfig.from_dict(data)


def claim_once(directory: Path, name: str) -> bool:
    """Return True for exactly one caller across processes: the one that creates ``directory/name``."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(directory / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(descriptor)
    return True


class FailOnceTrainable(SearchTrainable):
    """Raises once, before its second epoch, then behaves like ``SearchTrainable``.

    Each actor appends the epoch it starts from to ``starts.jsonl`` in the
    trial folder, so a test can see where the retried trial resumed.
    """

    FAIL_BEFORE_EPOCH = 2

    def search_epoch(self) -> dict[str, Any]:
        starts = self.trial_storage_dir / "starts.jsonl"
        if not getattr(self, "_start_recorded", False):
            with starts.open("a") as handle:
                handle.write(json.dumps({"next_epoch": self.searcher.epoch + 1}) + "\n")
            self._start_recorded = True
        if self.searcher.epoch + 1 == self.FAIL_BEFORE_EPOCH and claim_once(self.trial_storage_dir, "failed_once"):
            raise RuntimeError("injected failure before epoch 2")
        return super().search_epoch()


class NanMetricTrainable(SearchTrainable):
    """Reports ``valid_acc = NaN`` at epoch 2 in the first trial that gets there."""

    def search_epoch(self) -> dict[str, Any]:
        metrics = super().search_epoch()
        claims = self.trial_storage_dir.parent / "claims"
        if metrics["epoch"] == 2 and (
            (claims / self.trial_id).exists() or claim_once(claims, "nan")
        ):
            (claims / self.trial_id).touch()
            metrics["valid_acc"] = math.nan
        return metrics


class ScoreByOrderTrainable(SearchTrainable):
    """Reports ``valid_acc = 90 - 10 * k`` for the k-th trial to start, so ASHA's choice is known."""

    def search_epoch(self) -> dict[str, Any]:
        metrics = super().search_epoch()
        order_file = self.trial_storage_dir / "order"
        if not order_file.exists():
            claims = self.trial_storage_dir.parent / "order_claims"
            order = 0
            while not claim_once(claims, str(order)):
                order += 1
            order_file.write_text(str(order))
        metrics["valid_acc"] = 90.0 - 10.0 * int(order_file.read_text())
        return metrics


class LateGenotypeTrainable(SearchTrainable):
    """Leaves ``genotype`` out of the results of the warm-up epochs."""

    def search_epoch(self) -> dict[str, Any]:
        metrics = super().search_epoch()
        if metrics["epoch"] <= self.search_config.warmup_epochs:
            del metrics["genotype"]
        return metrics


def _register_by_value() -> None:
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_register_by_value()


def mlflow_runs(tracking_uri: str, experiment_name: str) -> tuple[Any, list[Any]]:
    """Return the (parent run, child runs) of a sweep's experiment, asserting there is one parent."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    assert experiment is not None, f"no MLflow experiment {experiment_name!r}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [run for run in runs if run.data.tags.get("idarts.run_type") == "sweep"]
    children = [run for run in runs if run.data.tags.get("idarts.run_type") == "trial"]
    assert len(parents) == 1, f"expected 1 parent run, found {[run.info.run_name for run in parents]}"
    return parents[0], children


def metric_steps(tracking_uri: str, run_id: str, key: str = "valid_acc") -> list[int]:
    """Return the steps of every logged value of ``key``, duplicates kept, in order."""
    from mlflow import MlflowClient

    history = MlflowClient(tracking_uri).get_metric_history(run_id, key)
    return sorted(metric.step for metric in history)


def artifact_names(tracking_uri: str, run_id: str) -> set[str]:
    """Return the names of a run's top-level artifacts."""
    from mlflow import MlflowClient

    return {info.path for info in MlflowClient(tracking_uri).list_artifacts(run_id)}


def result_epochs(trial_dir: Path) -> list[int]:
    """Return the ``epoch`` of every line of a trial's ``result.json``, duplicates kept."""
    lines = (Path(trial_dir) / "result.json").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]
