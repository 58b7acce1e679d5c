"""Training a genotype from scratch: ``TrainConfig``, the ``Trainer`` loop and ``run_training``.

The loop mirrors :class:`idarts.search.Searcher`: :meth:`Trainer.run_epoch`
runs one epoch and returns its metrics, and :meth:`Trainer.state_dict` taken
between epochs resumes the run exactly. :func:`run_training` adds the run
folder: ``config.yaml``, ``genotype.json``, ``metrics.csv``, ``checkpoint.pt``,
``last.pt``, ``best.pt`` and ``final.json``.

The official test split only feeds the reported metrics. "Best" weights are
chosen by the validation accuracy when ``valid_size`` holds out part of the
training split, otherwise by the lowest training loss.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from idarts.artifacts import append_metrics_row, truncate_metrics
from idarts.complexity import Complexity, measure_complexity
from idarts.config import DATASET_NAMES, ConfigError, read_yaml_mapping
from idarts.datasets import build_train_data, get_spec, load_dataset, stratified_subset, test_transforms
from idarts.genotypes import Genotype, KNOWN_GENOTYPES, load_genotype
from idarts.network import NETWORK_KINDS, EvalNetwork, drop_path_schedule
from idarts.reproducibility import capture_rng_state, resolve_device, restore_rng_state, seed_everything
from idarts.runner import RunFolderError

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LR_SCHEDULES = ("cosine", "linear")

# Settings that depend on the dataset. A TrainConfig field left at None takes
# the value of its dataset here; a value given explicitly always wins.
_CIFAR_DEFAULTS: dict[str, Any] = {
    # The CIFAR-10 evaluation of DARTS (Liu et al., ICLR 2019), kept by PC-DARTS.
    "network": "cifar",
    "init_channels": 36,
    "layers": 20,
    "epochs": 600,
    "batch_size": 96,
    "lr": 0.025,
    "weight_decay": 3e-4,
    "lr_schedule": "cosine",
    "warmup_epochs": 0,
    "cutout": 16,
    "drop_path": 0.3,
    "label_smoothing": 0.0,
}

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": _CIFAR_DEFAULTS,
    "cifar100": _CIFAR_DEFAULTS,
    "imagenet": {
        # The ImageNet evaluation of PC-DARTS (Xu et al., ICLR 2020): batch 1024 on
        # 8 GPUs with lr 0.5 decayed linearly to 0 over 250 epochs, and 5 epochs of
        # linear warm-up when the batch exceeds 256. Drop-path and Cutout are off,
        # label smoothing is 0.1. The network is the DARTS ImageNet one: C 48, 14 cells.
        "network": "imagenet",
        "init_channels": 48,
        "layers": 14,
        "epochs": 250,
        "batch_size": 1024,
        "lr": 0.5,
        "weight_decay": 3e-5,
        "lr_schedule": "linear",
        "warmup_epochs": lambda config: 5 if config.batch_size > 256 else 0,
        "cutout": 0,
        "drop_path": 0.0,
        "label_smoothing": 0.1,
    },
    "fashion-mnist": {
        # A CPU-sized run. C 16 and 8 cells match the default search supernet, giving a
        # 0.33M-parameter, 40M multiply-add network for the PC_DARTS_cifar cell. One step of
        # 96 images took 1.29 s on one shared Xeon thread (channels-last, torch 2.14.1), so an
        # epoch of all 60,000 images takes about 13 minutes and 10 epochs about 2.2 hours on one
        # thread. The DARTS optimizer settings are kept. Cutout is off and drop-path is lowered
        # to 0.1 because a run this short underfits: in the 4-epoch runs of docs/results.md
        # the training accuracy stayed below the validation accuracy.
        "network": "cifar",
        "init_channels": 16,
        "layers": 8,
        "epochs": 10,
        "batch_size": 96,
        "lr": 0.025,
        "weight_decay": 3e-4,
        "lr_schedule": "cosine",
        "warmup_epochs": 0,
        "cutout": 0,
        "drop_path": 0.1,
        "label_smoothing": 0.0,
    },
}
"""Per-dataset values of the TrainConfig fields that default to None.

