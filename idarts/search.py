"""The search loop: ``Searcher`` runs IDARTS or PC-DARTS one epoch at a time."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from idarts.architect import ArchitectOptimizer
from idarts.config import SearchConfig
from idarts.datasets import build_search_data
from idarts.genotypes import Genotype, derive_genotype, edge_weights
from idarts.reproducibility import (
    capture_rng_state,
    resolve_device,
    restore_rng_state,
    seed_everything,
)
from idarts.search_space import CELL_TYPES, NUM_INPUT_NODES, NUM_INTERMEDIATE_NODES, edges_into
from idarts.supernet import SearchNetwork

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

SEARCH_METRICS = (
    "epoch",
    "train_loss",
    "train_acc",
    "valid_loss",
    "valid_acc",
    "lr",
    "backtracked_edges",
    "alpha_entropy",
    "beta_entropy",
    "skip_connect_count",
    "epoch_seconds",
)
"""Numeric metrics of every search epoch, in report order; ``run_epoch`` adds ``genotype``."""


class NonFiniteLossError(RuntimeError):
    """A loss became NaN or infinite; the search cannot continue from this state."""

    def __init__(self, epoch: int, step: int, phase: str, value: float) -> None:
        super().__init__(
            f"the {phase} loss is {value} at epoch {epoch}, step {step}; the search stopped. "
            "Lower lr or arch_lr, or raise grad_clip, then start again from the last checkpoint"
        )
        self.epoch = epoch
        self.step = step
        self.phase = phase
        self.value = value


class Searcher:
    """One architecture search, run an epoch at a time.

    Construction loads the data, builds the supernet and both optimizers, and
    seeds every generator from ``config.seed``. Each :meth:`run_epoch` call
    runs one epoch: per step one architecture step on an architecture batch
    (after the warm-up) and one weight step on a weight batch, then an
    evaluation on the architecture half. :meth:`state_dict` taken between
    epochs resumes the search exactly: on CPU with ``num_workers=0`` a
    resumed run is bit-identical to an uninterrupted one.
    """

    def __init__(self, config: SearchConfig, show_progress: bool = False) -> None:
        self.config = config
        self.show_progress = show_progress
        self.device = resolve_device(config.device)
        seed_everything(config.seed)

        self.data_generator = torch.Generator().manual_seed(config.seed)
        self.data = build_search_data(
            config.dataset,
            config.data_dir,
            config.subset,
            config.batch_size,
            config.seed,
            train_portion=config.train_portion,
            num_workers=config.num_workers,
            generator=self.data_generator,
        )

        self.network = SearchNetwork(
            self.data.spec.in_channels,
            self.data.spec.num_classes,
            init_channels=config.init_channels,
            layers=config.layers,
            partial_k=config.partial_k,
            stem_multiplier=config.stem_multiplier,
        ).to(self.device)
        # Channels-last made a CPU search step about 23% faster (C 16, 8 cells, K 4, batch 32,
        # 2-core Xeon). It was not measured on CUDA, so CUDA keeps the default format.
        channels_last = config.channels_last
        if channels_last is None:
            channels_last = self.device.type == "cpu"
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network.to(memory_format=self.memory_format)
        self.criterion = nn.CrossEntropyLoss()
        self.weight_optimizer = torch.optim.SGD(
            self.network.weight_parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.weight_optimizer, T_max=config.epochs, eta_min=config.lr_min
        )
        self.architect = ArchitectOptimizer(self.network, config)

        self.epoch = 0
        self.arch_history: list[dict[str, Any]] = []

    @property
    def done(self) -> bool:
        """Whether all ``config.epochs`` epochs have run."""
        return self.epoch >= self.config.epochs

    def genotype(self) -> Genotype:
        """Derive the genotype from the current alpha and beta."""
        alpha = {cell: self.network.alpha[cell].detach().cpu() for cell in CELL_TYPES}
        beta = {cell: self.network.beta[cell].detach().cpu() for cell in CELL_TYPES}
        return derive_genotype(alpha, beta)

    def run_epoch(self) -> dict[str, Any]:
        """Run the next epoch and return its metrics.

        Returns:
            A dict with these keys:

            - ``epoch``: the 1-based index of the epoch just run.
            - ``train_loss``, ``train_acc``, ``valid_loss``, ``valid_acc``:
              accuracies are in percent.
            - ``lr``: the weight learning rate used in this epoch.
            - ``backtracked_edges``: gated edges, summed over steps and cell types.
            - ``alpha_entropy``, ``beta_entropy``: the mean entropy, in nats, of
              the operation and edge distributions.
            - ``skip_connect_count``: skip connections in the normal cell of
              the current genotype.
            - ``epoch_seconds`` and ``genotype`` (compact JSON).

        Raises:
            NonFiniteLossError: a weight or architecture loss was NaN or infinite.
            RuntimeError: all epochs have already run.
        """
        if self.done:
            raise RuntimeError(
                f"the search already ran all {self.config.epochs} epochs; "
                "raise epochs in a new search to train longer"
            )
        start = time.perf_counter()
        epoch = self.epoch + 1
        lr = self.weight_optimizer.param_groups[0]["lr"]
        train_loss, train_acc, gate_counts, gate_events = self._train_one_epoch(epoch)
        self.scheduler.step()
        valid_loss, valid_acc = self.evaluate()
        self.epoch = epoch

        genotype = self.genotype()
        self.arch_history.append(self._arch_snapshot(epoch, gate_counts, gate_events))
        metrics = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "valid_loss": valid_loss,
            "valid_acc": valid_acc,
            "lr": lr,
            "backtracked_edges": int(sum(sum(counts) for counts in gate_counts.values())),
            "alpha_entropy": self._alpha_entropy(),
            "beta_entropy": self._beta_entropy(),
            "skip_connect_count": genotype.skip_connect_count("normal"),
            "epoch_seconds": time.perf_counter() - start,
            "genotype": genotype.to_json(),
        }
        logger.info(
            "epoch %d/%d: train_acc %.2f valid_acc %.2f backtracked_edges %d (%.1f s)",
            epoch,
            self.config.epochs,
            train_acc,
            valid_acc,
            metrics["backtracked_edges"],
            metrics["epoch_seconds"],
        )
        return metrics

    def _train_one_epoch(
        self, epoch: int
    ) -> tuple[float, float, dict[str, list[int]], list[dict[str, Any]]]:
        update_arch = epoch > self.config.warmup_epochs
        steps = min(len(self.data.train), len(self.data.valid))
        gate_counts = {cell: [0] * len(self.network.beta[cell]) for cell in CELL_TYPES}
        gate_events: list[dict[str, Any]] = []
        loss_sum, correct, seen = 0.0, 0, 0

        self.network.train()
        batches = zip(self.data.train, self.data.valid)
        progress = tqdm(
            batches,
            total=steps,
            desc=f"epoch {epoch}/{self.config.epochs}",
            leave=False,
            disable=not self.show_progress,
        )
        for step, ((images, labels), (arch_images, arch_labels)) in enumerate(progress):
            if update_arch:
                arch_images = self._to_device(arch_images)
                arch_labels = arch_labels.to(self.device, non_blocking=True)
                arch_loss, gates = self.architect.step(arch_images, arch_labels)
                self._check_finite(arch_loss, epoch, step, "architecture")
                for cell, gate in gates.items():
                    gated = gate.nonzero().flatten().tolist()
                    for index in gated:
                        gate_counts[cell][index] += 1
                    if gated:
                        gate_events.append({"step": step, "cell": cell, "edges": gated})

            images = self._to_device(images)
            labels = labels.to(self.device, non_blocking=True)
            self.weight_optimizer.zero_grad(set_to_none=True)
            logits = self.network(images)
            loss = self.criterion(logits, labels)
            self._check_finite(loss.detach(), epoch, step, "weight")
            loss.backward()
            nn.utils.clip_grad_norm_(self.network.weight_parameters(), self.config.grad_clip)
            self.weight_optimizer.step()

            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            seen += len(labels)
            progress.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100.0 * correct / seen:.1f}")

        return loss_sum / seen, 100.0 * correct / seen, gate_counts, gate_events

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Return the loss and accuracy (percent) of the supernet on the architecture half."""
        self.network.eval()
        loss_sum, correct, seen = 0.0, 0, 0
        for images, labels in self.data.valid:
            images = self._to_device(images)
            labels = labels.to(self.device, non_blocking=True)
            logits = self.network(images)
            loss_sum += self.criterion(logits, labels).item() * len(labels)
            correct += (logits.argmax(dim=-1) == labels).sum().item()
            seen += len(labels)
        return loss_sum / seen, 100.0 * correct / seen

    def _to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=self.memory_format)

    def _check_finite(self, loss: torch.Tensor, epoch: int, step: int, phase: str) -> None:
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(epoch, step, phase, value)

    def _alpha_entropy(self) -> float:
        entropies = []
        for cell in CELL_TYPES:
            probabilities = torch.softmax(self.network.alpha[cell].detach(), dim=-1)
            entropies.append(-(probabilities * probabilities.log()).sum(dim=-1).mean())
        return float(torch.stack(entropies).mean())

    def _beta_entropy(self) -> float:
        entropies = []
        for cell in CELL_TYPES:
            weights = edge_weights(self.network.beta[cell].detach())
            for target in range(NUM_INPUT_NODES, NUM_INPUT_NODES + NUM_INTERMEDIATE_NODES):
                node = weights[edges_into(target)]
                entropies.append(-(node * node.log()).sum())
        return float(torch.stack(entropies).mean())

    def _arch_snapshot(
        self, epoch: int, gate_counts: dict[str, list[int]], gate_events: list[dict[str, Any]]
    ) -> dict[str, Any]:
        psi = self.architect.psi()
        return {
            "epoch": epoch,
            "alpha": {cell: self.network.alpha[cell].detach().cpu().tolist() for cell in CELL_TYPES},
            "beta": {cell: self.network.beta[cell].detach().cpu().tolist() for cell in CELL_TYPES},
            "psi": None if psi is None else {cell: value.tolist() for cell, value in psi.items()},
            "gate_counts": gate_counts,
            "gate_events": gate_events,
        }

    def arch_record(self) -> dict[str, Any]:
        """Return the content of ``arch.json``: the config and one snapshot per finished epoch."""
        return {"config": self.config.to_dict(), "epochs": self.arch_history}

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume the search exactly, for ``torch.save``."""
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "network": self.network.state_dict(),
            "weight_optimizer": self.weight_optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "architect": self.architect.state_dict(),
            "data_generator": self.data_generator.get_state(),
            "rng": capture_rng_state(),
            "arch_history": self.arch_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`, taken from a search with the same config.

        Raises:
            ValueError: the checkpoint comes from another version or a different search setting.
        """
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint version {state.get('version')!r} is not supported "
                f"(expected {CHECKPOINT_VERSION}); start a new search"
            )
        differing = changed_settings(state["config"], self.config.to_dict())
        if differing:
            raise ValueError(
                f"the checkpoint comes from a search with other settings: {differing}; "
                "resume with the checkpoint's settings or start a new search"
            )

        self.network.load_state_dict(state["network"])
        self.weight_optimizer.load_state_dict(state["weight_optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.architect.load_state_dict(state["architect"])
        self.data_generator.set_state(state["data_generator"])
        restore_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self.arch_history = list(state["arch_history"])


RESUME_INDEPENDENT_SETTINGS = frozenset({"device", "num_workers", "data_dir", "channels_last"})
"""Settings that may differ between a checkpoint and the search that resumes it."""


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Return ``{name: (saved, current)}`` for every setting that changed, ignoring the independent ones."""
    names = (set(saved) | set(current)) - RESUME_INDEPENDENT_SETTINGS
    return {
        name: (saved.get(name), current.get(name))
        for name in sorted(names)
        if saved.get(name) != current.get(name)
    }
