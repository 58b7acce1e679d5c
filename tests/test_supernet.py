"""Operations, partial-channel mixed operations and the supernet."""

import pytest
import torch

from idarts.genotypes import edge_weights
from idarts.operations import OPERATIONS, build_operation
from idarts.search_space import EDGES, NUM_EDGES, PRIMITIVES, edges_into, reduction_layers
from idarts.supernet import (
    PartialChannelMixedOp,
    SearchNetwork,
    channel_shuffle,
    check_partial_k,
    valid_partial_k,
)


def test_cell_has_fourteen_edges_in_node_order():
    assert NUM_EDGES == 14
    assert EDGES[:5] == ((0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
    assert [len(edges_into(node)) for node in range(2, 6)] == [2, 3, 4, 5]


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_operation_output_shape(name, stride, size):
    op = build_operation(name, 6, stride, affine=False)
    output = op(torch.randn(2, 6, size, size))
    expected = -(-size // stride)
    assert output.shape == (2, 6, expected, expected)


def test_unknown_operation_lists_known_names():
    with pytest.raises(KeyError, match="sep_conv_3x3"):
        build_operation("conv_7x7", 4, 1, affine=False)


def test_registry_covers_every_primitive():
    assert set(OPERATIONS) == set(PRIMITIVES)


def test_k1_mixed_op_is_plain_weighted_sum():
    torch.manual_seed(0)
    mixed = PartialChannelMixedOp(8, stride=1, partial_k=1).eval()
    x = torch.randn(2, 8, 6, 6)
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), dim=-1)
    expected = sum(weight * op(x) for weight, op in zip(weights, mixed.ops))
    assert torch.equal(mixed(x, weights), expected)


def test_k1_mixed_op_uses_all_channels():
    mixed = PartialChannelMixedOp(8, stride=1, partial_k=1)
    assert mixed.ops[PRIMITIVES.index("sep_conv_3x3")][0][1].in_channels == 8


def test_partial_mixed_op_bypasses_other_channels():
    torch.manual_seed(0)
    mixed = PartialChannelMixedOp(8, stride=1, partial_k=4).eval()
    x = torch.randn(1, 8, 5, 5)
    weights = torch.zeros(len(PRIMITIVES))
    weights[PRIMITIVES.index("none")] = 1.0
    output = mixed(x, weights)
    unshuffled = output.view(1, 2, 4, 5, 5).transpose(1, 2).reshape(1, 8, 5, 5)
    assert torch.equal(unshuffled[:, 2:], x[:, 2:])
    assert torch.count_nonzero(unshuffled[:, :2]) == 0


def test_partial_mixed_op_reduction_pools_bypass():
    mixed = PartialChannelMixedOp(8, stride=2, partial_k=2)
    output = mixed(torch.randn(2, 8, 7, 7), torch.softmax(torch.randn(len(PRIMITIVES)), -1))
    assert output.shape == (2, 8, 4, 4)


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]


def test_valid_partial_k_divides_channels():
    assert valid_partial_k(12) == [1, 2, 3, 4, 6, 12]


def test_invalid_partial_k_lists_valid_values():
    with pytest.raises(ValueError, match=r"valid values: \[1, 2, 4, 8\]"):
        check_partial_k(3, 8)


def test_invalid_partial_k_rejected_before_building():
    with pytest.raises(ValueError, match="partial_k=5"):
        SearchNetwork(3, 10, init_channels=8, layers=5, partial_k=5)


def test_edge_weights_sum_to_one_per_node():
    weights = edge_weights(torch.randn(NUM_EDGES))
    for node in range(2, 6):
        assert torch.isclose(weights[edges_into(node)].sum(), torch.tensor(1.0))


def test_reduction_layers_at_thirds():
    assert reduction_layers(8) == (2, 5)
    assert reduction_layers(5) == (1, 3)


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (3, 31), (1, 13)])
def test_supernet_runs_on_input(in_channels, size):
    network = SearchNetwork(in_channels, 10, init_channels=4, layers=5, partial_k=2)
    assert network(torch.randn(2, in_channels, size, size)).shape == (2, 10)


def test_supernet_bn_is_not_affine():
    network = SearchNetwork(3, 10, init_channels=4, layers=3, partial_k=2)
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    assert not any(norm.affine for norm in norms)


def test_supernet_arch_parameters_shapes():
    network = SearchNetwork(3, 10, init_channels=4, layers=3, partial_k=2)
    assert network.alpha["normal"].shape == (14, 8)
    assert network.beta["reduce"].shape == (14,)
    assert network.alpha["normal"].abs().max() < 0.01


def test_weight_and_arch_parameters_are_disjoint():
    network = SearchNetwork(3, 10, init_channels=4, layers=3, partial_k=2)
    weight_ids = {id(p) for p in network.weight_parameters()}
    arch_ids = {id(p) for p in network.arch_parameters()}
    assert not weight_ids & arch_ids
    assert len(weight_ids) + len(arch_ids) == len(list(network.parameters()))


def test_beta_gradient_scales_alpha_gradient():
    """The bilinear coupling: the gradient reaching alpha_l is proportional to B_l."""
    torch.manual_seed(0)
    network = SearchNetwork(3, 10, init_channels=4, layers=1, partial_k=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        network.beta["reduce"][0] = -30.0
    loss = torch.nn.functional.cross_entropy(network(x), torch.tensor([1, 2]))
    loss.backward()
    weak_edge = network.alpha["reduce"].grad[0].abs().max()
    strong_edge = network.alpha["reduce"].grad[1].abs().max()
    assert strong_edge > 0
    assert weak_edge < 1e-6 * strong_edge
