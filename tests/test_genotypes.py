"""Tests of genotype derivation, the text and JSON forms, loading, and the figures."""

from __future__ import annotations

import math

import pytest
import torch

from idarts.genotypes import (
    GENOTYPE_OPERATIONS,
    KNOWN_GENOTYPES,
    Genotype,
    GenotypeError,
    derive_genotype,
    edge_weights,
    load_genotype,
    parse_darts_text,
)
from idarts.search_space import EDGES, NONE_INDEX, NUM_EDGES, PRIMITIVES, edges_into
from idarts.visualize import genotype_to_text, plot_arch_heatmaps, plot_cell, plot_genotype

CONCAT = (2, 3, 4, 5)


def column(op: str) -> int:
    return PRIMITIVES.index(op)


def edge_index(source: int, target: int) -> int:
    return EDGES.index((source, target))


def zero_parameters() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    alpha = {cell: torch.zeros(NUM_EDGES, len(PRIMITIVES)) for cell in ("normal", "reduce")}
    beta = {cell: torch.zeros(NUM_EDGES) for cell in ("normal", "reduce")}
    return alpha, beta


def random_parameters(seed: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    alpha, beta = {}, {}
    for cell in ("normal", "reduce"):
        alpha[cell] = torch.randn(NUM_EDGES, len(PRIMITIVES), generator=generator)
        beta[cell] = torch.randn(NUM_EDGES, generator=generator)
    return alpha, beta


# ---------------------------------------------------------------------------
# Derivation


def test_derive_hand_computed_genotype():
    alpha, beta = zero_parameters()

    # Normal cell: beta is uniform, so within a node the edge with the larger
    # single alpha entry wins, because A = e^v / (e^v + 7) grows with v.
    normal = alpha["normal"]
    normal[edge_index(0, 2), column("sep_conv_3x3")] = 2.0
    normal[edge_index(1, 2), column("skip_connect")] = 1.0
    normal[edge_index(0, 3), column("max_pool_3x3")] = 1.0  # A = 0.280, dropped
    normal[edge_index(1, 3), column("avg_pool_3x3")] = 3.0  # A = 0.741
    normal[edge_index(2, 3), column("dil_conv_3x3")] = 2.0  # A = 0.513
    normal[edge_index(0, 4), column("sep_conv_5x5")] = 2.5  # A = 0.635
    # Edge 1->4 stays all zero: A = 1/8, dropped.
    normal[edge_index(2, 4), NONE_INDEX] = 5.0
    normal[edge_index(2, 4), column("sep_conv_3x3")] = 4.0  # A = e^4 / (e^5 + e^4 + 6) = 0.261, dropped
    normal[edge_index(3, 4), column("dil_conv_5x5")] = 3.5  # A = 0.825
    normal[edge_index(0, 5), column("avg_pool_3x3")] = 1.0
    normal[edge_index(1, 5), column("sep_conv_3x3")] = 4.0
    normal[edge_index(2, 5), column("max_pool_3x3")] = 1.0
    normal[edge_index(3, 5), column("dil_conv_3x3")] = 1.0
    normal[edge_index(4, 5), column("skip_connect")] = 2.0

    # Reduction cell: alpha is all zero, so every op ties and max_pool_3x3 (the
    # lowest column after none) wins. Beta alone picks the edges.
    reduce_beta = beta["reduce"]
    reduce_beta[edge_index(1, 2)] = math.log(3.0)  # B = (1/4, 3/4) on node 2
    reduce_beta[edge_index(1, 3)] = 1.0
    reduce_beta[edge_index(2, 3)] = 2.0
    reduce_beta[edge_index(0, 4)] = 2.0
    reduce_beta[edge_index(2, 4)] = 1.0
    reduce_beta[edge_index(3, 5)] = 3.0
    reduce_beta[edge_index(4, 5)] = 2.0

    genotype = derive_genotype(alpha, beta)

    assert genotype.normal == (
        ("sep_conv_3x3", 0),
        ("skip_connect", 1),
        ("avg_pool_3x3", 1),
        ("dil_conv_3x3", 2),
        ("sep_conv_5x5", 0),
        ("dil_conv_5x5", 3),
        ("sep_conv_3x3", 1),
        ("skip_connect", 4),
    )
    assert genotype.reduce == (
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 1),
        ("max_pool_3x3", 2),
        ("max_pool_3x3", 0),
        ("max_pool_3x3", 2),
        ("max_pool_3x3", 3),
        ("max_pool_3x3", 4),
    )
    assert genotype.normal_concat == CONCAT
    assert genotype.reduce_concat == CONCAT


