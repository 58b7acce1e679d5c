"""``SweepConfig``: the YAML file that describes one sweep, validated before Ray starts.

A sweep file has these top-level keys (only ``name`` is required)::

    name: fashion_mnist_demo        # also the Tune experiment folder and the MLflow experiment
    search: {...}                   # base SearchConfig settings of every trial
    space:                          # swept SearchConfig fields
      threshold: {type: float, low: 0.3, high: 0.9}             # linear scale
      arch_lr: {type: float, low: 1.0e-4, high: 1.0e-3, scale: log}
      seed: {type: int, low: 0, high: 2}                        # both ends included
      partial_k: {type: categorical, values: [2, 4]}
      mode: {type: fixed, value: idarts}
    metric: valid_acc
    mode: max
    num_samples: 8
    max_concurrent: 2
    resources: {cpu: 1, gpu: 0}
    scheduler: {type: asha, grace_period: 3, reduction_factor: 2}
    max_failures: 1
    checkpoint_frequency: 1
    checkpoints_to_keep: 2
    storage_path: ~/idarts_sweeps
    optuna: {seed: 0}
    mlflow: {tracking_uri: null, experiment: null, enabled: true}

This module imports neither Ray nor Optuna nor MLflow, so a bad file is
rejected before any of them starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from idarts.config import ConfigError, SearchConfig, field_names, read_yaml_mapping
from idarts.search import SEARCH_METRICS

REPORTED_METRICS: tuple[str, ...] = tuple(name for name in SEARCH_METRICS if name != "epoch")
"""Numeric metrics of every epoch, in Tune's ``result.json`` and in MLflow (``step = epoch``)."""

PARAMETER_TYPES = ("float", "int", "categorical", "fixed")
SCALES = ("linear", "log")
SCHEDULER_TYPES = ("asha",)
METRIC_MODES = ("max", "min")
SWEEP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

MAX_PROBED_COMBINATIONS = 5000
"""Above this many combinations of probe values, swept parameters are checked one at a time."""

MAX_PROBED_INTEGERS = 64
"""Integer ranges up to this size are checked value by value; larger ones only at their ends."""


class SweepConfigError(ConfigError):
    """A sweep file is invalid; the message names the key, the value and the fix."""


def _fail(key: str, value: Any, fix: str) -> typing.NoReturn:
    raise SweepConfigError(f"invalid sweep setting {key}={value!r}: {fix}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(key: str, data: Any, known: typing.Iterable[str]) -> dict[str, Any]:
    """Return ``data`` as a mapping, rejecting anything else and unknown keys."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(key, data, f"use a mapping with the keys {sorted(known)}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        prefix = f"{key}." if key else ""
        _fail(f"{prefix}{unknown[0]}", data[unknown[0]], f"unknown key; known keys: {sorted(known)}")
    return data


def _search_field_kind(name: str) -> str:
    """Return "int", "float", "str" or "other" for a ``SearchConfig`` field."""
    hint = typing.get_type_hints(SearchConfig)[name]
    if typing.get_origin(hint) is typing.Literal:
        return "str"
    arguments = [argument for argument in typing.get_args(hint) if argument is not type(None)]
    base = arguments[0] if typing.get_origin(hint) is not tuple and arguments else hint
    if base is bool:
        return "other"
    if base is int:
        return "int"
    if base is float:
        return "float"
    if base is str:
        return "str"
    return "other"


@dataclass(frozen=True)
class ParameterSpace:
    """The distribution of one swept ``SearchConfig`` field.

    ``float`` and ``int`` draw from ``[low, high]`` (both ends included) on a
    linear or log ``scale``; ``categorical`` draws from ``values``; ``fixed``
    always gives ``value``.
    """

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    scale: str = "linear"
    values: tuple[Any, ...] = ()
    value: Any = None

    @classmethod
    def from_dict(cls, name: str, data: Any) -> ParameterSpace:
        """Build and validate the space of field ``name`` from its YAML mapping."""
        key = f"space.{name}"
        if name not in field_names():
            _fail(key, data, f"unknown search setting; known settings: {sorted(field_names())}")
        if not isinstance(data, dict) or "type" not in data:
            _fail(
                key,
                data,
                "use a mapping with a type: {type: float, low: .., high: ..}, "
                "{type: int, low: .., high: ..}, {type: categorical, values: [..]} "
                "or {type: fixed, value: ..}",
            )
        kind = data["type"]
        if kind not in PARAMETER_TYPES:
            _fail(f"{key}.type", kind, f"use one of {list(PARAMETER_TYPES)}")

        if kind in ("float", "int"):
            _check_keys(key, data, ("type", "low", "high", "scale"))
            space = cls._range(name, key, kind, data)
        elif kind == "categorical":
            _check_keys(key, data, ("type", "values"))
            space = cls._categorical(name, key, data.get("values"))
        else:
            _check_keys(key, data, ("type", "value"))
            if "value" not in data:
                _fail(f"{key}.value", None, "a fixed parameter needs a value")
            space = cls(name=name, type="fixed", value=data["value"])

        space._check_field_type(key)
        return space

    @classmethod
    def _range(cls, name: str, key: str, kind: str, data: dict[str, Any]) -> ParameterSpace:
        low, high = data.get("low"), data.get("high")
        scale = data.get("scale", "linear")
        check = _is_int if kind == "int" else _is_number
        for bound_name, bound in (("low", low), ("high", high)):
            if not check(bound) or not math.isfinite(bound):
                _fail(f"{key}.{bound_name}", bound, f"a {kind} range needs a finite {kind} {bound_name}")
        if scale not in SCALES:
            _fail(f"{key}.scale", scale, f"use one of {list(SCALES)}")
        if kind == "float" and not low < high:
            _fail(f"{key}.high", high, f"use a value above low={low}, or type: fixed for one value")
        if kind == "int" and not low <= high:
            _fail(f"{key}.high", high, f"use a value of at least low={low}")
        if scale == "log" and low <= 0:
            _fail(f"{key}.low", low, "a log scale needs a positive low")
        return cls(name=name, type=kind, low=low, high=high, scale=scale)

    @classmethod
    def _categorical(cls, name: str, key: str, values: Any) -> ParameterSpace:
        if not isinstance(values, list) or not values:
            _fail(f"{key}.values", values, "use a non-empty list of values")
        for value in values:
            # Optuna's CategoricalDistribution accepts only these choice types.
            if value is not None and not isinstance(value, (bool, int, float, str)):
                _fail(
                    f"{key}.values",
                    values,
                    f"the choice {value!r} is not None, a bool, a number or a string, "
                    "which Optuna requires of categorical choices",
                )
        if len(set(map(repr, values))) != len(values):
            _fail(f"{key}.values", values, "remove the repeated values")
        return cls(name=name, type="categorical", values=tuple(values))

    def _check_field_type(self, key: str) -> None:
        kind = _search_field_kind(self.name)
        if kind == "int" and self.type == "float":
            _fail(f"{key}.type", self.type, f"{self.name} is an integer setting; use type: int")
        if kind == "str" and self.type in ("float", "int"):
            _fail(f"{key}.type", self.type, f"{self.name} is a text setting; use type: categorical")
        if kind == "other" and self.type != "fixed":
            _fail(f"{key}.type", self.type, f"{self.name} cannot be swept; use type: fixed or set it under search")

    @property
    def is_swept(self) -> bool:
        """Whether trials can get different values (a one-value categorical is not swept)."""
        return self.type in ("float", "int") or (self.type == "categorical" and len(self.values) > 1)

    def probe_values(self) -> list[Any]:
        """Return the values that validation tries: ends of ranges, every choice, the fixed value."""
        if self.type == "fixed":
            return [self.value]
        if self.type == "categorical":
            return list(self.values)
        if self.type == "int" and self.high - self.low < MAX_PROBED_INTEGERS:
            return list(range(self.low, self.high + 1))
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Return whether ``value`` can be drawn from this space."""
        if self.type == "fixed":
            return value == self.value
        if self.type == "categorical":
            return any(value == choice and type(value) is type(choice) for choice in self.values)
        check = _is_int if self.type == "int" else _is_number
        return check(value) and self.low <= value <= self.high

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML mapping this space was read from."""
        if self.type == "fixed":
            return {"type": "fixed", "value": self.value}
        if self.type == "categorical":
            return {"type": "categorical", "values": list(self.values)}
        return {"type": self.type, "low": self.low, "high": self.high, "scale": self.scale}


@dataclass(frozen=True)
class ResourcesConfig:
    """Resources of one trial: CPUs and GPUs (a GPU fraction below 1 shares a GPU)."""

    cpu: float = 1
    gpu: float = 0

    @classmethod
    def from_dict(cls, data: Any) -> ResourcesConfig:
        """Build and validate the ``resources`` mapping."""
        data = _check_keys("resources", data, ("cpu", "gpu"))
        resources = cls(**data)
        if not _is_number(resources.cpu) or not resources.cpu > 0:
            _fail("resources.cpu", resources.cpu, "use a positive number of CPUs")
        if not _is_number(resources.gpu) or resources.gpu < 0:
            _fail("resources.gpu", resources.gpu, "use 0 or a positive number of GPUs")
        if resources.gpu > 1 and resources.gpu != int(resources.gpu):
            _fail("resources.gpu", resources.gpu, "Ray shares GPUs only below 1; use a fraction or a whole number")
        return resources

    def to_ray(self) -> dict[str, float]:
        """Return the resource request for ``ray.tune.with_resources``."""
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True)
class SchedulerConfig:
    """An ASHA scheduler that stops poor trials early.

    ``grace_period`` is the number of epochs every trial runs before it can be
    stopped. It must exceed ``warmup_epochs`` because alpha and beta do not
    move during the warm-up, so the scores until then carry no information
    about the architecture. ``max_t`` defaults to ``epochs``.
    """

    type: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 3
    max_t: int | None = None

    @classmethod
    def from_dict(cls, data: Any) -> SchedulerConfig | None:
        """Build the ``scheduler`` mapping; None or an absent key means no scheduler."""
        if data is None:
            return None
        data = _check_keys("scheduler", data, ("type", "grace_period", "reduction_factor", "max_t"))
        scheduler = cls(**data)
        if scheduler.type not in SCHEDULER_TYPES:
            _fail("scheduler.type", scheduler.type, f"use one of {list(SCHEDULER_TYPES)}")
        if not _is_int(scheduler.grace_period) or scheduler.grace_period < 1:
            _fail("scheduler.grace_period", scheduler.grace_period, "use a positive number of epochs")
        if not _is_number(scheduler.reduction_factor) or scheduler.reduction_factor <= 1:
            _fail("scheduler.reduction_factor", scheduler.reduction_factor, "use a number above 1")
        if scheduler.max_t is not None and (not _is_int(scheduler.max_t) or scheduler.max_t < 1):
            _fail("scheduler.max_t", scheduler.max_t, "use a positive number of epochs, or null for epochs")
        return scheduler


@dataclass(frozen=True)
class OptunaConfig:
    """Settings of Optuna's TPE sampler: its seed and its number of random start-up trials."""

    seed: int = 0
    n_startup_trials: int = 10

    @classmethod
    def from_dict(cls, data: Any) -> OptunaConfig:
        """Build and validate the ``optuna`` mapping."""
        data = _check_keys("optuna", data, ("seed", "n_startup_trials"))
        optuna = cls(**data)
        if not _is_int(optuna.seed) or optuna.seed < 0:
            _fail("optuna.seed", optuna.seed, "use 0 or a positive integer")
        if not _is_int(optuna.n_startup_trials) or optuna.n_startup_trials < 0:
            _fail("optuna.n_startup_trials", optuna.n_startup_trials, "use 0 or a positive integer")
        return optuna


@dataclass(frozen=True)
class MlflowConfig:
    """MLflow settings of a sweep.

    ``tracking_uri`` None means an SQLite file ``mlflow.db`` in the storage
    path; ``experiment`` None means the sweep name.
    """

    tracking_uri: str | None = None
    experiment: str | None = None
    enabled: bool = True

    @classmethod
    def from_dict(cls, data: Any) -> MlflowConfig:
        """Build and validate the ``mlflow`` mapping."""
        data = _check_keys("mlflow", data, ("tracking_uri", "experiment", "enabled"))
        mlflow = cls(**data)
        for name in ("tracking_uri", "experiment"):
            value = getattr(mlflow, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                _fail(f"mlflow.{name}", value, "use a non-empty string, or null for the default")
        if not isinstance(mlflow.enabled, bool):
            _fail("mlflow.enabled", mlflow.enabled, "use true or false")
        if mlflow.tracking_uri is not None and mlflow.tracking_uri.startswith("file:"):
            _fail(
                "mlflow.tracking_uri",
                mlflow.tracking_uri,
                "MLflow's file store is in maintenance mode; use sqlite:///PATH or http://HOST:PORT",
            )
        return mlflow


@dataclass
class SweepConfig:
    """One sweep: the base search settings, the swept space, and how Ray Tune runs the trials."""

    name: str
    search: dict[str, Any] = field(default_factory=dict)
    """Base ``SearchConfig`` settings; fields not given keep the ``SearchConfig`` defaults."""
    space: dict[str, ParameterSpace] = field(default_factory=dict)
    metric: str = "valid_acc"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: int | None = None
    """Trials that run at once; None lets Ray run as many as the resources allow."""
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    scheduler: SchedulerConfig | None = None
    max_failures: int = 1
    """Times a failed trial restarts from its last checkpoint; -1 retries without limit."""
    checkpoint_frequency: int = 1
    """Epochs between trial checkpoints; 0 keeps only the checkpoint at the end."""
    checkpoints_to_keep: int | None = 2
    storage_path: str = "~/idarts_sweeps"
    optuna: OptunaConfig = field(default_factory=OptunaConfig)
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    """Trial settings that run first, in order, before Optuna proposes its own (one value per sampled field)."""
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    source_text: str | None = field(default=None, repr=False, compare=False)
    """The YAML text the config was read from, logged as the sweep's ``sweep.yaml``."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: Any, source_text: str | None = None) -> SweepConfig:
        """Build a sweep from its YAML mapping; raises ``SweepConfigError`` naming the bad key."""
        known = [item.name for item in dataclasses.fields(cls) if item.name != "source_text"]
        data = _check_keys("", data, known)
        if "name" not in data:
            _fail("name", None, "every sweep needs a name")
        settings = dict(data)
        settings["search"] = _check_keys("search", data.get("search"), field_names())
        space = _check_keys("space", data.get("space"), field_names())
        settings["space"] = {name: ParameterSpace.from_dict(name, spec) for name, spec in space.items()}
        settings["resources"] = ResourcesConfig.from_dict(data.get("resources"))
        settings["scheduler"] = SchedulerConfig.from_dict(data.get("scheduler"))
        settings["optuna"] = OptunaConfig.from_dict(data.get("optuna"))
        settings["mlflow"] = MlflowConfig.from_dict(data.get("mlflow"))
        return cls(**settings, source_text=source_text)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        """Read and validate a sweep file."""
        data = read_yaml_mapping(path)
        return cls.from_dict(data, source_text=Path(path).read_text())

    def to_dict(self) -> dict[str, Any]:
        """Return the YAML mapping of this sweep (defaults included)."""
        data = {
            "name": self.name,
            "search": dict(self.search),
            "space": {name: space.to_dict() for name, space in self.space.items()},
        }
        for item in dataclasses.fields(self):
            if item.name in data or item.name == "source_text":
                continue
            value = getattr(self, item.name)
            data[item.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
        return data

    def to_yaml_text(self) -> str:
        """Return the sweep file's text: the original text when read from a file."""
        if self.source_text is not None:
            return self.source_text
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def validate(self) -> None:
        """Check every key; raise ``SweepConfigError`` on the first invalid one."""
        if not isinstance(self.name, str) or not SWEEP_NAME_PATTERN.match(self.name):
            _fail("name", self.name, "use letters, digits, '.', '_' and '-', starting with a letter or digit")
        self._validate_objective()
        self._validate_counts()
        self._validate_space()
        self._validate_points()
        self._validate_scheduler()
        self._validate_device()
        if not isinstance(self.storage_path, str) or not self.storage_path.strip():
            _fail("storage_path", self.storage_path, "use a folder path (shared by all nodes on a cluster)")

    def _validate_objective(self) -> None:
        if self.metric not in REPORTED_METRICS:
            _fail("metric", self.metric, f"use one of the reported metrics {list(REPORTED_METRICS)}")
        if self.mode not in METRIC_MODES:
            _fail("mode", self.mode, f"use one of {list(METRIC_MODES)} (the search mode goes under search.mode)")

    def _validate_counts(self) -> None:
        if not _is_int(self.num_samples) or self.num_samples < 1:
            _fail("num_samples", self.num_samples, "use a positive number of trials")
        if self.max_concurrent is not None and (not _is_int(self.max_concurrent) or self.max_concurrent < 1):
            _fail("max_concurrent", self.max_concurrent, "use a positive number, or null for no limit")
        if not _is_int(self.max_failures) or self.max_failures < -1:
            _fail("max_failures", self.max_failures, "use 0 or more retries, or -1 for no limit")
        if not _is_int(self.checkpoint_frequency) or self.checkpoint_frequency < 0:
            _fail("checkpoint_frequency", self.checkpoint_frequency, "use 0 (only at the end) or a number of epochs")
        keep = self.checkpoints_to_keep
        if keep is not None and (not _is_int(keep) or keep < 1):
            _fail("checkpoints_to_keep", keep, "use a positive number, or null to keep all")

    def base_search_config(self) -> SearchConfig:
        """Return the ``SearchConfig`` of the ``search`` settings with the first value of each swept field.

        Swept fields take their first probe value because the ``SearchConfig``
        defaults of those fields may not fit the other settings (the default
        ``warmup_epochs=15`` with ``epochs: 10``, for example).
        """
        first = {name: space.probe_values()[0] for name, space in self.space.items()}
        return self._trial_config(first)

    def _trial_config(self, combination: dict[str, Any]) -> SearchConfig:
        """Return the ``SearchConfig`` of a trial that gets the swept values ``combination``."""
        try:
            return SearchConfig.from_dict({**self.search, **combination})
        except ConfigError as error:
            raise self._blame(combination, str(error)) from None
        except TypeError as error:
            raise self._blame(combination, f"a value has the wrong type: {error}") from None

    def _blame(self, combination: dict[str, Any], reason: str) -> SweepConfigError:
        """Name the ``search`` settings when they fail alone, else the swept combination."""
        try:
            SearchConfig.from_dict(self.search)
            search_alone = None
        except (ConfigError, TypeError) as error:
            search_alone = str(error)
        if not combination or search_alone == reason:
            return SweepConfigError(f"invalid sweep setting under search: {reason}")
        return SweepConfigError(
            f"invalid sweep setting space: trials with {combination} would be invalid: {reason}"
        )

    def _validate_space(self) -> None:
        """Build a ``SearchConfig`` for the probe values of the space, to catch invalid trials early.

        The product of all probe values is checked when it is small enough, so
        dependent fields (``partial_k`` with ``init_channels``, ``warmup_epochs``
        with ``epochs``) are checked together.
        """
        overlap = sorted(set(self.search) & set(self.space))
        if overlap:
            _fail(
                f"space.{overlap[0]}",
                self.space[overlap[0]].to_dict(),
                f"{overlap[0]} is also set under search; keep it in one place",
            )
        names = list(self.space)
        probes = [self.space[name].probe_values() for name in names]
        if math.prod(len(values) for values in probes) <= MAX_PROBED_COMBINATIONS:
            combinations = [dict(zip(names, values)) for values in itertools.product(*probes)]
        else:
            first = {name: values[0] for name, values in zip(names, probes)}
            combinations = [{**first, name: value} for name, values in zip(names, probes) for value in values]
        for combination in combinations:
            self._trial_config(combination)

    @property
    def sampled_names(self) -> list[str]:
        """The swept fields that Optuna samples (all but the fixed ones)."""
        return [name for name, space in self.space.items() if space.type != "fixed"]

    def _validate_points(self) -> None:
        points = self.points_to_evaluate
        if not isinstance(points, list):
            _fail("points_to_evaluate", points, "use a list of mappings from swept fields to values")
        names = set(self.sampled_names)
        for index, point in enumerate(points):
            key = f"points_to_evaluate[{index}]"
            if not isinstance(point, dict) or set(point) != names:
                _fail(key, point, f"give exactly one value for each sampled field {sorted(names)}")
            for name, value in point.items():
                if not self.space[name].contains(value):
                    _fail(f"{key}.{name}", value, f"use a value of space.{name}={self.space[name].to_dict()}")
            fixed = {name: space.value for name, space in self.space.items() if space.type == "fixed"}
            self._trial_config({**fixed, **point})
        if len(points) > self.num_samples:
            _fail(
                "num_samples",
                self.num_samples,
                f"use at least the {len(points)} trials listed in points_to_evaluate",
            )

    def value_range(self, name: str) -> list[Any]:
        """Return every value a setting can take: its probe values when swept, else the base value."""
        if name in self.space:
            return self.space[name].probe_values()
        return [getattr(self.base_search_config(), name)]

    def _validate_scheduler(self) -> None:
        if self.scheduler is None:
            return
        warmup = max(self.value_range("warmup_epochs"))
        epochs = max(self.value_range("epochs"))
        if self.scheduler.grace_period <= warmup:
            _fail(
                "scheduler.grace_period",
                self.scheduler.grace_period,
                f"use more than warmup_epochs={warmup}: alpha and beta do not move during the "
                "warm-up, so ASHA would stop trials on scores that say nothing about the architecture",
            )
        max_t = self.scheduler.max_t or epochs
        if self.scheduler.grace_period > max_t:
            _fail(
                "scheduler.grace_period",
                self.scheduler.grace_period,
                f"use at most max_t={max_t} epochs",
            )
        if self.scheduler.max_t is not None and self.scheduler.max_t > epochs:
            _fail("scheduler.max_t", self.scheduler.max_t, f"use at most epochs={epochs}")

    def _validate_device(self) -> None:
        devices = self.value_range("device")
        if self.resources.gpu == 0 and any(str(device).startswith("cuda") for device in devices):
            _fail(
                "resources.gpu",
                self.resources.gpu,
                f"search.device={devices[0]!r} needs a GPU per trial; set resources.gpu "
                '(a fraction shares a GPU) or use device "auto" or "cpu"',
            )
        if self.resources.gpu > 0 and "cpu" in devices:
            _fail(
                "resources.gpu",
                self.resources.gpu,
                'search.device="cpu" would leave the reserved GPU idle; use device "auto" or set gpu: 0',
            )

    @property
    def experiment_name(self) -> str:
        """The MLflow experiment of the sweep: ``mlflow.experiment``, else the sweep name."""
        return self.mlflow.experiment or self.name

    @property
    def search_mode_tag(self) -> str:
        """The search mode of all trials, or "mixed" when the mode is swept."""
        if "mode" in self.space and self.space["mode"].is_swept:
            return "mixed"
        return str(self.value_range("mode")[0])

    def storage_root(self, override: str | None = None) -> Path:
        """Return the absolute storage path: ``override`` when given, else ``storage_path``."""
        return Path(override or self.storage_path).expanduser().resolve()
