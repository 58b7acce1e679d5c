"""Discrete cell architectures (genotypes): validation, text and JSON forms, derivation.

A genotype lists, for every intermediate node of the normal cell and of the
reduction cell, the two ``(operation, source node)`` pairs that feed it. Node
numbers follow :mod:`idarts.search_space`: 0 and 1 are the cell inputs
(``c_{k-2}`` and ``c_{k-1}``), 2 to 5 are the intermediate nodes, and the cell
output concatenates the nodes listed in ``*_concat``.

Three text forms are supported. ``to_darts_text`` and ``parse_darts_text``
handle the ``Genotype(normal=[...], ...)`` form that papers publish.
``to_json`` and ``from_json`` handle the JSON form that runs write to
``genotype.json``. ``load_genotype`` accepts either form, a path, or a name from
``KNOWN_GENOTYPES``.
"""

from __future__ import annotations

import ast
import json
import logging
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import Tensor

from idarts.search_space import (
    CELL_TYPES,
    EDGES,
    NONE_INDEX,
    NUM_EDGES,
    NUM_INPUT_NODES,
    PRIMITIVES,
    edges_into,
)

logger = logging.getLogger(__name__)

GENOTYPE_OPERATIONS: tuple[str, ...] = tuple(op for op in PRIMITIVES if op != "none")
"""Operations allowed in a genotype: every primitive except ``none``."""

GENOTYPE_FIELDS: tuple[str, ...] = ("normal", "normal_concat", "reduce", "reduce_concat")
"""Field names, in the positional order of the published ``Genotype`` namedtuple."""

PUBLISHED_GENOTYPES_PATH = Path(__file__).resolve().parent / "resources" / "published_genotypes.json"

INPUTS_PER_NODE = 2

OperationPair = tuple[str, int]


class GenotypeError(ValueError):
    """Invalid genotype, or text that cannot be read as a genotype."""


def _valid_operations_text() -> str:
    return ", ".join(GENOTYPE_OPERATIONS)


def _check_cell_name(cell: str) -> None:
    if cell not in CELL_TYPES:
        raise GenotypeError(f"unknown cell type {cell!r}. Use one of: {', '.join(CELL_TYPES)}.")


def _normalize_pairs(cell: str, pairs: Any) -> tuple[OperationPair, ...]:
    """Validate one cell's pair list and return it as a tuple of ``(str, int)`` tuples."""
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise GenotypeError(
            f"{cell}: expected a list of (operation, source node) pairs, got {pairs!r}"
        )
    pairs = list(pairs)

    if not pairs or len(pairs) % INPUTS_PER_NODE != 0:
        raise GenotypeError(
            f"{cell}: got {len(pairs)} (operation, source node) pairs, but every intermediate "
            f"node takes exactly {INPUTS_PER_NODE} inputs, so the count must be a positive even "
            f"number (8 for the 4-node DARTS cell)"
        )

    normalized = []
    for position, pair in enumerate(pairs):
        target = NUM_INPUT_NODES + position // INPUTS_PER_NODE
        where = f"{cell}, pair {position} (input of node {target})"

        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise GenotypeError(f"{where}: expected an (operation, source node) pair, got {pair!r}")
        op, source = pair

        if op == "none":
            raise GenotypeError(
                f"{where}: operation 'none' cannot appear in a genotype because it removes the "
                f"edge. Valid operations: {_valid_operations_text()}"
            )
        if op not in GENOTYPE_OPERATIONS:
            raise GenotypeError(
                f"{where}: unknown operation {op!r}. Valid operations: {_valid_operations_text()}"
            )

        if isinstance(source, bool) or not isinstance(source, numbers.Integral):
            raise GenotypeError(f"{where}: source node must be an integer, got {source!r}")
        source = int(source)
        if not 0 <= source < target:
            raise GenotypeError(
                f"{where}: source node {source} is invalid. Node {target} can only take input "
                f"from nodes 0 to {target - 1}"
            )

        normalized.append((op, source))
    return tuple(normalized)