def test_edge_weights_softmax_per_node():
    beta = torch.zeros(NUM_EDGES)
    beta[edge_index(1, 2)] = math.log(3.0)

    weights = edge_weights(beta)

    assert weights[edge_index(0, 2)].item() == pytest.approx(0.25)
    assert weights[edge_index(1, 2)].item() == pytest.approx(0.75)
    assert weights[edge_index(0, 3)].item() == pytest.approx(1 / 3)
    assert weights[edge_index(4, 5)].item() == pytest.approx(1 / 5)
    for target in (2, 3, 4, 5):
        assert weights[edges_into(target)].sum().item() == pytest.approx(1.0), target


def test_edge_weights_keeps_gradient():
    beta = torch.randn(NUM_EDGES, requires_grad=True)

    weights = edge_weights(beta)
    weights[edge_index(0, 5)].backward()

    assert beta.grad is not None
    assert beta.grad[edges_into(5)].abs().sum().item() > 0
    assert beta.grad[edges_into(2)].abs().sum().item() == 0


def test_derive_never_picks_none():
    alpha, beta = random_parameters(seed=7)
    for cell in alpha:
        alpha[cell][:, NONE_INDEX] = 10.0

    genotype = derive_genotype(alpha, beta)

    for cell in ("normal", "reduce"):
        for source, target, op in genotype.edges(cell):
            assert op != "none", (cell, source, target)
            row = alpha[cell][edge_index(source, target)].clone()
            row[NONE_INDEX] = -math.inf
            assert op == PRIMITIVES[int(row.argmax())], (cell, source, target)


def test_derive_beta_drops_strong_edge():
    alpha, beta = zero_parameters()
    alpha["normal"][edge_index(0, 3), column("sep_conv_5x5")] = 4.0  # A = 0.886
    alpha["normal"][edge_index(1, 3), column("skip_connect")] = 1.0  # A = 0.280
    alpha["normal"][edge_index(2, 3), column("skip_connect")] = 1.0  # A = 0.280

    uniform = derive_genotype(alpha, beta)
    beta["normal"][edge_index(0, 3)] = -5.0  # B = 0.0034, score 0.003 < 0.139
    weak_beta = derive_genotype(alpha, beta)

    assert uniform.normal[2:4] == (("sep_conv_5x5", 0), ("skip_connect", 1))
    assert weak_beta.normal[2:4] == (("skip_connect", 1), ("skip_connect", 2))
    assert weak_beta.normal[:2] == uniform.normal[:2]
    assert weak_beta.normal[4:] == uniform.normal[4:]


def test_derive_ties_go_to_lower_index():
    alpha, beta = zero_parameters()

    genotype = derive_genotype(alpha, beta)

    expected = (("max_pool_3x3", 0), ("max_pool_3x3", 1)) * 4
    assert genotype.normal == expected
    assert genotype.reduce == expected


def test_derive_tied_edges_after_winner():
    alpha, beta = zero_parameters()
    alpha["normal"][edge_index(4, 5), column("dil_conv_5x5")] = 2.0

    genotype = derive_genotype(alpha, beta)

    # Node 5 keeps edge 4->5 and, of the four tied edges, the one from node 0.
    assert genotype.normal[6:] == (("max_pool_3x3", 0), ("dil_conv_5x5", 4))


def test_derive_rejects_bad_shape():
    alpha, beta = zero_parameters()
    alpha["reduce"] = torch.zeros(NUM_EDGES, len(PRIMITIVES) - 1)

    with pytest.raises(ValueError, match=r"alpha\['reduce'\] must have shape"):
        derive_genotype(alpha, beta)


def test_derive_rejects_nan():
    alpha, beta = zero_parameters()
    beta["normal"][3] = math.nan

    with pytest.raises(ValueError, match="NaN"):
        derive_genotype(alpha, beta)


# ---------------------------------------------------------------------------
# Text and JSON forms


@pytest.mark.parametrize("name", sorted(KNOWN_GENOTYPES))
def test_darts_text_round_trip(name):
    genotype = KNOWN_GENOTYPES[name]

    text = genotype.to_darts_text()

    assert text.startswith("Genotype(normal=[('")
    assert parse_darts_text(text) == genotype


