"""The two frames that describe a sweep: their columns, dtypes and construction from per-trial records.

* The **runs frame** has one row per trial with its identity, status, every
  ``SearchConfig`` setting with its real dtype, the final and best metrics,
  the final genotype and the times.
* The **history frame** has one row per (trial, epoch, metric), with the swept
  settings repeated on every row so that it can be grouped by configuration
  on its own.

:mod:`analysis.loading` fills :class:`TrialRecord` objects from MLflow or from
Tune's files and builds both frames with :func:`runs_frame` and
:func:`history_frame`, so both sources give the same columns and dtypes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from idarts.config import SearchConfig
from idarts.genotypes import Genotype, GenotypeError
from tune.sweep_config import REPORTED_METRICS

logger = logging.getLogger(__name__)

BEST_METRICS: tuple[str, ...] = ("train_loss", "train_acc", "valid_loss", "valid_acc")
"""Metrics that also get a ``best_<metric>`` column: the maximum of accuracies, the minimum of losses."""

NON_EXPERIMENT_SETTINGS: tuple[str, ...] = ("data_dir", "num_workers", "device")
"""Settings that can differ between machines but do not define an experiment; never counted as swept."""

HISTORY_VALUE_COLUMNS: tuple[str, ...] = ("epoch", "metric", "value")

FINISHED = "FINISHED"
"""MLflow status of a trial that ran all its epochs."""

# ---------------------------------------------------------------------------
# Column names and dtypes


def config_fields() -> tuple[str, ...]:
    """Return the ``SearchConfig`` field names, in declaration order."""
    return tuple(item.name for item in dataclasses.fields(SearchConfig))


def final_metric_column(metric: str) -> str:
    """Return the runs-frame column of a metric's last value.

    It is the metric name itself, except for a metric that shares its name
    with a setting: the ``lr`` metric's last value is ``final_lr``, because
    ``lr`` is the configured initial learning rate.
    """
    return f"final_{metric}" if metric in config_fields() else metric


def higher_is_better(metric: str) -> bool:
    """Return whether larger values of ``metric`` are better: False for losses and times, else True."""
    return not ("loss" in metric or metric.endswith("_seconds"))


def _field_kind(name: str) -> str:
    """Return "int", "float", "bool", "str", "tuple" or "json" for a setting name."""
    hints = typing.get_type_hints(SearchConfig)
    if name not in hints:
        return "json"
    hint = hints[name]
    if typing.get_origin(hint) is tuple:
        return "tuple"
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    base = arguments[0] if arguments else hint
    return {int: "int", float: "float", bool: "bool", str: "str"}.get(base, "json")


def parse_param(name: str, value: Any) -> Any:
    """Convert a setting as MLflow or Tune stores it back to its Python value.

    MLflow params are strings: ``"200"`` becomes 200, ``"null"`` None,
    ``"[0.5, 0.999]"`` the tuple ``(0.5, 0.999)`` and ``"true"`` True,
    following the type of the ``SearchConfig`` field. Tune's ``params.json``
    already has JSON values, which go through the same conversion so that both
    sources give equal values. A name that is no ``SearchConfig`` field is
    parsed as JSON when it can be and kept as text otherwise.

    Raises:
        ValueError: the text does not fit the field's type, e.g. ``layers="x"``.
    """
    kind = _field_kind(name)
    if isinstance(value, str) and value.strip().lower() in ("null", "none"):
        return None
    if value is None:
        return None

    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "bool":
            return value if isinstance(value, bool) else str(value).strip().lower() == "true"
        if kind == "str":
            return str(value)
        if kind == "tuple":
            items = json.loads(value) if isinstance(value, str) else value
            return tuple(items)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"invalid value {value!r} of setting {name!r}: expected {kind} ({error}); "
            "check the params the trial logged"
        ) from None

    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return value
        return tuple(parsed) if isinstance(parsed, list) else parsed
    return tuple(value) if isinstance(value, list) else value


def _typed_column(name: str, values: list[Any]) -> pd.Series:
    """Build a column with the dtype of setting ``name``: nullable ``Int64`` when an int is missing."""
    kind = _field_kind(name)
    if kind == "int":
        has_missing = any(value is None for value in values)
        return pd.Series(values, dtype="Int64" if has_missing else "int64")
    if kind == "float":
        return pd.Series([np.nan if value is None else value for value in values], dtype="float64")
    if kind == "bool" and not any(value is None for value in values):
        return pd.Series(values, dtype="bool")
    return pd.Series(values, dtype="object")


def swept_params(runs: pd.DataFrame) -> list[str]:
    """Return the settings whose values differ between the rows of a runs or history frame.

    These are the settings the sweep varied (a swept setting that happened to
    get one value everywhere is not counted). Machine settings such as
    ``device`` and ``data_dir`` never count.
    """
    names = []
    for name in config_fields():
        if name in NON_EXPERIMENT_SETTINGS or name not in runs.columns:
            continue
        if runs[name].nunique(dropna=False) > 1:
            names.append(name)
    return names


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Return the rows of trials that ran all their epochs (status ``FINISHED``)."""
    if "status" not in runs.columns:
        return runs
    return runs[runs["status"] == FINISHED]