def _normalize_concat(cell: str, concat: Any, num_nodes: int) -> tuple[int, ...]:
    """Validate a concat list against a cell with ``num_nodes`` intermediate nodes."""
    first, last = NUM_INPUT_NODES, NUM_INPUT_NODES + num_nodes - 1
    if isinstance(concat, (str, bytes)) or not isinstance(concat, Iterable):
        raise GenotypeError(
            f"{cell}_concat: expected a list of node numbers, got {concat!r}"
        )
    nodes = list(concat)

    if not nodes:
        raise GenotypeError(f"{cell}_concat is empty. List the nodes {first} to {last} to concatenate")
    for node in nodes:
        if isinstance(node, bool) or not isinstance(node, numbers.Integral) or not first <= node <= last:
            raise GenotypeError(
                f"{cell}_concat: invalid node {node!r}. This cell's intermediate nodes are "
                f"{first} to {last}"
            )
    nodes = [int(node) for node in nodes]
    if len(set(nodes)) != len(nodes):
        raise GenotypeError(f"{cell}_concat lists a node twice: {nodes}")
    return tuple(nodes)


@dataclass(frozen=True)
class Genotype:
    """A discrete normal cell and reduction cell.

    ``normal`` and ``reduce`` hold two ``(operation, source node)`` pairs per
    intermediate node, in node order: pairs 0 and 1 feed node 2, pairs 2 and 3
    feed node 3, and so on. The constructor accepts lists and converts them to
    tuples, so genotypes compare equal and hash regardless of how they were
    built. It raises :class:`GenotypeError` for an unknown or ``none``
    operation, a source node that is not earlier than its target, an odd pair
    count, or a concat node that is not an intermediate node.
    """

    normal: tuple[OperationPair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[OperationPair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in CELL_TYPES:
            pairs = _normalize_pairs(cell, getattr(self, cell))
            num_nodes = len(pairs) // INPUTS_PER_NODE
            concat = _normalize_concat(cell, getattr(self, f"{cell}_concat"), num_nodes)
            # The dataclass is frozen, so normalized values are written past its __setattr__.
            object.__setattr__(self, cell, pairs)
            object.__setattr__(self, f"{cell}_concat", concat)

    def _pairs(self, cell: str) -> tuple[OperationPair, ...]:
        _check_cell_name(cell)
        return self.normal if cell == "normal" else self.reduce

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form: lists of ``[operation, source]`` lists and concat lists."""
        return {
            "normal": [[op, source] for op, source in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, source] for op, source in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self, indent: int | None = None) -> str:
        """Serialize :meth:`to_dict` as JSON."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Genotype:
        """Build a genotype from the :meth:`to_dict` form.

        All four fields are required. Other keys (such as ``source`` in the
        published-genotype file) are ignored.
        """
        if not isinstance(data, Mapping):
            raise GenotypeError(
                f"expected a JSON object with keys {', '.join(GENOTYPE_FIELDS)}, got {data!r}"
            )

        missing = [field for field in GENOTYPE_FIELDS if field not in data]
        if missing:
            raise GenotypeError(
                f"genotype is missing {', '.join(missing)}. Required keys: {', '.join(GENOTYPE_FIELDS)}"
            )

        return cls(
            normal=data["normal"],
            normal_concat=data["normal_concat"],
            reduce=data["reduce"],
            reduce_concat=data["reduce_concat"],
        )

    @classmethod
    def from_json(cls, text: str) -> Genotype:
        """Parse the :meth:`to_json` form."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise GenotypeError(f"invalid genotype JSON: {error}") from error
        return cls.from_dict(data)

    def to_darts_text(self) -> str:
        """Format the genotype as ``Genotype(normal=[('sep_conv_3x3', 1), ...], ...)``.

        This is the form that DARTS-family papers publish, and
        :func:`parse_darts_text` reads it back into an equal genotype.
        """
        parts = []
        for cell in CELL_TYPES:
            pairs = ", ".join(f"({op!r}, {source})" for op, source in self._pairs(cell))
            concat = list(getattr(self, f"{cell}_concat"))
            parts.append(f"{cell}=[{pairs}], {cell}_concat={concat}")
        return f"Genotype({', '.join(parts)})"

    def skip_connect_count(self, cell: str = "normal") -> int:
        """Count the ``skip_connect`` edges of ``cell`` ("normal" or "reduce")."""
        return sum(1 for op, _ in self._pairs(cell) if op == "skip_connect")

    def edges(self, cell: str) -> list[tuple[int, int, str]]:
        """List the edges of ``cell`` as ``(source node, target node, operation)``, in pair order."""
        return [
            (source, NUM_INPUT_NODES + position // INPUTS_PER_NODE, op)
            for position, (op, source) in enumerate(self._pairs(cell))
        ]


# ---------------------------------------------------------------------------
# DARTS text form


def _literal_value(node: ast.expr, field: str) -> Any:
    """Evaluate one argument node as a literal, allowing ``range(...)`` and ``list(...)``.

    Nothing is executed: ``range`` with literal integer arguments is expanded
    here, and everything else goes through :func:`ast.literal_eval`.
    """
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.keywords:
        if node.func.id == "range" and 1 <= len(node.args) <= 3:
            bounds = [_literal_value(arg, field) for arg in node.args]
            if all(isinstance(bound, int) and not isinstance(bound, bool) for bound in bounds):
                return list(range(*bounds))
        if node.func.id in ("list", "tuple") and len(node.args) == 1:
            return list(_literal_value(node.args[0], field))

    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError) as error:
        raise GenotypeError(
            f"{field}={ast.unparse(node)} is not a literal. Write lists of ('operation', source) "
            f"tuples, and lists of integers or range(a, b) for the concat fields"
        ) from error


def _flatten_node_groups(pairs: Any) -> Any:
    """Flatten ``[[pair, pair], [pair, pair], ...]`` (pairs grouped per node) into one list.

    Some releases group the two inputs of each node. A flat list, or anything
    that is not a list of groups, is returned unchanged for validation to judge.
    """
    if not isinstance(pairs, (list, tuple)) or not pairs:
        return pairs

    def is_group(item: Any) -> bool:
        return (
            isinstance(item, (list, tuple))
            and len(item) > 0
            and all(isinstance(pair, (list, tuple)) for pair in item)
        )

    if all(is_group(item) for item in pairs):
        return [pair for group in pairs for pair in group]
    return pairs


def _find_genotype_call(text: str) -> ast.Call:
    """Return the call node of the pasted text, which may lack the ``Genotype`` prefix."""
    try:
        module = ast.parse(text, mode="exec")
    except SyntaxError:
        module = None

    if module is not None and len(module.body) == 1:
        statement = module.body[0]
        if isinstance(statement, (ast.Expr, ast.Assign)) and isinstance(statement.value, ast.Call):
            return statement.value

    # Without the "Genotype" prefix the text is "(normal=..., ...)" or "normal=..., ...",
    # neither of which is a Python expression, so wrap it in a call.
    wrapped = f"Genotype{text}" if text.startswith("(") else f"Genotype({text})"
    try:
        expression = ast.parse(wrapped, mode="eval")
    except SyntaxError as error:
        raise GenotypeError(
            f"failed to parse genotype text ({error.msg}). Expected the form "
            f"Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], "
            f"reduce=[...], reduce_concat=[...])"
        ) from error
    assert isinstance(expression.body, ast.Call)
    return expression.body


def parse_darts_text(text: str) -> Genotype:
    """Parse the ``Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)`` form.

    The text is parsed, never evaluated. Accepted variations: an optional
    ``Genotype`` prefix or ``NAME = Genotype`` assignment, any whitespace and
    line breaks, tuples or lists, pairs grouped per node, positional arguments
    in namedtuple order, and ``range(2, 6)`` for the concat fields. Raises
    :class:`GenotypeError` for anything else, and for an invalid genotype.
    """
    stripped = text.strip()
    if not stripped:
        raise GenotypeError("genotype text is empty")
    call = _find_genotype_call(stripped)

    if len(call.args) > len(GENOTYPE_FIELDS):
        raise GenotypeError(
            f"Genotype takes at most {len(GENOTYPE_FIELDS)} positional arguments "
            f"({', '.join(GENOTYPE_FIELDS)}), got {len(call.args)}"
        )
    arguments: dict[str, ast.expr] = dict(zip(GENOTYPE_FIELDS, call.args))

    for keyword in call.keywords:
        if keyword.arg is None:
            raise GenotypeError("genotype text cannot use **kwargs. Write the four fields out")
        if keyword.arg not in GENOTYPE_FIELDS:
            raise GenotypeError(
                f"unknown genotype field {keyword.arg!r}. Fields: {', '.join(GENOTYPE_FIELDS)}"
            )
        if keyword.arg in arguments:
            raise GenotypeError(f"genotype field {keyword.arg!r} is given twice")
        arguments[keyword.arg] = keyword.value

    missing = [field for field in GENOTYPE_FIELDS if field not in arguments]
    if missing:
        raise GenotypeError(f"genotype text is missing {', '.join(missing)}")

    values = {field: _literal_value(node, field) for field, node in arguments.items()}
    for cell in CELL_TYPES:
        values[cell] = _flatten_node_groups(values[cell])
    return Genotype(**values)


# ---------------------------------------------------------------------------
# Published genotypes and loading


def _read_published_genotypes(path: Path) -> tuple[dict[str, Genotype], dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        entries = json.load(handle)

    genotypes, sources = {}, {}
    for name, entry in entries.items():
        try:
            genotypes[name] = Genotype.from_dict(entry)
        except GenotypeError as error:
            raise GenotypeError(f"{path}: entry {name!r}: {error}") from error
        sources[name] = entry.get("source", "")
    return genotypes, sources


_published, _sources = _read_published_genotypes(PUBLISHED_GENOTYPES_PATH)

KNOWN_GENOTYPES: Mapping[str, Genotype] = MappingProxyType(_published)
"""Published genotypes by name, read from ``resources/published_genotypes.json``."""

GENOTYPE_SOURCES: Mapping[str, str] = MappingProxyType(_sources)
"""Paper and search setting of each entry of :data:`KNOWN_GENOTYPES`."""


def _genotype_from_json_data(data: Any) -> Genotype:
    """Read a :meth:`Genotype.to_dict` object, or an object that nests one under ``"genotype"``."""
    if isinstance(data, Mapping) and "normal" not in data and isinstance(data.get("genotype"), Mapping):
        data = data["genotype"]
    return Genotype.from_dict(data)


def _genotype_from_text(text: str) -> Genotype:
    """Parse text that is either JSON (starts with ``{``) or the DARTS form."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as error:
            raise GenotypeError(f"invalid genotype JSON: {error}") from error
        return _genotype_from_json_data(data)
    return parse_darts_text(stripped)


def _read_genotype_file(path: Path) -> Genotype:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise GenotypeError(f"failed to read genotype file {path}: {error}") from error

    try:
        genotype = _genotype_from_text(text)
    except GenotypeError as error:
        raise GenotypeError(f"{path}: {error}") from error

    logger.debug("Loaded genotype from %s", path)
    return genotype


def _is_existing_file(spec: str) -> bool:
    try:
        return Path(spec).expanduser().is_file()
    except (OSError, ValueError):
        # A long pasted text can exceed the file name limit, and NUL bytes raise ValueError.
        return False


def load_genotype(spec: str | os.PathLike[str]) -> Genotype:
    """Load a genotype from a file path, a text form, or a published name.

    ``spec`` is tried in this order: an exact key of :data:`KNOWN_GENOTYPES`,
    an existing file (JSON or DARTS text, JSON may nest the genotype under
    ``"genotype"``), a JSON string, DARTS text (see :func:`parse_darts_text`),
    and a case-insensitive key of :data:`KNOWN_GENOTYPES`. Raises
    :class:`GenotypeError` when none of them matches. The message lists the
    known names, or names the missing file or the invalid field.
    """
    if isinstance(spec, os.PathLike):
        return _read_genotype_file(Path(spec))
    if not isinstance(spec, str):
        raise GenotypeError(f"genotype spec must be a string or a path, got {type(spec).__name__}")

    text = spec.strip()
    if not text:
        raise GenotypeError(f"genotype spec is empty. Known names: {', '.join(KNOWN_GENOTYPES)}")

    if text in KNOWN_GENOTYPES:
        return KNOWN_GENOTYPES[text]

    if _is_existing_file(text):
        return _read_genotype_file(Path(text).expanduser())

    if text.startswith("{") or ("normal" in text and ("(" in text or "[" in text)):
        return _genotype_from_text(text)

    matches = [name for name in KNOWN_GENOTYPES if name.lower() == text.lower()]
    if len(matches) == 1:
        return KNOWN_GENOTYPES[matches[0]]

    if text.endswith((".json", ".txt")) or os.sep in text:
        raise GenotypeError(f"genotype file not found: {text}")
    raise GenotypeError(
        f"unknown genotype {text!r}: not a file, JSON or Genotype(...) text, and not a known name. "
        f"Known names: {', '.join(KNOWN_GENOTYPES)}"
    )


# ---------------------------------------------------------------------------
# Derivation from the architecture parameters


def _node_edge_slices() -> list[tuple[int, slice]]:
    """Return ``(target node, slice of edge indices)`` per intermediate node."""
    slices = []
    for target in sorted({node for _, node in EDGES}):
        indices = edges_into(target)
        if indices != list(range(indices[0], indices[-1] + 1)):
            raise RuntimeError(f"edges into node {target} are not contiguous in EDGES: {indices}")
        slices.append((target, slice(indices[0], indices[-1] + 1)))
    return slices


_NODE_EDGE_SLICES = _node_edge_slices()


def edge_weights(beta_cell: Tensor) -> Tensor:
    """Return the edge weights B: a softmax of ``beta_cell`` over the edges entering each node.

    ``beta_cell`` has one entry per edge (shape ``(14,)``, rows in EDGES order)
    and the result has the same shape, dtype and device. The entries of the
    edges into one node sum to 1. The function is differentiable, so the
    supernet can use it in its forward pass.
    """
    if beta_cell.shape != (NUM_EDGES,):
        raise ValueError(
            f"beta of one cell must have shape ({NUM_EDGES},), got {tuple(beta_cell.shape)}"
        )

    # Edges into a node are contiguous and ordered by target, so concatenating per-node
    # softmaxes in node order keeps EDGES order.
    pieces = [torch.softmax(beta_cell[edge_slice], dim=0) for _, edge_slice in _NODE_EDGE_SLICES]
    return torch.cat(pieces)


def _cell_parameter(
    parameters: Mapping[str, Any], name: str, cell: str, shape: tuple[int, ...]
) -> Tensor:
    """Fetch ``parameters[cell]`` as a float64 CPU tensor and check its shape and values."""
    if cell not in parameters:
        raise ValueError(
            f"{name} has no entry for the {cell!r} cell. Keys present: {sorted(parameters)}"
        )

    value = torch.as_tensor(parameters[cell]).detach().to(device="cpu", dtype=torch.float64)
    if tuple(value.shape) != shape:
        raise ValueError(f"{name}[{cell!r}] must have shape {shape}, got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(
            f"{name}[{cell!r}] contains NaN or infinite values, so no genotype can be derived"
        )
    return value


def _best_operation(weights: list[float]) -> int:
    """Return the column of the largest non-``none`` weight, preferring the lower column on ties."""
    best = None
    for column, weight in enumerate(weights):
        if column == NONE_INDEX:
            continue
        if best is None or weight > weights[best]:
            best = column
    assert best is not None
    return best


def _derive_cell(alpha_cell: Tensor, beta_cell: Tensor) -> tuple[OperationPair, ...]:
    operation_weights = torch.softmax(alpha_cell, dim=-1).tolist()
    edge_weight = edge_weights(beta_cell).tolist()

    best_operations = [_best_operation(row) for row in operation_weights]
    strengths = [
        edge_weight[edge] * operation_weights[edge][best_operations[edge]] for edge in range(NUM_EDGES)
    ]

    pairs: list[OperationPair] = []
    for _, edge_slice in _NODE_EDGE_SLICES:
        candidates = range(edge_slice.start, edge_slice.stop)
        ranked = sorted(candidates, key=lambda edge: (-strengths[edge], edge))
        kept_edges = sorted(ranked[:INPUTS_PER_NODE], key=lambda edge: EDGES[edge][0])
        pairs.extend((PRIMITIVES[best_operations[edge]], EDGES[edge][0]) for edge in kept_edges)
    return tuple(pairs)


def derive_genotype(alpha: Mapping[str, Tensor], beta: Mapping[str, Tensor]) -> Genotype:
    """Derive the discrete genotype from the architecture parameters of a search.

    ``alpha[cell]`` is a 14x8 tensor (rows in EDGES order, columns in
    PRIMITIVES order) and ``beta[cell]`` has 14 entries, for cell in
    ("normal", "reduce"). With A = softmax(alpha) over operations and
    B = :func:`edge_weights` (beta), every intermediate node keeps the two
    incoming edges with the largest B[l] * max over non-none m of A[l, m],
    ties going to the lower edge index. Each kept edge gets its strongest
    operation other than ``none`` (ties to the lower column), and the two
    pairs of a node are listed by increasing source node. Both cells
    concatenate all intermediate nodes. Raises ``ValueError`` for a missing
    cell, a wrong shape, or NaN and infinite values.
    """
    cells = {}
    for cell in CELL_TYPES:
        alpha_cell = _cell_parameter(alpha, "alpha", cell, (NUM_EDGES, len(PRIMITIVES)))
        beta_cell = _cell_parameter(beta, "beta", cell, (NUM_EDGES,))
        cells[cell] = _derive_cell(alpha_cell, beta_cell)

    concat = tuple(target for target, _ in _NODE_EDGE_SLICES)
    return Genotype(
        normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"], reduce_concat=concat
    )