def test_published_genotypes_keep_paper_order():
    darts_v1 = KNOWN_GENOTYPES["DARTS_V1"]

    assert set(KNOWN_GENOTYPES) == {"DARTS_V1", "DARTS_V2", "PC_DARTS_cifar", "PC_DARTS_image"}
    assert darts_v1.normal[:2] == (("sep_conv_3x3", 1), ("sep_conv_3x3", 0))
    assert KNOWN_GENOTYPES["PC_DARTS_image"].normal[7] == ("dil_conv_5x5", 4)


def test_parse_pasted_multiline_text():
    pasted = """
    PC_DARTS_image = Genotype(
        normal=[('skip_connect', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 0), ('skip_connect', 1),
                ('sep_conv_3x3', 1), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('dil_conv_5x5', 4)],
        normal_concat=range(2, 6),
        reduce=[('sep_conv_3x3', 0), ('skip_connect', 1), ('dil_conv_5x5', 2), ('max_pool_3x3', 1),
                ('sep_conv_3x3', 2), ('sep_conv_3x3', 1), ('sep_conv_5x5', 0), ('sep_conv_3x3', 3)],
        reduce_concat=range(2, 6)
    )
    """

    genotype = parse_darts_text(pasted)

    assert genotype == KNOWN_GENOTYPES["PC_DARTS_image"]
    assert genotype.normal_concat == CONCAT


def test_parse_without_prefix_and_with_lists():
    text = (
        '(normal=[["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["sep_conv_3x3", 0], ["sep_conv_3x3", 1], '
        '["sep_conv_3x3", 1], ["skip_connect", 0], ["skip_connect", 0], ["dil_conv_3x3", 2]], '
        "normal_concat=[2, 3, 4, 5], "
        "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
        "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
        "reduce_concat=(2, 3, 4, 5))"
    )

    assert parse_darts_text(text) == KNOWN_GENOTYPES["DARTS_V2"]


def test_parse_pairs_grouped_per_node():
    pairs = KNOWN_GENOTYPES["DARTS_V1"].normal
    grouped = [list(pairs[index : index + 2]) for index in range(0, 8, 2)]
    reduce = list(KNOWN_GENOTYPES["DARTS_V1"].reduce)
    text = (
        f"Genotype(normal={grouped}, normal_concat=range(2, 6), "
        f"reduce={reduce}, reduce_concat=range(2, 6))"
    )

    assert parse_darts_text(text) == KNOWN_GENOTYPES["DARTS_V1"]


def test_parse_rejects_code():
    text = (
        "Genotype(normal=__import__('os').getcwd(), normal_concat=[2, 3, 4, 5], "
        "reduce=[], reduce_concat=[2, 3, 4, 5])"
    )

    with pytest.raises(GenotypeError, match="not a literal"):
        parse_darts_text(text)


def test_parse_rejects_missing_field():
    text = KNOWN_GENOTYPES["DARTS_V2"].to_darts_text().replace(", reduce_concat=[2, 3, 4, 5]", "")

    with pytest.raises(GenotypeError, match="missing reduce_concat"):
        parse_darts_text(text)


def test_json_round_trip():
    genotype = KNOWN_GENOTYPES["PC_DARTS_cifar"]

    data = genotype.to_dict()
    restored = Genotype.from_json(genotype.to_json(indent=2))

    assert data["normal"][0] == ["sep_conv_3x3", 1]
    assert data["reduce_concat"] == [2, 3, 4, 5]
    assert restored == genotype
    assert hash(restored) == hash(genotype)


# ---------------------------------------------------------------------------
# Validation


def test_unknown_operation_lists_valid_ones():
    pairs = [("sep_conv_3x3", 0), ("conv_7x7", 1)] + [("skip_connect", 0), ("skip_connect", 1)] * 3

    with pytest.raises(GenotypeError) as caught:
        Genotype(normal=pairs, normal_concat=CONCAT, reduce=pairs, reduce_concat=CONCAT)

    message = str(caught.value)
    assert "'conv_7x7'" in message
    for op in GENOTYPE_OPERATIONS:
        assert op in message, op


def test_none_operation_rejected():
    pairs = list(KNOWN_GENOTYPES["DARTS_V2"].normal)
    pairs[3] = ("none", 1)

    with pytest.raises(GenotypeError, match="'none' cannot appear"):
        Genotype(normal=pairs, normal_concat=CONCAT, reduce=pairs, reduce_concat=CONCAT)


def test_source_after_target_rejected():
    pairs = list(KNOWN_GENOTYPES["DARTS_V2"].normal)
    pairs[1] = ("sep_conv_3x3", 2)  # node 2 cannot take its own output

    with pytest.raises(GenotypeError, match="source node 2 is invalid"):
        Genotype(normal=pairs, normal_concat=CONCAT, reduce=pairs, reduce_concat=CONCAT)


