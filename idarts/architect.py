"""The architecture optimizer: first-order Adam on alpha and beta, plus backtracking."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from idarts.backtracking import Backtracker
from idarts.config import SearchConfig
from idarts.search_space import CELL_TYPES
from idarts.supernet import SearchNetwork


class ArchitectOptimizer:
    """Train ``alpha`` and ``beta`` of a supernet on architecture batches.

    Mode ``pcdarts`` is a plain first-order Adam step. Mode ``idarts`` adds
    alpha backtracking after the step when :attr:`SearchConfig.backtracking`
    is true; otherwise it runs exactly the ``pcdarts`` computation.
    """

    def __init__(self, network: SearchNetwork, config: SearchConfig) -> None:
        self.network = network
        self.optimizer = torch.optim.Adam(
            network.arch_parameters(),
            lr=config.arch_lr,
            betas=config.arch_betas,
            weight_decay=config.arch_weight_decay,
        )
        self.criterion = nn.CrossEntropyLoss()
        self.backtracker: Backtracker | None = None
        if config.backtracking:
            self.backtracker = Backtracker(
                config.threshold, config.eta_b, config.psi_init, config.eta_psi
            )
            self.backtracker.to(next(network.parameters()).device)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Take one architecture step on a batch.

        Returns:
            The loss of the batch (detached) and the backtracking gate of each
            cell type (all false when backtracking is off).
        """
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.criterion(self.network(images), labels)
        loss.backward()

        if self.backtracker is None:
            self.optimizer.step()
            no_gate = torch.zeros(len(self.network.beta["normal"]), dtype=torch.bool)
            return loss.detach(), {cell: no_gate for cell in CELL_TYPES}

        alpha = self.network.alpha
        # A network without normal cells (layers <= 2) leaves the normal alpha without a gradient.
        alpha_grad = {
            cell: torch.zeros_like(alpha[cell]) if alpha[cell].grad is None else alpha[cell].grad.detach().clone()
            for cell in CELL_TYPES
        }
        alpha_before = {cell: alpha[cell].detach().clone() for cell in CELL_TYPES}
        self.backtracker.update_psi(alpha_grad)
        self.optimizer.step()
        gates = self.backtracker.backtrack(alpha, alpha_before, self.network.beta)
        return loss.detach(), {cell: gate.cpu() for cell, gate in gates.items()}

    def psi(self) -> dict[str, torch.Tensor] | None:
        """Return a copy of the backtracking coefficients, or None when backtracking is off."""
        if self.backtracker is None:
            return None
        return {cell: value.detach().cpu().clone() for cell, value in self.backtracker.psi.items()}

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"optimizer": self.optimizer.state_dict()}
        if self.backtracker is not None:
            state["backtracker"] = self.backtracker.state_dict()
            state["backtracker_extra"] = self.backtracker.extra_state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.backtracker is not None:
            self.backtracker.load_state_dict(state["backtracker"])
            self.backtracker.load_extra_state_dict(state["backtracker_extra"])
