"""``SearchTrainable``: one IDARTS search as a Ray Tune class trainable, one epoch per step.

The trial config is exactly a ``SearchConfig.to_dict()``, so Tune's
``params.json`` is the trial's full search config. Sweep-level settings (the
MLflow tracking settings) come through ``ray.tune.with_parameters``.

Each step reports every metric of ``REPORTED_METRICS`` plus ``epoch`` and
``genotype``, from the first epoch on, so all of them are columns of Tune's
``progress.csv`` (whose columns are fixed by the first result) and of the
result dataframes. A trial checkpoints the searcher state and its MLflow run
id; a restored trial continues the same search and the same run. It also
writes ``metrics.jsonl`` in its storage folder, one line per epoch, cut back
to the checkpoint's epoch on restore, because Tune's ``result.json`` can lose
or repeat epochs after failures.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from ray.tune import Trainable

from idarts.config import SearchConfig
from tune.results import ARTIFACTS_DIR, append_epoch_record, truncate_epoch_records
from tune.sweep_config import REPORTED_METRICS
from tune.tracking import TAG_RAY_NODE_ID, TrackingSettings, TrialRun, flatten_params

logger = logging.getLogger(__name__)

SEARCHER_STATE_FILE = "searcher.pt"
TRIAL_STATE_FILE = "trial.json"
NONFINITE_MARKER_FILE = "nonfinite_error.txt"
"""Written to the trial folder when a metric is NaN or infinite, so retries fail at once."""


class NonFiniteMetricError(RuntimeError):
    """A trial produced a NaN or infinite loss or metric; the trial fails and is not retried usefully."""


def complete_result(metrics: dict[str, Any]) -> dict[str, Any]:
    """Return an epoch's result with every reported key present (None or "" when the searcher gave none)."""
    result = {"epoch": int(metrics["epoch"])}
    for name in REPORTED_METRICS:
        result[name] = metrics.get(name)
    result["genotype"] = metrics.get("genotype") or ""
    return result


def non_finite_metrics(result: dict[str, Any]) -> dict[str, float]:
    """Return the numeric metrics of a result that are NaN or infinite."""
    return {
        name: result[name]
        for name in REPORTED_METRICS
        if isinstance(result.get(name), float) and not math.isfinite(result[name])
    }