def test_odd_pair_count_rejected():
    pairs = list(KNOWN_GENOTYPES["DARTS_V2"].normal)[:7]

    with pytest.raises(GenotypeError, match="got 7"):
        Genotype(normal=pairs, normal_concat=CONCAT, reduce=pairs, reduce_concat=CONCAT)


def test_concat_outside_cell_rejected():
    pairs = KNOWN_GENOTYPES["DARTS_V2"].normal

    with pytest.raises(GenotypeError, match="invalid node 6"):
        Genotype(normal=pairs, normal_concat=(2, 3, 4, 6), reduce=pairs, reduce_concat=CONCAT)


def test_genotype_edges_and_skip_count():
    genotype = KNOWN_GENOTYPES["DARTS_V2"]

    assert genotype.edges("normal")[7] == (2, 5, "dil_conv_3x3")
    assert genotype.skip_connect_count() == 2
    assert genotype.skip_connect_count("reduce") == 3
    with pytest.raises(GenotypeError, match="unknown cell type"):
        genotype.skip_connect_count("reduction")


# ---------------------------------------------------------------------------
# Loading


def test_load_genotype_from_json_file(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text(KNOWN_GENOTYPES["DARTS_V1"].to_json(indent=2))

    assert load_genotype(str(path)) == KNOWN_GENOTYPES["DARTS_V1"]
    assert load_genotype(path) == KNOWN_GENOTYPES["DARTS_V1"]


def test_load_genotype_from_text_file(tmp_path):
    path = tmp_path / "genotype.txt"
    path.write_text(KNOWN_GENOTYPES["PC_DARTS_image"].to_darts_text() + "\n")

    assert load_genotype(str(path)) == KNOWN_GENOTYPES["PC_DARTS_image"]


def test_load_genotype_from_strings():
    darts_v2 = KNOWN_GENOTYPES["DARTS_V2"]

    assert load_genotype(darts_v2.to_darts_text()) == darts_v2
    assert load_genotype(darts_v2.to_json()) == darts_v2
    assert load_genotype('{"genotype": ' + darts_v2.to_json() + ', "epoch": 49}') == darts_v2


def test_load_genotype_by_name():
    assert load_genotype("PC_DARTS_cifar") == KNOWN_GENOTYPES["PC_DARTS_cifar"]
    assert load_genotype("pc_darts_cifar") == KNOWN_GENOTYPES["PC_DARTS_cifar"]
    assert load_genotype("  DARTS_V2 ") == KNOWN_GENOTYPES["DARTS_V2"]


def test_load_unknown_name_lists_known():
    with pytest.raises(GenotypeError) as caught:
        load_genotype("DARTS_V3")

    message = str(caught.value)
    assert "'DARTS_V3'" in message
    for name in KNOWN_GENOTYPES:
        assert name in message, name


def test_load_missing_file_named(tmp_path):
    missing = tmp_path / "absent" / "genotype.json"

    with pytest.raises(GenotypeError, match="not found"):
        load_genotype(str(missing))


def test_load_invalid_file_names_path(tmp_path):
    path = tmp_path / "genotype.json"
    path.write_text('{"normal": []}')

    with pytest.raises(GenotypeError) as caught:
        load_genotype(str(path))

    assert str(path) in str(caught.value)
    assert "missing normal_concat" in str(caught.value)


# ---------------------------------------------------------------------------
# Text table and figures


def test_genotype_to_text_lists_edges():
    text = genotype_to_text(KNOWN_GENOTYPES["DARTS_V2"])

    assert "Normal cell" in text
    assert "Reduction cell" in text
    assert "dil_conv_3x3" in text
    assert "c_{k-2}" in text
    assert "skip_connect edges: 2 of 8" in text


def test_plot_genotype_writes_png(tmp_path):
    path = tmp_path / "figures" / "genotype.png"

    plot_genotype(KNOWN_GENOTYPES["PC_DARTS_cifar"], path)

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_plot_cell_returns_figure(tmp_path):
    path = tmp_path / "reduce.png"

    figure = plot_cell(KNOWN_GENOTYPES["DARTS_V1"], "reduce", path=path)

    assert len(figure.axes) == 1
    assert path.stat().st_size > 10_000


def test_plot_arch_heatmaps_writes_png(tmp_path):
    alpha, beta = random_parameters(seed=3)
    path = tmp_path / "alpha.png"

    figure = plot_arch_heatmaps(alpha, beta, path=path)

    assert len(figure.axes) >= 4
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