def check_columns(frame: pd.DataFrame, columns: Iterable[str], context: str) -> None:
    """Raise ``ValueError`` naming the missing columns and the available ones."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(
            f"{context}: column(s) {missing} not found; available columns: {list(frame.columns)}"
        )


# ---------------------------------------------------------------------------
# Building frames from per-trial records


@dataclasses.dataclass
class TrialRecord:
    """Everything the loaders read about one trial, before it becomes frame rows.

    ``history`` maps each metric to ``{epoch: value}``; times are UTC
    timestamps or None.
    """

    run_id: str | None
    trial: str
    trial_id: str
    sweep: str
    status: str
    params: dict[str, Any]
    history: dict[str, dict[int, float]]
    genotype_json: str | None
    start_time: pd.Timestamp | None
    end_time: pd.Timestamp | None
    artifact_uri: str | None


def parse_genotype(text: str | None, trial: str) -> Genotype | None:
    """Parse a genotype's JSON text; None (with a warning naming the trial) when missing or invalid."""
    if not text:
        return None
    try:
        return Genotype.from_json(text)
    except GenotypeError as error:
        logger.warning("trial %s: genotype %r is invalid and is left out: %s", trial, text[:200], error)
        return None


def _metric_columns(history: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """Return the final value of every reported metric and the best value of losses and accuracies."""
    columns: dict[str, float] = {}
    for metric in REPORTED_METRICS:
        values = history.get(metric, {})
        columns[final_metric_column(metric)] = float(values[max(values)]) if values else math.nan
    for metric in BEST_METRICS:
        values = [value for value in history.get(metric, {}).values() if math.isfinite(value)]
        if not values:
            best = math.nan
        elif higher_is_better(metric):
            best = max(values)
        else:
            best = min(values)
        columns[f"best_{metric}"] = float(best)
    return columns


def runs_frame(records: Sequence[TrialRecord]) -> pd.DataFrame:
    """Build the runs frame from trial records, one row per trial, sorted by sweep and trial name."""
    records = sorted(records, key=lambda record: (record.sweep, record.trial))
    settings = list(config_fields())
    extra = sorted({name for record in records for name in record.params} - set(settings))

    columns: dict[str, Any] = {
        "run_id": pd.Series([record.run_id for record in records], dtype="object"),
        "trial": pd.Series([record.trial for record in records], dtype="object"),
        "trial_id": pd.Series([record.trial_id for record in records], dtype="object"),
        "sweep": pd.Series([record.sweep for record in records], dtype="object"),
        "status": pd.Series([record.status for record in records], dtype="object"),
    }
    for name in settings + extra:
        columns[name] = _typed_column(name, [record.params.get(name) for record in records])

    epochs = [max((max(values) for values in record.history.values() if values), default=0) for record in records]
    columns["epochs_run"] = pd.Series(epochs, dtype="int64")
    metric_rows = [_metric_columns(record.history) for record in records]
    for name in _metric_columns({}):
        columns[name] = pd.Series([row[name] for row in metric_rows], dtype="float64")

    columns["genotype_json"] = pd.Series([record.genotype_json for record in records], dtype="object")
    columns["genotype"] = pd.Series(
        [parse_genotype(record.genotype_json, record.trial) for record in records], dtype="object"
    )
    start = pd.Series([record.start_time for record in records], dtype="datetime64[ns, UTC]")
    end = pd.Series([record.end_time for record in records], dtype="datetime64[ns, UTC]")
    columns["start_time"] = start
    columns["end_time"] = end
    columns["duration_s"] = (end - start).dt.total_seconds().astype("float64")
    columns["artifact_uri"] = pd.Series([record.artifact_uri for record in records], dtype="object")
    return pd.DataFrame(columns)


def history_frame(records: Sequence[TrialRecord], runs: pd.DataFrame) -> pd.DataFrame:
    """Build the long history frame: one row per (trial, epoch, metric), with the swept settings.

    ``runs`` must be ``runs_frame(records)``, whose rows follow the same order.
    """
    swept = swept_params(runs)
    ordered = sorted(records, key=lambda record: (record.sweep, record.trial))

    columns: dict[str, list[Any]] = {name: [] for name in ["run_id", "trial", *swept, *HISTORY_VALUE_COLUMNS]}
    for record, (_, run) in zip(ordered, runs.iterrows()):
        for metric in sorted(record.history):
            for epoch, value in sorted(record.history[metric].items()):
                columns["run_id"].append(record.run_id)
                columns["trial"].append(record.trial)
                for name in swept:
                    columns[name].append(run[name])
                columns["epoch"].append(int(epoch))
                columns["metric"].append(metric)
                columns["value"].append(float(value))

    frame = pd.DataFrame(
        {
            "run_id": pd.Series(columns["run_id"], dtype="object"),
            "trial": pd.Series(columns["trial"], dtype="object"),
            **{name: pd.Series(columns[name], dtype=runs[name].dtype) for name in swept},
            "epoch": pd.Series(columns["epoch"], dtype="int64"),
            "metric": pd.Series(columns["metric"], dtype="object"),
            "value": pd.Series(columns["value"], dtype="float64"),
        }
    )
    return frame.sort_values(["trial", "epoch", "metric"], kind="stable").reset_index(drop=True)