class SearchTrainable(Trainable):
    """An IDARTS or PC-DARTS search run by Ray Tune: ``step`` runs one epoch.

    Failure handling: any exception marks the MLflow run FAILED and is
    re-raised, so Tune retries the trial from its last checkpoint up to
    ``max_failures`` times. A NaN or infinite loss or metric raises
    ``NonFiniteMetricError`` and leaves a marker file in the trial folder, so
    retries fail at once instead of re-running the epoch that produced it.
    """

    def setup(
        self,
        config: dict[str, Any],
        tracking: TrackingSettings | None = None,
        experiment_dir: str | None = None,
    ) -> None:
        """Build the searcher of the trial config and prepare (but not yet open) its MLflow run.

        Args:
            tracking: the sweep's MLflow settings; None runs without MLflow.
            experiment_dir: the Tune experiment folder in the sweep's storage
                path, shared by all nodes. The search artifacts go to
                ``<experiment_dir>/<trial name>/artifacts``; without it they go
                to the trial's working folder.
        """
        from idarts.search import Searcher

        if experiment_dir is not None:
            self.trial_storage_dir = Path(experiment_dir) / self.trial_name
        else:
            self.trial_storage_dir = Path(self.logdir)
        self.trial_storage_dir.mkdir(parents=True, exist_ok=True)
        self.search_config = SearchConfig.from_dict(config)
        self._set_torch_threads()
        self.searcher = Searcher(self._runtime_config(self.search_config))

        tracking = tracking or TrackingSettings(
            tracking_uri="", experiment_name="", sweep_name="", storage_root="", enabled=False
        )
        self.run = TrialRun(
            tracking,
            trial_id=self.trial_id,
            trial_name=self.trial_name,
            params=flatten_params(self.search_config.to_dict()),
            extra_tags={TAG_RAY_NODE_ID: _ray_node_id()},
        )
        self._checkpoint_run_id: str | None = None
        self._attached = False
        self._finished = False
        self._failed = False

    def _set_torch_threads(self) -> None:
        resources = self.trial_resources
        cpus = resources.required_resources.get("CPU", 1) if resources is not None else 1
        torch.set_num_threads(max(1, int(cpus)))

    @staticmethod
    def _runtime_config(config: SearchConfig) -> SearchConfig:
        """Return the config the searcher runs: device "auto" becomes "cpu" when Ray gave the trial no GPU.

        Ray 2.60 leaves ``CUDA_VISIBLE_DEVICES`` unset for a trial that reserved
        no GPU, so "auto" would otherwise put it on a GPU that other trials reserved.
        """
        import ray

        if config.device == "auto" and not ray.get_gpu_ids():
            return config.replace(device="cpu")
        return config

    @property
    def marker_path(self) -> Path:
        """The file that records a non-finite metric of this trial."""
        return self.trial_storage_dir / NONFINITE_MARKER_FILE

    def step(self) -> dict[str, Any]:
        """Run one epoch, log it to MLflow, and return the epoch's result."""
        if not self._attached:
            self.run.attach(self._checkpoint_run_id)
            self._attached = True
            truncate_epoch_records(self.trial_storage_dir, self.searcher.epoch)
        if self.marker_path.exists():
            self._failed = True
            self.run.set_status("FAILED")
            raise NonFiniteMetricError(self.marker_path.read_text().strip())

        try:
            result = self._run_epoch()
        except Exception:
            self._failed = True
            self.run.set_status("FAILED")
            raise

        record = {**result, "trial_id": self.trial_id, "timestamp": int(time.time())}
        append_epoch_record(self.trial_storage_dir, record)
        metrics = {name: result[name] for name in REPORTED_METRICS if result[name] is not None}
        self.run.log_epoch(result["epoch"], metrics, result["genotype"] or None)

        if self.searcher.done:
            self._finish("FINISHED")
            result["done"] = True
        return result

    def search_epoch(self) -> dict[str, Any]:
        """Run the searcher's next epoch and return its metrics (tests override this to inject faults)."""
        return self.searcher.run_epoch()

    def _run_epoch(self) -> dict[str, Any]:
        from idarts.search import NonFiniteLossError

        try:
            result = complete_result(self.search_epoch())
        except NonFiniteLossError as error:
            self._fail_non_finite(str(error))

        bad = non_finite_metrics(result)
        if bad:
            self._fail_non_finite(
                f"non-finite metrics {bad} at epoch {result['epoch']}; "
                "lower lr or arch_lr, or raise grad_clip"
            )
        return result

    def _fail_non_finite(self, detail: str) -> None:
        message = f"trial {self.trial_name} stopped: {detail}"
        self.marker_path.write_text(message + "\n")
        raise NonFiniteMetricError(message)

    def _finish(self, status: str) -> None:
        """Write the search artifacts, upload them, and close the MLflow run with ``status``."""
        from idarts.artifacts import write_search_artifacts

        if self.searcher.epoch > 0:
            paths = write_search_artifacts(self.searcher, self.trial_storage_dir / ARTIFACTS_DIR)
            self.run.log_artifacts(paths)
        self.run.set_status(status)
        self._finished = True

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Save the searcher state and the MLflow run id into ``checkpoint_dir``."""
        directory = Path(checkpoint_dir)
        torch.save(self.searcher.state_dict(), directory / SEARCHER_STATE_FILE)
        state = {"epoch": self.searcher.epoch, "mlflow_run_id": self.run.run_id or self._checkpoint_run_id}
        (directory / TRIAL_STATE_FILE).write_text(json.dumps(state) + "\n")

    def load_checkpoint(self, checkpoint: str | dict[str, Any]) -> None:
        """Restore the searcher state and remember the MLflow run to continue."""
        directory = Path(checkpoint)
        state = torch.load(directory / SEARCHER_STATE_FILE, map_location="cpu", weights_only=False)
        self.searcher.load_state_dict(state)
        trial_state = json.loads((directory / TRIAL_STATE_FILE).read_text())
        self._checkpoint_run_id = trial_state.get("mlflow_run_id")
        logger.info("trial %s restored after epoch %d", self.trial_name, self.searcher.epoch)

    def cleanup(self) -> None:
        """Close the MLflow run as KILLED when Tune stops the trial before its last epoch (ASHA, Ctrl-C)."""
        if self._finished or self._failed or not self._attached:
            return
        try:
            self._finish("KILLED")
        except Exception:  # noqa: BLE001 - cleanup must not mask the reason the trial stopped
            logger.exception("trial %s: writing the artifacts of the stopped search failed", self.trial_name)
            self.run.set_status("KILLED")


def _ray_node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside a Ray worker there is no node id
        return "unknown"
