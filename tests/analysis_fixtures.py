"""Shared pieces of the analysis tests: a real MLflow server, hand-made sweeps, a tiny real sweep.

``write_fake_sweep`` writes the same trials twice, as ``idarts sweep`` would:
as MLflow parent and child runs (through the real MLflow client) and as Tune
trial folders. ``run_tiny_sweep`` runs the real pipeline (``idarts sweep``
in a subprocess, local Ray, the MLflow server) on 200 Fashion-MNIST images.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from idarts.config import SearchConfig
from idarts.genotypes import Genotype
from idarts.search_space import NUM_EDGES, PRIMITIVES

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SERVER_START_TIMEOUT_S = 90.0
SWEEP_TIMEOUT_S = 420.0

QUIET_ENVIRONMENT = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DEDUP_LOGS": "0",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
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
    """An ``mlflow server`` subprocess with an SQLite store and proxied artifacts, bound to 127.0.0.1."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server and wait until ``/health`` responds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.directory / 'mlflow.db'}",
            "--artifacts-destination",
            (self.directory / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        log_path = self.directory / "server.log"
        with open(log_path, "ab") as log:
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
                    f"mlflow server exited with {self.process.returncode}; log: {log_path.read_text()[-2000:]}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not respond on {self.uri} within {SERVER_START_TIMEOUT_S} s")

    def healthy(self) -> bool:
        """Whether the server responds to ``/health``."""
        try:
            with urllib.request.urlopen(self.uri + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server and its workers (its whole process group)."""
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
def running_mlflow_server(directory: Path) -> Iterator[MlflowServer]:
    """Run an MLflow server for the duration of a ``with`` block."""
    server = MlflowServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------
# Hand-made sweeps, written the way ``idarts sweep`` writes them


def make_genotype(normal_ops: list[str], reduce_ops: list[str] | None = None) -> Genotype:
    """Build a genotype whose node k takes edges from nodes k-2 and k-1, with the given 8 operations per cell."""
    sources = [0, 1, 1, 2, 2, 3, 3, 4]
    reduce_ops = reduce_ops or normal_ops
    return Genotype(
        normal=list(zip(normal_ops, sources)),
        normal_concat=[2, 3, 4, 5],
        reduce=list(zip(reduce_ops, sources)),
        reduce_concat=[2, 3, 4, 5],
    )


@dataclass
class FakeTrial:
    """One trial of a hand-made sweep: its settings, status, per-epoch metrics and genotype."""

    trial_id: str
    settings: dict[str, Any]
    metrics: list[dict[str, float]]
    genotype: Genotype | None
    status: str = "FINISHED"
    optuna_state: str = "COMPLETE"
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """Return the trial's full flat ``SearchConfig``."""
        return SearchConfig(**self.settings).to_dict()


def fake_metrics(epochs: int, final_acc: float, gated: list[int] | None = None) -> list[dict[str, float]]:
    """Return per-epoch metrics whose valid_acc climbs to ``final_acc`` and whose first epoch is the worst."""
    gated = gated or [0] * epochs
    rows = []
    for epoch in range(1, epochs + 1):
        share = epoch / epochs
        rows.append(
            {
                "train_loss": 2.0 - share,
                "train_acc": final_acc * share + 1.0,
                "valid_loss": 2.2 - share,
                "valid_acc": final_acc * share,
                "lr": 0.1 / epoch,
                "backtracked_edges": float(gated[epoch - 1]),
                "alpha_entropy": 2.0 - 0.1 * epoch,
                "beta_entropy": 1.0 - 0.05 * epoch,
                "skip_connect_count": float(epoch % 2),
                "epoch_seconds": 1.5,
            }
        )
    return rows


def fake_arch_record(config: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Return an ``arch.json`` record with alpha drifting towards sep_conv_3x3 and one gate event per epoch."""
    records = []
    favourite = PRIMITIVES.index("sep_conv_3x3")
    for epoch in range(1, epochs + 1):
        alpha = [[0.1 * epoch if column == favourite else 0.0 for column in range(len(PRIMITIVES))] for _ in range(NUM_EDGES)]
        beta = [0.01 * edge * epoch for edge in range(NUM_EDGES)]
        gates = [1 if edge == epoch % NUM_EDGES else 0 for edge in range(NUM_EDGES)]
        records.append(
            {
                "epoch": epoch,
                "alpha": {"normal": alpha, "reduce": alpha},
                "beta": {"normal": beta, "reduce": beta},
                "psi": None,
                "gate_counts": {"normal": gates, "reduce": [0] * NUM_EDGES},
                "gate_events": [{"step": 3, "cell": "normal", "edges": [epoch % NUM_EDGES]}],
            }
        )
    return {"config": config, "epochs": records}


def _param_text(value: Any) -> str:
    """Format a config value as ``idarts sweep`` logs it as an MLflow param."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, dict)) or value is None or isinstance(value, bool):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return str(value)


def write_fake_sweep(
    trials: list[FakeTrial], sweep: str, storage: Path, tracking_uri: str | None, experiment: str | None = None
) -> Path:
    """Write ``trials`` as Tune trial folders under ``storage/sweep`` and, with a URI, as MLflow runs.

    Returns the Tune experiment folder.
    """
    experiment_dir = Path(storage) / sweep
    experiment_dir.mkdir(parents=True, exist_ok=True)
    study = []
    start = 1_700_000_000.0

    for number, trial in enumerate(trials):
        name = f"{sweep}_{trial.trial_id}"
        trial_dir = experiment_dir / name
        trial_dir.mkdir()
        config = trial.config()
        (trial_dir / "params.json").write_text(json.dumps(config))
        lines = []
        for epoch, metrics in enumerate(trial.metrics, start=1):
            result = {"epoch": epoch, **metrics, "genotype": trial.genotype.to_json() if trial.genotype else ""}
            result.update(
                trial_id=trial.trial_id,
                training_iteration=epoch,
                time_total_s=2.0 * epoch,
                timestamp=int(start + 100 * number + 2 * epoch),
                done=epoch == len(trial.metrics) and trial.status == "FINISHED",
            )
            lines.append(json.dumps(result))
        (trial_dir / "result.json").write_text("\n".join(lines) + ("\n" if lines else ""))
        if trial.status == "FAILED":
            (trial_dir / "error.txt").write_text("RuntimeError: injected\n")
        artifacts = trial_dir / "artifacts"
        artifacts.mkdir()
        (artifacts / "arch.json").write_text(json.dumps(fake_arch_record(config, len(trial.metrics))))
        if trial.genotype:
            (artifacts / "genotype.json").write_text(trial.genotype.to_json(indent=1))
        study.append({"number": number, "tune_trial_id": trial.trial_id, "state": trial.optuna_state, "params": {}})

    (experiment_dir / "optuna_study.json").write_text(json.dumps(study))
    if tracking_uri:
        _log_fake_sweep(trials, sweep, experiment or sweep, tracking_uri, experiment_dir)
    return experiment_dir


def _log_fake_sweep(trials: list[FakeTrial], sweep: str, experiment: str, tracking_uri: str, experiment_dir: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    modes = {trial.settings.get("mode", "idarts") for trial in trials}
    parent = client.create_run(
        experiment_id,
        run_name=sweep,
        tags={
            "idarts.sweep": sweep,
            "idarts.run_type": "sweep",
            "idarts.dataset": "fashion-mnist",
            "idarts.mode": modes.pop() if len(modes) == 1 else "mixed",
            "idarts.git_commit": "0" * 40,
        },
    )
    with tempfile.TemporaryDirectory() as folder:
        sweep_file = Path(folder) / "sweep.yaml"
        sweep_file.write_text(yaml.safe_dump({"name": sweep}))
        client.log_artifact(parent.info.run_id, str(sweep_file))

    for trial in trials:
        name = f"{sweep}_{trial.trial_id}"
        tags = {
            "mlflow.parentRunId": parent.info.run_id,
            "idarts.sweep": sweep,
            "idarts.run_type": "trial",
            "idarts.trial_id": trial.trial_id,
        }
        if trial.genotype:
            tags["idarts.genotype"] = trial.genotype.to_json()
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        params = [Param(key, _param_text(value)) for key, value in trial.config().items()]
        client.log_batch(run.info.run_id, params=params)
        for epoch, metrics in enumerate(trial.metrics, start=1):
            batch = [Metric(key, float(value), 1000 * epoch, epoch) for key, value in metrics.items()]
            client.log_batch(run.info.run_id, metrics=batch)
        client.log_artifact(run.info.run_id, str(experiment_dir / name / "artifacts" / "arch.json"))
        client.set_terminated(run.info.run_id, trial.status)
    client.set_terminated(parent.info.run_id, "FINISHED")


# ---------------------------------------------------------------------------
# A tiny real sweep


TINY_SWEEP_SEARCH: dict[str, Any] = {
    "dataset": "fashion-mnist",
    "subset": 200,
    "layers": 3,
    "init_channels": 4,
    "partial_k": 4,
    "batch_size": 16,
    "epochs": 2,
    "warmup_epochs": 1,
    "threshold": 0.3,
    "device": "cpu",
}
"""Searches of roughly 10 s each on one idle CPU core (an estimate from one 2-core machine).

Warm-up ends after epoch 1, so epoch 2 trains alpha and beta and can backtrack.
"""

TINY_SWEEP_OPTUNA_SEED = 5
"""With this TPE seed the 4 random start-up trials draw each (mode, seed) combination once (Optuna 5.1)."""


@dataclass
class TinySweep:
    """Location of the tiny real sweep's results: MLflow server, experiment, sweep name and Tune storage."""

    tracking_uri: str
    experiment: str
    sweep: str
    storage_path: Path
    output: str


def run_tiny_sweep(directory: Path, tracking_uri: str, name: str = "analysis_tiny") -> TinySweep:
    """Run a 4-trial sweep (mode idarts/pcdarts x seed 0/1, 2 epochs) with the real ``idarts sweep``."""
    storage = directory / "storage"
    sweep_file = directory / "sweep.yaml"
    sweep_file.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "search": TINY_SWEEP_SEARCH,
                "space": {
                    "mode": {"type": "categorical", "values": ["idarts", "pcdarts"]},
                    "seed": {"type": "categorical", "values": [0, 1]},
                },
                "num_samples": 4,
                "max_concurrent": 2,
                "max_failures": 0,
                "storage_path": str(storage),
                "optuna": {"seed": TINY_SWEEP_OPTUNA_SEED},
                "mlflow": {"tracking_uri": tracking_uri},
            }
        )
    )
    environment = {**os.environ, **QUIET_ENVIRONMENT, "OMP_NUM_THREADS": "1"}
    # A session of its own lets a timeout stop the sweep together with the Ray processes it started.
    process = subprocess.Popen(
        [sys.executable, "-m", "idarts.cli", "sweep", str(sweep_file), "--progress", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment,
        cwd=directory,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise RuntimeError(f"idarts sweep timed out after {SWEEP_TIMEOUT_S} s:\n{output[-4000:]}") from None
    if process.returncode != 0:
        raise RuntimeError(f"idarts sweep exited with {process.returncode}:\n{output[-4000:]}")
    return TinySweep(tracking_uri=tracking_uri, experiment=name, sweep=name, storage_path=storage, output=output)