A value may be a function of the config, called after the fields listed before it are set.
"""


def _setting(default: Any, help_text: str) -> Any:
    """Declare a config field with the help text the CLI shows."""
    return field(default=default, metadata={"help": help_text})


@dataclass
class TrainConfig:
    """Settings of one training run of a genotype from scratch, validated on creation.

    Fields that default to None take their dataset's value from
    :data:`DATASET_DEFAULTS` on creation: the DARTS CIFAR evaluation for
    CIFAR, the PC-DARTS ImageNet evaluation for ImageNet, and a CPU-sized run
    for Fashion-MNIST. After creation every field has a concrete value, so
    :meth:`replace` with another ``dataset`` keeps the other values; build a
    new config to get the other dataset's defaults.
    """

    genotype: str = _setting(
        "", "genotype to train: a genotype.json file, a DARTS Genotype(...) text, or a known name"
    )

    # Data
    dataset: str = _setting("fashion-mnist", "dataset name: fashion-mnist, cifar10, cifar100 or imagenet")
    data_dir: str | None = _setting(None, "folder with the dataset files; default: the dataset's standard location")
    subset: int | None = _setting(
        None, "number of training-split images to use (a stratified subset, validation included); default: all"
    )
    test_subset: int | None = _setting(
        None, "number of test images to evaluate on (a stratified subset); default: the whole test split"
    )
    valid_size: int = _setting(
        0,
        "training images held out (stratified, without augmentation) to choose the best weights; "
        "0 chooses them by the lowest training loss",
    )
    batch_size: int | None = _setting(None, "images per training batch")
    num_workers: int = _setting(0, "data-loading worker processes (0 loads in the main process)")
    cutout: int | None = _setting(None, "side in pixels of the Cutout square; 0 turns Cutout off")

    # Network
    network: str | None = _setting(None, "network style: cifar (small images) or imagenet (224 pixels)")
    init_channels: int | None = _setting(None, "channels of the first cell (C)")
    layers: int | None = _setting(None, "number of cells")
    auxiliary: bool = _setting(True, "train with the auxiliary classifier after the 2/3-depth reduction cell")
    auxiliary_weight: float = _setting(0.4, "weight of the auxiliary loss")
    drop_path: float | None = _setting(
        None, "final drop-path probability; it rises linearly from 0 over the epochs"
    )

    # Optimization (SGD with momentum)
    epochs: int | None = _setting(None, "number of training epochs")
    lr: float | None = _setting(None, "peak learning rate")
    lr_min: float = _setting(0.0, "learning rate reached at the end of the schedule")
    lr_schedule: str | None = _setting(None, "learning-rate decay after the warm-up: cosine or linear")
    warmup_epochs: int | None = _setting(
        None, "epochs of linear learning-rate warm-up from lr/warmup_epochs to lr"
    )
    momentum: float = _setting(0.9, "SGD momentum")
    weight_decay: float | None = _setting(None, "L2 weight decay")
    grad_clip: float = _setting(5.0, "maximum gradient norm; 0 turns clipping off")
    label_smoothing: float | None = _setting(None, "label smoothing of the training loss, in [0, 1)")

    # Evaluation and run
    test_every_epoch: bool = _setting(
        False, "also evaluate on the test split after every epoch (it never drives any choice)"
    )
    seed: int = _setting(0, "seed of every random generator")
    device: str = _setting("auto", '"auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N"')
    amp: bool = _setting(False, "bfloat16 autocast for the forward pass (meant for CUDA)")
    channels_last: bool | None = _setting(
        None, "channels-last memory format for the network and its inputs; default: on for CPU, off for CUDA"
    )

    def __post_init__(self) -> None:
        if self.dataset in DATASET_DEFAULTS:
            for name, value in DATASET_DEFAULTS[self.dataset].items():
                if getattr(self, name) is None:
                    setattr(self, name, value(self) if callable(value) else value)
        self.validate()

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid field, its value and the fix."""
        if not isinstance(self.genotype, str) or not self.genotype.strip():
            _fail("genotype", self.genotype, "give a genotype.json path, a Genotype(...) text or a known name")
        if self.dataset not in DATASET_NAMES:
            _fail("dataset", self.dataset, f"use one of {list(DATASET_NAMES)}")
        if self.network not in NETWORK_KINDS:
            _fail("network", self.network, f"use one of {list(NETWORK_KINDS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            _fail("lr_schedule", self.lr_schedule, f"use one of {list(LR_SCHEDULES)}")

        for name in ("batch_size", "layers", "epochs"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("num_workers", "warmup_epochs", "cutout", "valid_size", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        for name in ("subset", "test_subset"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.layers < 3:
            _fail("layers", self.layers, "use at least 3 so that both reduction cells exist")
        _check_int("init_channels", self.init_channels, minimum=2)
        if self.init_channels % 2 != 0:
            _fail("init_channels", self.init_channels, "use an even number: factorized reduce halves it")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs > 0:
            _fail("warmup_epochs", self.warmup_epochs, f"use fewer than epochs={self.epochs}")
        if self.subset is not None and self.valid_size >= self.subset:
            _fail("valid_size", self.valid_size, f"use fewer than subset={self.subset} images")

        for name in ("lr_min", "momentum", "weight_decay", "grad_clip", "auxiliary_weight"):
            _check_float(name, getattr(self, name), minimum=0.0)
        _check_float("lr", self.lr, minimum=0.0)
        if self.lr <= 0:
            _fail("lr", self.lr, "use a positive learning rate")
        if self.lr_min > self.lr:
            _fail("lr_min", self.lr_min, f"use at most lr={self.lr}")
        for name in ("drop_path", "label_smoothing"):
            _check_float(name, getattr(self, name), minimum=0.0)
            if getattr(self, name) >= 1.0:
                _fail(name, getattr(self, name), "use a probability in [0, 1)")

        for name in ("auxiliary", "test_every_epoch", "amp"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "use true or false")
        if self.channels_last is not None and not isinstance(self.channels_last, bool):
            _fail("channels_last", self.channels_last, "use true, false, or null for the device's default")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            _fail("device", self.device, 'use "auto", "cpu", "cuda" or "cuda:N"')

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain YAML- and JSON-friendly values."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """Return a validated copy with ``changes`` applied; unknown names raise ``ConfigError``."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a mapping; unknown keys raise ``ConfigError`` listing the known ones."""
        _check_names(data)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """Load a config from a YAML mapping of field names to values."""
        return cls.from_dict(read_yaml_mapping(path))

    def to_yaml(self, path: str | Path) -> None:
        """Write the config as YAML, readable back with :meth:`from_yaml`."""
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def train_field_names() -> set[str]:
    """Return the names of all ``TrainConfig`` fields."""
    return {item.name for item in fields(TrainConfig)}


def _check_names(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - train_field_names())
    if unknown:
        raise ConfigError(f"unknown training settings {unknown}; known settings: {sorted(train_field_names())}")


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(name, value, "use an integer")
    if value < minimum:
        _fail(name, value, f"use an integer of at least {minimum}")


def _check_float(name: str, value: Any, minimum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(name, value, "use a finite number")
    if value < minimum:
        _fail(name, value, f"use a value of at least {minimum}")


def _fail(name: str, value: Any, fix: str) -> None:
    raise ConfigError(f"invalid {name}={value!r}: {fix}")


# ---------------------------------------------------------------------------
# Schedules


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """Return the learning rate of ``epoch`` (0-based).

    The first ``warmup_epochs`` epochs rise linearly: epoch ``e`` uses
    ``lr * (e + 1) / warmup_epochs``. After that the rate decays from ``lr``
    at epoch 0 towards ``lr_min`` at epoch ``epochs``, by a cosine or a
    straight line, so the last epoch uses slightly more than ``lr_min``.
    """
    if epoch < config.warmup_epochs:
        return config.lr * (epoch + 1) / config.warmup_epochs

    progress = epoch / config.epochs
    if config.lr_schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        factor = 1.0 - progress
    return config.lr_min + (config.lr - config.lr_min) * factor


# ---------------------------------------------------------------------------
# The training loop


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run cannot continue from this state."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(
            f"the training loss is {value} at epoch {epoch}, step {step}; training stopped. "
            "Lower lr or set grad_clip, then start a new run"
        )
        self.epoch = epoch
        self.step = step
        self.value = value


@dataclass
class EvalResult:
    """Mean cross-entropy (nats) and top-1 accuracy (percent) on one split."""

    loss: float
    accuracy: float


class Trainer:
    """One training run of a genotype from scratch, run an epoch at a time.

    Construction seeds every generator from ``config.seed``, loads the data,
    and builds the network and the SGD optimizer. Each :meth:`run_epoch` call
    sets the epoch's learning rate and drop-path probability, trains one pass
    over the training images, and evaluates on the validation split (when
    ``valid_size > 0``) and on the test split (after the last epoch, or every
    epoch with ``test_every_epoch``). Evaluations run on a forked RNG, so
    turning them on or off does not change the training.

    :meth:`state_dict` taken between epochs resumes the run exactly: on CPU
    with ``num_workers=0`` a resumed run is bit-identical to an uninterrupted
    one.
    """

    def __init__(self, config: TrainConfig, show_progress: bool = False) -> None:
        self.config = config
        self.show_progress = show_progress
        self.device = resolve_device(config.device)
        self.genotype: Genotype = load_genotype(config.genotype)
        seed_everything(config.seed)

        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.train_loader, self.valid_loader, self.test_loader = self._build_loaders()
        self.spec = get_spec(config.dataset)

        self.network = EvalNetwork(
            self.genotype,
            num_classes=self.spec.num_classes,
            in_channels=self.spec.in_channels,
            init_channels=config.init_channels,
            layers=config.layers,
            auxiliary=config.auxiliary,
            kind=config.network,
        )
        input_shape = (self.spec.in_channels, self.spec.image_size, self.spec.image_size)
        self.complexity: Complexity = measure_complexity(self.network, input_shape)
        self.network.to(self.device)

        # Measured on CPU with the PC_DARTS_cifar cell, C 16, 8 cells, batch 96, Fashion-MNIST,
        # one thread of an Intel Xeon and torch 2.14.1. A training step took 1.29 s in
        # channels-last, 2.10 s in the default format and 2.38 s with bfloat16 autocast.
        # NOTE: neither option was measured on CUDA; there both stay off unless requested.
        if config.channels_last is None:
            self.channels_last = self.device.type == "cpu"
        else:
            self.channels_last = config.channels_last
        if self.channels_last:
            self.network.to(memory_format=torch.channels_last)

        self.train_criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.eval_criterion = nn.CrossEntropyLoss(reduction="sum")
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )

        self.epoch = 0
        self.train_seconds = 0.0
        self.best_epoch = 0
        self.best_score = -math.inf
        """Larger is better: the validation accuracy, or the negated training loss without validation."""

        if config.amp and self.device.type == "cpu":
            logger.warning("amp=True on CPU: bfloat16 autocast was 13%% slower than float32 on CPU when measured")

    @property
    def done(self) -> bool:
        """Whether all ``config.epochs`` epochs have run."""
        return self.epoch >= self.config.epochs

    @property
    def best_metric(self) -> str:
        """Name of the metric that picks the best weights."""
        return "valid_acc" if self.valid_loader is not None else "train_loss"

    def _build_loaders(self) -> tuple[DataLoader, DataLoader | None, DataLoader]:
        """Return the training, validation (None when ``valid_size == 0``) and test loaders."""
        config = self.config
        data = build_train_data(
            config.dataset,
            config.data_dir,
            config.subset,
            config.batch_size,
            config.seed,
            cutout=config.cutout,
            num_workers=config.num_workers,
            generator=self.data_generator,
            test_subset=config.test_subset,
        )
        if config.valid_size == 0:
            return data.train, None, data.test

        # Split the stratified training pool of build_train_data into training and validation.
        pool = data.train.dataset
        if not isinstance(pool, Subset):
            raise TypeError(f"expected the training loader to read a Subset, got {type(pool).__name__}")
        targets = np.asarray(pool.dataset.targets)[pool.indices]
        held_out = set(stratified_subset(targets, config.valid_size, config.seed))
        train_indices = [index for position, index in enumerate(pool.indices) if position not in held_out]
        valid_indices = [index for position, index in enumerate(pool.indices) if position in held_out]
        if len(train_indices) < config.batch_size:
            raise ValueError(
                f"valid_size={config.valid_size} leaves {len(train_indices)} training images, fewer than "
                f"batch_size={config.batch_size}; lower valid_size or batch_size, or raise subset"
            )

        # The validation images are read without augmentation, like the test images.
        plain = load_dataset(config.dataset, "train", config.data_dir, transform=test_transforms(config.dataset))
        train_loader = DataLoader(
            Subset(pool.dataset, train_indices),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=config.num_workers,
            generator=self.data_generator,
        )
        valid_loader = DataLoader(
            Subset(plain, valid_indices),
            batch_size=config.batch_size,
            shuffle=False,
            num_workers=config.num_workers,
        )
        logger.info(
            "Held out %d training images for validation; %d remain for training",
            len(valid_indices), len(train_indices),
        )
        return train_loader, valid_loader, data.test

    def run_epoch(self) -> dict[str, Any]:
        """Run the next epoch and return its metrics.

        Returns:
            ``epoch`` (1-based) and ``train_loss``, the training criterion of
            the main head with label smoothing. ``train_acc``, ``valid_loss``,
            ``valid_acc``, ``test_loss`` and ``test_acc``, with accuracies in
            percent and NaN for a split not evaluated this epoch. ``lr`` and
            ``drop_path`` of this epoch, ``epoch_seconds`` (training and
            evaluation), and ``is_best``: whether these weights are the best so
            far by :attr:`best_metric`.

        Raises:
            NonFiniteLossError: a training loss was NaN or infinite.
            RuntimeError: all epochs have already run.
        """
        if self.done:
            raise RuntimeError(
                f"the run already trained all {self.config.epochs} epochs; "
                "start a new run with more epochs to train longer"
            )
        start = time.perf_counter()
        epoch_index = self.epoch

        lr = learning_rate(self.config, epoch_index)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        drop_prob = drop_path_schedule(epoch_index, self.config.epochs, self.config.drop_path)
        self.network.drop_path_prob = drop_prob

        train_loss, train_acc = self._train_one_epoch(epoch_index + 1)
        self.epoch = epoch_index + 1

        valid = self.evaluate(self.valid_loader) if self.valid_loader is not None else None
        if self.config.test_every_epoch or self.done:
            test = self.evaluate(self.test_loader)
        else:
            test = None

        score = valid.accuracy if valid is not None else -train_loss
        is_best = score > self.best_score
        if is_best:
            self.best_score, self.best_epoch = score, self.epoch

        epoch_seconds = time.perf_counter() - start
        self.train_seconds += epoch_seconds
        metrics = {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "valid_loss": valid.loss if valid else math.nan,
            "valid_acc": valid.accuracy if valid else math.nan,
            "test_loss": test.loss if test else math.nan,
            "test_acc": test.accuracy if test else math.nan,
            "lr": lr,
            "drop_path": drop_prob,
            "epoch_seconds": epoch_seconds,
            "is_best": is_best,
        }
        logger.info(
            "epoch %d/%d: train_loss %.4f train_acc %.2f valid_acc %.2f test_acc %.2f (%.1f s)",
            self.epoch, self.config.epochs, train_loss, train_acc,
            metrics["valid_acc"], metrics["test_acc"], epoch_seconds,
        )
        return metrics

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self.config.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _batches(self, loader: DataLoader, description: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(images, labels)`` on the device, in the configured memory format, with a progress bar."""
        progress = tqdm(loader, desc=description, leave=False, disable=not self.show_progress)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        for images, labels in progress:
            images = images.to(self.device, non_blocking=True, memory_format=memory_format)
            yield images, labels.to(self.device, non_blocking=True)

    def _train_one_epoch(self, epoch: int) -> tuple[float, float]:
        """Train one pass over the training loader; return its mean loss and accuracy (percent)."""
        loss_sum, correct, seen = 0.0, 0, 0
        self.network.train()

        description = f"train {epoch}/{self.config.epochs}"
        for step, (images, labels) in enumerate(self._batches(self.train_loader, description)):
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                logits, aux_logits = self.network(images)
                loss = self.train_criterion(logits, labels)
                total = loss
                if aux_logits is not None:
                    total = loss + self.config.auxiliary_weight * self.train_criterion(aux_logits, labels)

            if not math.isfinite(loss.item()):
                raise NonFiniteLossError(epoch, step, loss.item())
            total.backward()
            if self.config.grad_clip > 0:
                nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip)
            self.optimizer.step()

            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            seen += len(labels)

        if seen == 0:
            raise ValueError(
                f"epoch {epoch} had no full batch: batch_size={self.config.batch_size} is larger than "
                "the training images; lower batch_size or raise subset"
            )
        return loss_sum / seen, 100.0 * correct / seen

    def evaluate(self, loader: DataLoader) -> EvalResult:
        """Return the cross-entropy and accuracy of the network on ``loader``, in eval mode.

        No generator that training draws from advances: the global RNGs are
        forked, and the loader's own shuffling (none for the validation and
        test loaders) is the only draw.
        """
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            self.network.eval()
            loss_sum, correct, seen = 0.0, 0, 0
            for images, labels in self._batches(loader, "evaluate"):
                with self._autocast():
                    logits, _ = self.network(images)
                loss_sum += self.eval_criterion(logits.float(), labels).item()
                correct += (logits.argmax(dim=-1) == labels).sum().item()
                seen += len(labels)
        return EvalResult(loss=loss_sum / seen, accuracy=100.0 * correct / seen)

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume the run exactly, for ``torch.save``."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "genotype": self.genotype.to_dict(),
            "epoch": self.epoch,
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "rng": capture_rng_state(),
            "train_seconds": self.train_seconds,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`, taken from a run with the same settings.

        The learning rate has no state of its own: :func:`learning_rate` is a
        function of the epoch, which is restored.

        Raises:
            ValueError: the checkpoint has another version, genotype, or training setting.
        """
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint version {state.get('version')!r} is not supported "
                f"(expected {CHECKPOINT_VERSION}); start a new run"
            )
        saved_genotype = Genotype.from_dict(state["genotype"])
        if saved_genotype != self.genotype:
            raise ValueError(
                f"the checkpoint trains another genotype ({saved_genotype.to_darts_text()}) than "
                f"this run ({self.genotype.to_darts_text()}); resume with the checkpoint's genotype"
            )
        differing = changed_train_settings(state["config"], self.config.to_dict())
        if differing:
            raise ValueError(
                f"the checkpoint comes from a run with other settings: {differing}; "
                "resume with the checkpoint's settings or start a new run"
            )

        self.network.load_state_dict(state["network"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.data_generator.set_state(state["data_generator"])
        restore_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.train_seconds = state["train_seconds"]
        self.best_epoch = state["best_epoch"]
        self.best_score = state["best_score"]


RESUME_INDEPENDENT_SETTINGS = frozenset({"genotype", "device", "num_workers", "data_dir", "test_every_epoch"})
"""Settings that may differ between a checkpoint and the run that resumes it.

The genotype is compared as a parsed genotype instead, because the same cell
can be given as a name, a file or a text.
"""


def changed_train_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Return ``{name: (saved, current)}`` for every setting that changed, ignoring the independent ones."""
    names = (set(saved) | set(current)) - RESUME_INDEPENDENT_SETTINGS
    return {
        name: (saved.get(name), current.get(name))
        for name in sorted(names)
        if saved.get(name) != current.get(name)
    }


# ---------------------------------------------------------------------------
# Run folder

CONFIG_NAME = "config.yaml"
GENOTYPE_NAME = "genotype.json"
METRICS_NAME = "metrics.csv"
CHECKPOINT_NAME = "checkpoint.pt"
LAST_WEIGHTS_NAME = "last.pt"
BEST_WEIGHTS_NAME = "best.pt"
FINAL_NAME = "final.json"
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "test_loss",
    "test_acc",
    "lr",
    "drop_path",
    "epoch_seconds",
)


def save_atomic(data: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename it: a crash keeps the previous file."""
    temporary = path.with_name(path.name + ".tmp")
    torch.save(data, temporary)
    os.replace(temporary, path)


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def resume_train_config(out_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Return the config saved in ``out_dir`` with ``overrides`` applied, reading the run's own genotype.

    The genotype is read from ``out_dir/genotype.json``, so a run resumes even
    when the file or text it started from is gone.

    Raises:
        RunFolderError: ``out_dir`` has no saved config, or an override changes a
            setting (the genotype included) that a resumed run cannot change.
    """
    out_dir = Path(out_dir)
    config_path, genotype_path = out_dir / CONFIG_NAME, out_dir / GENOTYPE_NAME
    for path in (config_path, genotype_path):
        if not path.exists():
            raise RunFolderError(f"cannot resume: {path} not found; start the run without --resume")

    overrides = dict(overrides or {})
    requested = overrides.pop("genotype", None)
    config = TrainConfig.from_yaml(config_path).replace(genotype=str(genotype_path))
    if requested is not None and load_genotype(requested) != load_genotype(str(genotype_path)):
        raise RunFolderError(
            f"cannot resume {out_dir} with another genotype than {genotype_path}; "
            "drop --genotype or start a new run in another --out folder"
        )
    if not overrides:
        return config

    updated = config.replace(**overrides)
    differing = changed_train_settings(config.to_dict(), updated.to_dict())
    if differing:
        raise RunFolderError(
            f"cannot resume {out_dir} with changed settings {differing}; "
            "drop those options or start a new run in another --out folder"
        )
    return updated


def run_training(
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Train ``config.genotype`` to the end in ``out_dir``, checkpointing after every epoch.

    Writes ``config.yaml`` and ``genotype.json`` at the start, after every
    epoch a ``metrics.csv`` row, ``checkpoint.pt`` (the full trainer state),
    ``last.pt`` and, when the epoch is the best so far, ``best.pt`` (network
    weights only), and at the end ``final.json`` (see :func:`final_summary`).
    Checkpoints and weights are written atomically.

    Args:
        resume: continue from ``out_dir/checkpoint.pt``; rows of ``metrics.csv``
            after the checkpointed epoch are dropped. Without it, a folder that
            already contains a run is rejected instead of overwritten.

    Returns:
        The content of ``final.json``.
    """
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    metrics_path = out_dir / METRICS_NAME

    if not resume and any((out_dir / name).exists() for name in (CHECKPOINT_NAME, METRICS_NAME, FINAL_NAME)):
        raise RunFolderError(
            f"{out_dir} already contains a training run; pass --resume to continue it "
            "or choose another --out folder"
        )
    if resume and not checkpoint_path.exists():
        raise RunFolderError(
            f"cannot resume: no checkpoint at {checkpoint_path}; start the run without --resume"
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, show_progress=show_progress)
    if resume:
        trainer.load_state_dict(torch.load(checkpoint_path, map_location="cpu", weights_only=False))
        logger.info("Resumed %s after epoch %d", out_dir, trainer.epoch)
    else:
        config.to_yaml(out_dir / CONFIG_NAME)
        _write_text_atomic(out_dir / GENOTYPE_NAME, trainer.genotype.to_json(indent=1) + "\n")
    truncate_metrics(metrics_path, trainer.epoch, METRIC_COLUMNS)

    metrics: dict[str, Any] = {}
    with tqdm(
        total=config.epochs, initial=trainer.epoch, desc="train", unit="epoch", disable=not show_progress
    ) as progress:
        while not trainer.done:
            metrics = trainer.run_epoch()
            append_metrics_row(metrics_path, metrics, METRIC_COLUMNS)
            weights = trainer.network.state_dict()
            save_atomic(weights, out_dir / LAST_WEIGHTS_NAME)
            if metrics["is_best"]:
                save_atomic(weights, out_dir / BEST_WEIGHTS_NAME)
            save_atomic(trainer.state_dict(), checkpoint_path)
            progress.set_postfix(train_acc=f"{metrics['train_acc']:.2f}")
            progress.update()

    final = final_summary(trainer, config, _last_test_metrics(metrics_path))
    _write_text_atomic(out_dir / FINAL_NAME, json.dumps(final, indent=1) + "\n")
    logger.info("Training finished: test_acc %.2f%%, written to %s", final["test_acc"], out_dir / FINAL_NAME)
    return final


def final_summary(trainer: Trainer, config: TrainConfig, test: dict[str, float]) -> dict[str, Any]:
    """Return the content of ``final.json``.

    Keys: ``test_acc`` and ``test_loss`` (of the last epoch), ``params``,
    ``params_without_aux``, ``multiply_adds`` and ``input_shape`` (see
    :class:`~idarts.complexity.Complexity`), ``train_seconds`` (summed over
    epochs, resumed parts included), ``epochs``, ``best_epoch`` and
    ``best_metric``, ``dataset``, ``genotype`` (JSON form) and
    ``genotype_name`` (its name when it is a published genotype, else null).
    """
    name = next((key for key, value in KNOWN_GENOTYPES.items() if value == trainer.genotype), None)
    return {
        "test_acc": test["test_acc"],
        "test_loss": test["test_loss"],
        **trainer.complexity.to_dict(),
        "train_seconds": trainer.train_seconds,
        "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "best_metric": trainer.best_metric,
        "dataset": config.dataset,
        "genotype": trainer.genotype.to_dict(),
        "genotype_name": name,
    }


def _last_test_metrics(path: Path) -> dict[str, float]:
    """Read ``test_loss`` and ``test_acc`` of the last row of ``metrics.csv``."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {"test_loss": float(rows[-1]["test_loss"]), "test_acc": float(rows[-1]["test_acc"])}
