"""Alpha backtracking, the IDARTS change to PC-DARTS.

After every Adam step ``alpha^t -> alpha^{t+1}`` the rule looks, per cell
type, for edges that the search is likely to keep (strong ``beta``) but whose
operation is not yet clearly chosen (flat ``alpha``). On those gated edges
it adds back a learned multiple of the previous alpha:

    alpha_l <- alpha_l^{t+1} + eta_b * psi_l * alpha_l^t

The coefficients ``psi`` (one per edge) are trained by Adam on
``dL/dpsi_l = eta_b * sum_m grad_alpha_lm * alpha^{t-1}_lm * g^{t-1}_l``: the
gradient of the current architecture step with respect to the previous
backtracking term. It reuses that step's gradient, so backtracking costs no
extra forward or backward pass. ``psi`` is then clipped to ``|psi|``.

The IDARTS paper states the idea but does not publish its equations; this
module is the project's reconstruction of it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from idarts.search_space import CELL_TYPES, NONE_INDEX, NUM_EDGES, PRIMITIVES, incoming_edge_counts
from idarts.genotypes import edge_weights

DECIDED_EDGES = NUM_EDGES // 2
"""How many edges (half the cell) count as decided: those with the most confident operation."""


def strong_edge_count(threshold: float) -> int:
    """Return ``k = round((1 - threshold) * 14)``, rounding halves up."""
    return int(math.floor((1.0 - threshold) * NUM_EDGES + 0.5))


def top_edges(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Return a boolean mask of the ``count`` largest scores; ties go to the lower edge index."""
    order = sorted(range(len(scores)), key=lambda index: (-float(scores[index]), index))
    mask = torch.zeros(len(scores), dtype=torch.bool)
    mask[order[:count]] = True
    return mask


def edge_strength(beta: torch.Tensor) -> torch.Tensor:
    """Return ``s_l = n_j * B_l``: 1.0 means edge ``l`` has a uniform share of its node."""
    counts = torch.tensor(incoming_edge_counts(), dtype=beta.dtype, device=beta.device)
    return counts * edge_weights(beta)


def edge_decisiveness(alpha: torch.Tensor) -> torch.Tensor:
    """Return ``d_l``: the largest operation weight of edge ``l``, ``none`` excluded."""
    weights = torch.softmax(alpha, dim=-1)
    keep = [index for index in range(len(PRIMITIVES)) if index != NONE_INDEX]
    return weights[:, keep].max(dim=-1).values


def compute_gate(alpha: torch.Tensor, beta: torch.Tensor, threshold: float) -> torch.Tensor:
    """Return the boolean gate of one cell type: strong edges that are not yet decided.

    Args:
        alpha: operation logits after the Adam step, shape (14, 8).
        beta: edge logits, shape (14,).
        threshold: tau in [0, 1]; the ``round((1 - tau) * 14)`` strongest edges may be gated.
    """
    with torch.no_grad():
        strong = top_edges(edge_strength(beta).cpu(), strong_edge_count(threshold))
        decided = top_edges(edge_decisiveness(alpha).cpu(), DECIDED_EDGES)
    return strong & ~decided


class Backtracker(nn.Module):
    """The state and update rule of alpha backtracking for both cell types.

    Call :meth:`update_psi` with the architecture gradient before the Adam
    step on alpha, and :meth:`backtrack` right after it.
    """

    def __init__(self, threshold: float, eta_b: float, psi_init: float, eta_psi: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.eta_b = eta_b
        self.psi = nn.ParameterDict(
            {cell: nn.Parameter(torch.full((NUM_EDGES,), float(psi_init))) for cell in CELL_TYPES}
        )
        self.psi_optimizer = torch.optim.Adam(self.psi.values(), lr=eta_psi, betas=(0.5, 0.999))
        for cell in CELL_TYPES:
            self.register_buffer(f"previous_alpha_{cell}", torch.zeros(NUM_EDGES, len(PRIMITIVES)))
            self.register_buffer(f"previous_gate_{cell}", torch.zeros(NUM_EDGES, dtype=torch.bool))

    def previous_alpha(self, cell: str) -> torch.Tensor:
        return getattr(self, f"previous_alpha_{cell}")

    def previous_gate(self, cell: str) -> torch.Tensor:
        return getattr(self, f"previous_gate_{cell}")

    def update_psi(self, alpha_grad: dict[str, torch.Tensor]) -> None:
        """Take one Adam step on ``psi`` from the gradient of the current architecture step.

        Args:
            alpha_grad: ``dL/dalpha`` of the current step per cell type, before weight decay.
        """
        for cell in CELL_TYPES:
            gate = self.previous_gate(cell).to(alpha_grad[cell].dtype).unsqueeze(-1)
            term = alpha_grad[cell] * self.previous_alpha(cell) * gate
            self.psi[cell].grad = self.eta_b * term.sum(dim=-1)

        self.psi_optimizer.step()
        with torch.no_grad():
            for parameter in self.psi.values():
                parameter.abs_()

    @torch.no_grad()
    def backtrack(
        self,
        alpha: nn.ParameterDict,
        alpha_before: dict[str, torch.Tensor],
        beta: nn.ParameterDict,
    ) -> dict[str, torch.Tensor]:
        """Apply the backtracking term to the gated edges of ``alpha`` in place.

        Args:
            alpha: the architecture parameters right after the Adam step (``alpha^{t+1}``).
            alpha_before: a copy of ``alpha`` taken before that step (``alpha^t``).
            beta: the edge parameters after the same step.

        Returns:
            The gate of each cell type, a boolean tensor of shape (14,).
        """
        gates = {}
        for cell in CELL_TYPES:
            gate = compute_gate(alpha[cell], beta[cell], self.threshold).to(alpha[cell].device)
            step = self.eta_b * self.psi[cell].unsqueeze(-1) * alpha_before[cell]
            alpha[cell].copy_(torch.where(gate.unsqueeze(-1), alpha[cell] + step, alpha[cell]))

            self.previous_alpha(cell).copy_(alpha_before[cell])
            self.previous_gate(cell).copy_(gate)
            gates[cell] = gate
        return gates

    def extra_state_dict(self) -> dict[str, Any]:
        """Return the psi optimizer state, which ``state_dict()`` of the module does not hold."""
        return {"psi_optimizer": self.psi_optimizer.state_dict()}

    def load_extra_state_dict(self, state: dict[str, Any]) -> None:
        self.psi_optimizer.load_state_dict(state["psi_optimizer"])
