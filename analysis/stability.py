"""Stability of the found cell: genotype overlap across seeds and operation frequencies per edge.

A genotype is compared as the multiset of its chosen (edge, operation)
pairs: ``(cell, source node, target node, operation)`` for both cells, 16
pairs for the 4-node DARTS cell.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.compare import default_config_columns
from analysis.frames import check_columns, finished_runs
from idarts.genotypes import Genotype
from idarts.search_space import CELL_TYPES

ChosenPair = tuple[str, int, int, str]


def chosen_pairs(genotype: Genotype, cells: Sequence[str] = CELL_TYPES) -> Counter[ChosenPair]:
    """Return the multiset of ``(cell, source, target, operation)`` pairs of ``genotype``."""
    return Counter((cell, source, target, op) for cell in cells for source, target, op in genotype.edges(cell))


def genotype_overlap(first: Genotype, second: Genotype, cells: Sequence[str] = CELL_TYPES) -> float:
    """Return the overlap coefficient of two genotypes' chosen (edge, operation) pairs, in [0, 1].

    It is |A ∩ B| / min(|A|, |B|). For two genotypes of the same size, this is
    the fraction of chosen pairs that they share, and 1 means the same cells.
    """
    pairs_a, pairs_b = chosen_pairs(first, cells), chosen_pairs(second, cells)
    smaller = min(sum(pairs_a.values()), sum(pairs_b.values()))
    if smaller == 0:
        return math.nan
    return sum((pairs_a & pairs_b).values()) / smaller


def _edge_label(cell: str, source: int, target: int) -> str:
    return f"{cell} {source}->{target}"


def _config_groups(runs: pd.DataFrame, by: list[str]) -> list[tuple[tuple, pd.DataFrame]]:
    if not by:
        return [((), runs)]
    groups = []
    for key, group in runs.groupby(by, dropna=False, sort=True):
        groups.append((key if isinstance(key, tuple) else (key,), group))
    return groups


def _runs_with_genotypes(df: pd.DataFrame, finished_only: bool) -> pd.DataFrame:
    check_columns(df, ["genotype"], "genotype analysis")
    runs = finished_runs(df) if finished_only else df
    return runs[has_genotype(runs)]


def has_genotype(runs: pd.DataFrame) -> pd.Series:
    """Return a boolean mask of the rows whose ``genotype`` is a parsed :class:`Genotype`."""
    return runs["genotype"].map(lambda genotype: isinstance(genotype, Genotype)).astype(bool)


def operation_frequencies(
    df: pd.DataFrame, by: Sequence[str] | None = None, finished_only: bool = True
) -> pd.DataFrame:
    """Count, per configuration, how often each operation was chosen on each edge.

    Args:
        df: a runs frame with a ``genotype`` column.
        by: the configuration columns; default the swept settings except ``seed``.
        finished_only: use only runs with status FINISHED.

    Returns:
        One row per (configuration, cell, edge, operation) that some run
        chose: the ``by`` columns, ``cell``, ``source``, ``target``, ``edge``
        (a label such as ``"normal 0->2"``), ``operation``, ``count`` and
        ``frequency`` (count divided by the configuration's runs), sorted
        by configuration, cell, target, source and decreasing count.
    """
    by = list(default_config_columns(df) if by is None else by)
    check_columns(df, by, "operation_frequencies(by=...)")
    runs = _runs_with_genotypes(df, finished_only)

    rows = []
    for key, group in _config_groups(runs, by):
        counts: Counter[ChosenPair] = Counter()
        for genotype in group["genotype"]:
            counts.update(set(chosen_pairs(genotype)))
        for (cell, source, target, op), count in counts.items():
            rows.append(
                {
                    **dict(zip(by, key)),
                    "cell": cell,
                    "source": source,
                    "target": target,
                    "edge": _edge_label(cell, source, target),
                    "operation": op,
                    "count": count,
                    "frequency": count / len(group),
                }
            )
    columns = [*by, "cell", "source", "target", "edge", "operation", "count", "frequency"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["cell_order"] = frame["cell"].map(CELL_TYPES.index)
    frame = frame.sort_values([*by, "cell_order", "target", "source", "count", "operation"],
                              ascending=[True] * len(by) + [True, True, True, False, True], kind="stable")
    return frame.drop(columns="cell_order").reset_index(drop=True)


def genotype_stability(
    df: pd.DataFrame, by: Sequence[str] | None = None, finished_only: bool = True
) -> pd.DataFrame:
    """Measure how much the genotypes of one configuration agree across its runs (seeds).

    Args:
        df: a runs frame with a ``genotype`` column.
        by: the configuration columns; default the swept settings except ``seed``.
        finished_only: use only runs with status FINISHED.

    Returns:
        One row per configuration with the ``by`` columns, ``runs`` (runs with
        a genotype) and ``pairs`` (pairs of runs compared). ``mean_overlap``,
        ``min_overlap`` and ``max_overlap`` summarize :func:`genotype_overlap`
        over all pairs of runs, both cells together, and
        ``mean_overlap_normal`` and ``mean_overlap_reduce`` per cell. Then
        come ``distinct_genotypes`` and ``top_operations``, a dict from edge
        label (``"normal 0->2"``) to ``(operation, frequency)`` of the most
        frequent operation on every edge that some run chose. Ties go to the
        operation first in alphabetical order. Overlaps are NaN for a single
        run.
    """
    by = list(default_config_columns(df) if by is None else by)
    check_columns(df, by, "genotype_stability(by=...)")
    runs = _runs_with_genotypes(df, finished_only)
    frequencies = operation_frequencies(runs, by=by, finished_only=False)

    rows = []
    for key, group in _config_groups(runs, by):
        genotypes = list(group["genotype"])
        combinations = list(itertools.combinations(genotypes, 2))
        overlaps = np.array([genotype_overlap(a, b) for a, b in combinations], dtype=float)
        per_cell = {
            cell: np.array([genotype_overlap(a, b, cells=(cell,)) for a, b in combinations], dtype=float)
            for cell in CELL_TYPES
        }

        mask = np.ones(len(frequencies), dtype=bool)
        for name, value in zip(by, key):
            column = frequencies[name]
            mask &= (column.isna() if _is_missing(value) else column == value).to_numpy()
        top = {}
        for row in frequencies[mask].itertuples(index=False):
            if row.edge not in top:
                top[row.edge] = (row.operation, float(row.frequency))

        rows.append(
            {
                **dict(zip(by, key)),
                "runs": len(genotypes),
                "pairs": len(combinations),
                "mean_overlap": float(overlaps.mean()) if len(overlaps) else math.nan,
                "min_overlap": float(overlaps.min()) if len(overlaps) else math.nan,
                "max_overlap": float(overlaps.max()) if len(overlaps) else math.nan,
                "mean_overlap_normal": float(per_cell["normal"].mean()) if len(overlaps) else math.nan,
                "mean_overlap_reduce": float(per_cell["reduce"].mean()) if len(overlaps) else math.nan,
                "distinct_genotypes": len(set(genotypes)),
                "top_operations": top,
            }
        )
    columns = [*by, "runs", "pairs", "mean_overlap", "min_overlap", "max_overlap",
               "mean_overlap_normal", "mean_overlap_reduce", "distinct_genotypes", "top_operations"]
    return pd.DataFrame(rows, columns=columns).astype({"runs": "int64", "pairs": "int64"})


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA
