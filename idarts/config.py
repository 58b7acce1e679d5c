"""``SearchConfig``: every setting of one IDARTS or PC-DARTS search, validated on creation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from idarts.supernet import valid_partial_k

SEARCH_MODES = ("idarts", "pcdarts")
DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagenet")


def _setting(default: Any, help_text: str) -> Any:
    """Declare a config field whose help text the CLI shows."""
    if isinstance(default, (list, dict, tuple)):
        return field(default_factory=lambda: default, metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field, the value and the fix."""


@dataclass
class SearchConfig:
    """Settings of one architecture search.

    The optimisation defaults are those of PC-DARTS on CIFAR-10 (first-order
    updates, 50 epochs with 15 warm-up epochs). The backtracking fields only
    matter in mode ``idarts``.
    """

    # Data
    dataset: str = _setting("fashion-mnist", "dataset name: fashion-mnist, cifar10, cifar100 or imagenet")
    data_dir: str | None = _setting(
        None, "folder with the dataset files; default: the dataset's standard location"
    )
    subset: int | None = _setting(
        None, "number of training images to search on (a stratified subset); default: all"
    )
    train_portion: float = _setting(
        0.5, "fraction of the search images that train the weights; the rest trains alpha and beta"
    )
    batch_size: int = _setting(64, "images per batch, for both the weight and the architecture step")
    num_workers: int = _setting(0, "data-loading worker processes (0 loads in the main process)")

    # Supernet
    layers: int = _setting(8, "number of cells in the supernet")
    init_channels: int = _setting(16, "channels of the first cell (C)")
    partial_k: int = _setting(
        4, "partial-channel ratio K: 1/K of each edge's channels go through the mixed operation"
    )
    stem_multiplier: int = _setting(3, "stem channels as a multiple of init_channels")

    # Schedule
    epochs: int = _setting(50, "number of search epochs")
    warmup_epochs: int = _setting(
        15, "epochs at the start that train only the weights; alpha and beta stay fixed"
    )

    # Weight optimizer: SGD with a cosine learning rate
    lr: float = _setting(0.1, "initial SGD learning rate of the weights")
    lr_min: float = _setting(0.0, "final learning rate of the cosine schedule")
    momentum: float = _setting(0.9, "SGD momentum")
    weight_decay: float = _setting(3e-4, "SGD weight decay")
    grad_clip: float = _setting(5.0, "maximum gradient norm of the weights")

    # Architecture optimizer: Adam on alpha and beta
    arch_lr: float = _setting(6e-4, "Adam learning rate of alpha and beta")
    arch_betas: tuple[float, float] = _setting((0.5, 0.999), "Adam betas of alpha and beta")
    arch_weight_decay: float = _setting(1e-3, "Adam weight decay of alpha and beta")

    # Backtracking
    mode: str = _setting("idarts", "idarts (with alpha backtracking) or pcdarts (without)")
    threshold: float = _setting(
        0.5, "backtracking threshold tau in [0, 1]; larger gates fewer edges, 1 gates none"
    )
    eta_b: float = _setting(0.1, "backtracking step size eta_b (useful range about 0 to 0.5)")
    psi_init: float = _setting(1.0, "initial value of the per-edge backtracking coefficients psi")
    eta_psi: float = _setting(1e-3, "Adam learning rate of psi")

    # Run
    seed: int = _setting(0, "random seed of weights, architecture parameters and data order")
    device: str = _setting("auto", "auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    channels_last: bool | None = _setting(
        None, "channels-last memory format: true, false, or null for on with CPU and off with CUDA"
    )

    def __post_init__(self) -> None:
        self.arch_betas = tuple(float(value) for value in self.arch_betas)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` on the first invalid field."""
        if self.dataset not in DATASET_NAMES:
            _fail("dataset", self.dataset, f"use one of {list(DATASET_NAMES)}")
        if self.mode not in SEARCH_MODES:
            _fail("mode", self.mode, f"use one of {list(SEARCH_MODES)}")
        if self.subset is not None and self.subset < 2:
            _fail("subset", self.subset, "use at least 2 images, or null for the whole set")
        if not 0.0 < self.train_portion < 1.0:
            _fail("train_portion", self.train_portion, "use a fraction strictly between 0 and 1")

        for name in ("batch_size", "layers", "init_channels", "epochs", "stem_multiplier"):
            if getattr(self, name) < 1:
                _fail(name, getattr(self, name), "use a positive integer")
        for name in ("num_workers", "warmup_epochs"):
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "use 0 or a positive integer")
        if self.warmup_epochs > self.epochs:
            _fail(
                "warmup_epochs",
                self.warmup_epochs,
                f"use at most epochs={self.epochs}; with more, alpha and beta never train",
            )

        if self.partial_k not in valid_partial_k(self.init_channels):
            _fail(
                "partial_k",
                self.partial_k,
                f"K must divide init_channels={self.init_channels}; "
                f"valid values: {valid_partial_k(self.init_channels)}",
            )

        for name in ("lr", "arch_lr", "eta_psi"):
            _check_finite(name, getattr(self, name))
            if getattr(self, name) <= 0:
                _fail(name, getattr(self, name), "use a positive learning rate")
        for name in ("lr_min", "weight_decay", "arch_weight_decay", "grad_clip", "momentum"):
            _check_finite(name, getattr(self, name))
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "use 0 or a positive value")
        if self.lr_min > self.lr:
            _fail("lr_min", self.lr_min, f"use at most lr={self.lr}")
        if len(self.arch_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.arch_betas):
            _fail("arch_betas", self.arch_betas, "use two Adam betas in [0, 1)")

        _check_finite("threshold", self.threshold)
        if not 0.0 <= self.threshold <= 1.0:
            _fail("threshold", self.threshold, "use a value in [0, 1]; 1 turns backtracking off")
        for name in ("eta_b", "psi_init"):
            _check_finite(name, getattr(self, name))
            if getattr(self, name) < 0:
                _fail(name, getattr(self, name), "use 0 or a positive value")

        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            _fail("channels_last", self.channels_last, "use true, false, or null for the device's default")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail("device", self.device, 'use "auto", "cpu", "cuda" or "cuda:N"')

    @property
    def backtracking(self) -> bool:
        """Whether the search can change alpha by backtracking at all."""
        return self.mode == "idarts" and self.threshold < 1.0 and self.eta_b > 0.0

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain YAML- and JSON-friendly values."""
        data = dataclasses.asdict(self)
        data["arch_betas"] = list(self.arch_betas)
        return data

    def replace(self, **changes: Any) -> SearchConfig:
        """Return a validated copy with ``changes`` applied."""
        unknown = sorted(set(changes) - field_names())
        if unknown:
            raise ConfigError(f"unknown SearchConfig fields {unknown}; known fields: {sorted(field_names())}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """Build a config from a mapping; unknown keys raise ``ConfigError`` listing the known ones."""
        unknown = sorted(set(data) - field_names())
        if unknown:
            raise ConfigError(
                f"unknown search settings {unknown}; known settings: {sorted(field_names())}"
            )
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchConfig:
        """Load a config from a YAML mapping of field names to values."""
        return cls.from_dict(read_yaml_mapping(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML, readable back with :meth:`from_yaml`."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must contain a mapping, raising ``ConfigError`` otherwise."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a mapping of settings, got {type(data).__name__}")
    return data


def field_names() -> set[str]:
    """Return the names of all ``SearchConfig`` fields."""
    return {item.name for item in fields(SearchConfig)}


def _check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        _fail(name, value, "use a finite number")


def _fail(name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"invalid {name}={value!r}: {fix}")
