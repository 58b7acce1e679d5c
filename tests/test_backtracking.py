"""The IDARTS backtracking rule: gate, update and psi."""

import pytest
import torch

from idarts.backtracking import (
    Backtracker,
    compute_gate,
    edge_decisiveness,
    edge_strength,
    strong_edge_count,
    top_edges,
)
from idarts.search_space import NUM_EDGES, PRIMITIVES, edges_into


def flat_alpha():
    return torch.zeros(NUM_EDGES, len(PRIMITIVES))


def test_strong_edge_count_from_threshold():
    assert strong_edge_count(1.0) == 0
    assert strong_edge_count(0.5) == 7
    assert strong_edge_count(0.0) == 14
    assert strong_edge_count(0.25) == 11


def test_top_edges_breaks_ties_by_index():
    scores = torch.tensor([1.0, 2.0, 2.0, 0.5, 2.0])
    assert top_edges(scores, 2).tolist() == [False, True, True, False, False]


def test_uniform_beta_gives_unit_strength():
    assert torch.allclose(edge_strength(torch.zeros(NUM_EDGES)), torch.ones(NUM_EDGES))


def test_decisiveness_ignores_none():
    alpha = flat_alpha()
    alpha[0, 0] = 10.0
    decisiveness = edge_decisiveness(alpha)
    assert decisiveness[0] < 0.01
    assert torch.isclose(decisiveness[1], torch.tensor(1 / 8))


def test_gate_picks_strong_undecided_edges():
    beta = torch.zeros(NUM_EDGES)
    strong = [0, 2, 5, 9]
    beta[strong] = 3.0
    alpha = flat_alpha()
    decided = [0, 1, 3, 4, 6, 7, 8]
    for edge in decided:
        alpha[edge, PRIMITIVES.index("sep_conv_3x3")] = 4.0

    gate = compute_gate(alpha, beta, threshold=1 - 4 / 14)

    assert gate.nonzero().flatten().tolist() == [2, 5, 9]


def test_gate_empty_at_threshold_one():
    beta = torch.randn(NUM_EDGES)
    alpha = torch.randn(NUM_EDGES, len(PRIMITIVES))
    assert not compute_gate(alpha, beta, threshold=1.0).any()


def test_gate_never_exceeds_half_the_cell():
    torch.manual_seed(0)
    for _ in range(20):
        gate = compute_gate(torch.randn(NUM_EDGES, 8), torch.randn(NUM_EDGES), threshold=0.0)
        assert gate.sum() == 7


def test_larger_threshold_gates_no_more_edges():
    torch.manual_seed(1)
    alpha, beta = torch.randn(NUM_EDGES, 8), torch.randn(NUM_EDGES)
    counts = [int(compute_gate(alpha, beta, tau).sum()) for tau in (0.0, 0.3, 0.6, 0.9, 1.0)]
    assert counts == sorted(counts, reverse=True)


def make_params(alpha_values, beta_values):
    alpha = torch.nn.ParameterDict({cell: torch.nn.Parameter(alpha_values.clone()) for cell in ("normal", "reduce")})
    beta = torch.nn.ParameterDict({cell: torch.nn.Parameter(beta_values.clone()) for cell in ("normal", "reduce")})
    return alpha, beta


def test_backtrack_step_matches_formula():
    torch.manual_seed(0)
    alpha_before = torch.randn(NUM_EDGES, 8)
    alpha_after = alpha_before + 0.01 * torch.randn(NUM_EDGES, 8)
    beta = torch.randn(NUM_EDGES)
    alpha, beta_params = make_params(alpha_after, beta)
    backtracker = Backtracker(threshold=0.3, eta_b=0.2, psi_init=0.7, eta_psi=1e-3)
    with torch.no_grad():
        backtracker.psi["normal"].copy_(torch.linspace(0.1, 1.4, NUM_EDGES))

    gates = backtracker.backtrack(alpha, {"normal": alpha_before, "reduce": alpha_before}, beta_params)

    gate = compute_gate(alpha_after, beta, 0.3)
    assert torch.equal(gates["normal"], gate)
    assert gate.any()
    psi = torch.linspace(0.1, 1.4, NUM_EDGES)
    expected = alpha_after.clone()
    expected[gate] += 0.2 * psi[gate].unsqueeze(-1) * alpha_before[gate]
    assert torch.allclose(alpha["normal"], expected)
    assert torch.equal(alpha["normal"][~gate], alpha_after[~gate])


