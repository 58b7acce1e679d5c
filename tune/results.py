"""A sweep's results as Tune's storage keeps them, and the table of its best trials.

Layout of ``<storage_path>/<name>/`` (the Tune experiment folder):

* ``idarts_sweep.json``: :class:`SweepMetadata` (sweep name, MLflow store, parent run id, status)
* ``sweep.yaml``: the sweep file
* ``optuna_study.json``: one record per Optuna trial (state, value, params, Tune trial id)
* ``<trial name>/params.json``: the trial's full flat ``SearchConfig``
* ``<trial name>/result.json``: Tune's JSON line per reported result
* ``<trial name>/metrics.jsonl``: exactly one JSON line per epoch, written by the trial
* ``<trial name>/artifacts/``: genotype, architecture history and figures of the search

Reading these needs neither Ray nor MLflow.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tune.sweep_config import REPORTED_METRICS

SWEEP_METADATA_FILE = "idarts_sweep.json"
SWEEP_FILE = "sweep.yaml"
STUDY_SUMMARY_FILE = "optuna_study.json"
TUNE_PARAMS_FILE = "params.json"
TUNE_RESULT_FILE = "result.json"
EPOCH_LOG_FILE = "metrics.jsonl"
TUNE_ERROR_FILE = "error.txt"
ARTIFACTS_DIR = "artifacts"

STATUS_FINISHED = "finished"
STATUS_PRUNED = "pruned"
STATUS_FAILED = "failed"
STATUS_UNFINISHED = "unfinished"

MLFLOW_STATUS = {
    STATUS_FINISHED: "FINISHED",
    STATUS_PRUNED: "KILLED",
    STATUS_FAILED: "FAILED",
    STATUS_UNFINISHED: "KILLED",
}
"""MLflow run status of each trial status; an unfinished trial was interrupted with its sweep."""

OPTUNA_STATUS = {
    "COMPLETE": STATUS_FINISHED,
    "PRUNED": STATUS_PRUNED,
    "FAIL": STATUS_FAILED,
    "RUNNING": STATUS_UNFINISHED,
    "WAITING": STATUS_UNFINISHED,
}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that a crash leaves the old or the new file, never half of one."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(temporary, path)


@dataclass
class SweepMetadata:
    """Facts about a sweep that the driver writes next to Tune's files, for ``--resume`` and ``sync-mlflow``."""

    sweep_name: str
    experiment_name: str
    tracking_uri: str
    metric: str
    mode: str
    parent_run_id: str | None = None
    status: str = "RUNNING"
    artifact_location: str | None = None

    @classmethod
    def read(cls, experiment_dir: Path) -> SweepMetadata | None:
        """Read the metadata of a sweep folder; None when the folder has none."""
        path = Path(experiment_dir) / SWEEP_METADATA_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    def write(self, experiment_dir: Path) -> None:
        """Write the metadata into a sweep folder."""
        write_json_atomic(Path(experiment_dir) / SWEEP_METADATA_FILE, asdict(self))


def read_study_summary(experiment_dir: Path) -> list[dict[str, Any]]:
    """Read ``optuna_study.json`` of a sweep folder; empty when there is none."""
    path = Path(experiment_dir) / STUDY_SUMMARY_FILE
    if not path.exists():
        return []
    return json.loads(path.read_text())


def append_epoch_record(trial_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to the trial's ``metrics.jsonl``."""
    with (Path(trial_dir) / EPOCH_LOG_FILE).open("a") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def truncate_epoch_records(trial_dir: Path, last_epoch: int) -> None:
    """Drop the records after ``last_epoch``: a restored trial runs those epochs again."""
    path = Path(trial_dir) / EPOCH_LOG_FILE
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["epoch"] <= last_epoch]
    if len(kept) == len(lines):
        return
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text("".join(line + "\n" for line in kept))
    os.replace(temporary, path)


def read_results(trial_dir: Path) -> list[dict[str, Any]]:
    """Read a trial's results: one per epoch, in epoch order.

    ``metrics.jsonl`` is read when the trial wrote it. Tune's ``result.json``
    is the fallback, and in Ray 2.60 it can be wrong after failures. A
    retried trial replaces the driver's copy with the copy in storage, which
    lacks the results of the last seconds before the failure. A sweep
    restored after its driver died repeats the epochs that followed the last
    experiment checkpoint. For repeated epochs the later line wins.
    """
    path = Path(trial_dir) / EPOCH_LOG_FILE
    if not path.exists():
        path = Path(trial_dir) / TUNE_RESULT_FILE
    if not path.exists():
        return []
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        result = json.loads(line)
        if "epoch" in result:
            by_epoch[int(result["epoch"])] = result
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def trial_status(
    optuna_state: str | None, errored: bool, last_epoch: int, epochs: int
) -> str:
    """Return "finished", "pruned", "failed" or "unfinished" for a trial.

    A trial that ran all its epochs is finished, even when an earlier attempt
    failed. Otherwise an error means failed, and the Optuna state separates a
    trial that ASHA stopped (PRUNED) from one the sweep never completed.
    """
    if last_epoch >= epochs:
        return STATUS_FINISHED
    if errored:
        return STATUS_FAILED
    status = OPTUNA_STATUS.get(optuna_state or "", STATUS_UNFINISHED)
    return STATUS_UNFINISHED if status == STATUS_FINISHED else status


@dataclass
class TrialSummary:
    """One trial of a sweep: its identity, status, swept settings, last score and genotype."""

    trial_id: str
    trial_name: str
    status: str
    config: dict[str, Any]
    epoch: int = 0
    score: float | None = None
    genotype: str = ""
    trial_dir: str = ""
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def rankable(self) -> bool:
        """Whether the trial can be among the best: not failed, with a finite score."""
        return self.status != STATUS_FAILED and self.score is not None and math.isfinite(self.score)


def summarize_trial(
    trial_dir: Path,
    metric: str,
    optuna_states: dict[str, str],
    errored: bool | None = None,
    error: str | None = None,
) -> TrialSummary | None:
    """Summarize a trial folder from its ``params.json`` and ``result.json``; None when it is no trial."""
    trial_dir = Path(trial_dir)
    params_path = trial_dir / TUNE_PARAMS_FILE
    if not params_path.exists():
        return None
    config = json.loads(params_path.read_text())
    results = read_results(trial_dir)
    last = results[-1] if results else {}
    trial_id = str(last.get("trial_id") or _trial_id_from_name(trial_dir.name))
    if errored is None:
        # Tune appends to error.txt at every failure, also the ones a retry recovered from.
        errored = (trial_dir / TUNE_ERROR_FILE).exists() and optuna_states.get(trial_id) in (None, "FAIL")
    status = trial_status(
        optuna_states.get(trial_id), errored, int(last.get("epoch", 0)), int(config.get("epochs", 0))
    )
    score = last.get(metric)
    return TrialSummary(
        trial_id=trial_id,
        trial_name=trial_dir.name,
        status=status,
        config=config,
        epoch=int(last.get("epoch", 0)),
        score=float(score) if isinstance(score, (int, float)) else None,
        genotype=str(last.get("genotype") or ""),
        trial_dir=str(trial_dir),
        error=error,
        metrics={name: last.get(name) for name in REPORTED_METRICS},
    )


def _trial_id_from_name(name: str) -> str:
    """Return the Tune trial id at the end of a trial folder name ``<sweep name>_<trial id>``."""
    return name.rsplit("_", 1)[-1]


def summarize_sweep(experiment_dir: Path, metric: str) -> list[TrialSummary]:
    """Summarize every trial folder of a sweep folder from Tune's files."""
    experiment_dir = Path(experiment_dir)
    states = {
        record["tune_trial_id"]: record["state"]
        for record in read_study_summary(experiment_dir)
        if record.get("tune_trial_id")
    }
    summaries = []
    for trial_dir in sorted(path for path in experiment_dir.iterdir() if path.is_dir()):
        summary = summarize_trial(trial_dir, metric, states)
        if summary is not None:
            summaries.append(summary)
    return summaries


def best_trials(trials: list[TrialSummary], mode: str, count: int = 5) -> list[TrialSummary]:
    """Return up to ``count`` trials by score, finished trials before pruned ones, failed ones never."""
    candidates = [trial for trial in trials if trial.rankable]
    sign = -1.0 if mode == "max" else 1.0
    candidates.sort(key=lambda trial: (trial.status != STATUS_FINISHED, sign * trial.score))
    return candidates[:count]


def format_best_table(
    trials: list[TrialSummary], metric: str, swept: list[str], show_genotype: bool = True
) -> str:
    """Return a plain-text table of trials: rank, name, status, swept settings, epoch, score, genotype."""
    header = ["rank", "trial", "status", *swept, "epoch", metric]
    rows = []
    for rank, trial in enumerate(trials, start=1):
        values = [_format_value(trial.config.get(name)) for name in swept]
        rows.append([str(rank), trial.trial_name, trial.status, *values, str(trial.epoch), f"{trial.score:.3f}"])
    widths = [max(len(row[index]) for row in [header, *rows]) for index in range(len(header))]

    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    for trial, row in zip(trials, rows):
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if show_genotype:
            lines.append(f"    genotype: {trial.genotype or '(none reported)'}")
    return "\n".join(lines)


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