def test_backtrack_remembers_previous_alpha_and_gate():
    alpha_before = torch.randn(NUM_EDGES, 8)
    alpha, beta = make_params(alpha_before + 0.1, torch.randn(NUM_EDGES))
    backtracker = Backtracker(threshold=0.0, eta_b=0.1, psi_init=1.0, eta_psi=1e-3)
    gates = backtracker.backtrack(alpha, {"normal": alpha_before, "reduce": alpha_before}, beta)
    assert torch.equal(backtracker.previous_alpha("normal"), alpha_before)
    assert torch.equal(backtracker.previous_gate("reduce"), gates["reduce"])


def test_psi_gradient_matches_formula():
    torch.manual_seed(0)
    backtracker = Backtracker(threshold=0.0, eta_b=0.3, psi_init=1.0, eta_psi=1e-3)
    previous_alpha = torch.randn(NUM_EDGES, 8)
    previous_gate = torch.zeros(NUM_EDGES, dtype=torch.bool)
    previous_gate[[1, 4, 7]] = True
    for cell in ("normal", "reduce"):
        backtracker.previous_alpha(cell).copy_(previous_alpha)
        backtracker.previous_gate(cell).copy_(previous_gate)
    grad = torch.randn(NUM_EDGES, 8)

    backtracker.update_psi({"normal": grad, "reduce": grad})

    expected = 0.3 * (grad * previous_alpha).sum(dim=-1) * previous_gate
    assert torch.allclose(backtracker.psi["normal"].grad, expected)
    moved = (backtracker.psi["normal"] - 1.0).abs() > 1e-6
    assert moved.tolist() == previous_gate.tolist()


def test_psi_first_adam_step_moves_by_learning_rate():
    """Adam normalises the tiny psi gradient: the first step moves psi by about eta_psi."""
    backtracker = Backtracker(threshold=0.0, eta_b=0.1, psi_init=1.0, eta_psi=1e-3)
    for cell in ("normal", "reduce"):
        backtracker.previous_alpha(cell).fill_(1e-3)
        backtracker.previous_gate(cell).fill_(True)
    grad = torch.full((NUM_EDGES, 8), 1e-3)
    backtracker.update_psi({"normal": grad, "reduce": grad})
    assert torch.allclose(backtracker.psi["normal"], torch.full((NUM_EDGES,), 1.0 - 1e-3), atol=2e-5)


def test_psi_stays_non_negative():
    backtracker = Backtracker(threshold=0.0, eta_b=0.5, psi_init=0.0005, eta_psi=1e-3)
    for cell in ("normal", "reduce"):
        backtracker.previous_alpha(cell).fill_(1.0)
        backtracker.previous_gate(cell).fill_(True)
    for _ in range(5):
        grad = torch.ones(NUM_EDGES, 8)
        backtracker.update_psi({"normal": grad, "reduce": grad})
        assert (backtracker.psi["normal"] >= 0).all()
        assert (backtracker.psi["reduce"] >= 0).all()
    assert backtracker.psi["normal"].max() > 0


def test_backtracker_state_round_trip():
    backtracker = Backtracker(threshold=0.5, eta_b=0.1, psi_init=1.0, eta_psi=1e-3)
    for cell in ("normal", "reduce"):
        backtracker.previous_gate(cell).fill_(True)
        backtracker.previous_alpha(cell).fill_(0.5)
    grad = torch.randn(NUM_EDGES, 8)
    backtracker.update_psi({"normal": grad, "reduce": grad})
    restored = Backtracker(threshold=0.5, eta_b=0.1, psi_init=1.0, eta_psi=1e-3)
    restored.load_state_dict(backtracker.state_dict())
    restored.load_extra_state_dict(backtracker.extra_state_dict())
    assert torch.equal(restored.psi["normal"], backtracker.psi["normal"])
    assert torch.equal(restored.previous_gate("normal"), backtracker.previous_gate("normal"))
    assert restored.psi_optimizer.state_dict()["state"]


@pytest.mark.parametrize("node", range(2, 6))
def test_strength_is_relative_to_node_fan_in(node):
    beta = torch.zeros(NUM_EDGES)
    edges = edges_into(node)
    beta[edges[0]] = 50.0
    strength = edge_strength(beta)
    assert torch.isclose(strength[edges[0]], torch.tensor(float(len(edges))))
