"""Partial aggregates per (key, window) as Arrow tables, merged with ``group_by``.

State is one *partials* table (a row per key and window: counts, sums, min/max,
first/last by event time, emission flags) plus one *values* table per distinct
count or quantile (the window's kept values; exact, fine for bounded windows).
Every step is an Arrow ``group_by().aggregate()`` or numpy over whole columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.stream.config import Aggregation

WS, WE, T = "__ws", "__we", "__t"
FIRED, DIRTY = "__fired", "__dirty"
WINDOW_TYPE = pa.timestamp("us", tz="UTC")
_KEEP_NULLS = pc.ScalarAggregateOptions(skip_nulls=False)
Spec = tuple[str, str, Any, str]  # (input column, function, options, output name)


def value_aggs(aggs: Sequence[Aggregation]) -> list[Aggregation]:
    """Aggregations whose state is a values table rather than partial columns."""
    return [a for a in aggs if a.fn in ("distinct", "quantile")]


def _raw_specs(aggs: Sequence[Aggregation]) -> list[Spec]:
    specs: list[Spec] = [
        (T, "count", pc.CountOptions(mode="all"), "__n"),
        (T, "min", None, "__ft"),
        (T, "max", None, "__lt"),
    ]
    for a in aggs:
        col, name = a.column or T, a.as_
        if a.fn in ("count", "mean") and a.column is not None:
            specs.append((col, "count", None, f"{name}__c"))
        if a.fn in ("sum", "mean"):
            specs.append((col, "sum", None, f"{name}__s"))
        if a.fn in ("min", "max"):
            specs.append((col, a.fn, None, f"{name}__m"))
        if a.fn in ("first", "last"):
            specs.append((col, a.fn, _KEEP_NULLS, f"{name}__v"))
    return specs


def _merge_specs(aggs: Sequence[Aggregation]) -> list[Spec]:
    merge_fn = {"count": "sum", "sum": "sum", "min": "min", "max": "max", "first": "first"}
    specs: list[Spec] = []
    for _, fn, _opts, out in _raw_specs(aggs):
        fn2 = merge_fn.get(fn, fn)
        if out in ("__ft", "__lt"):
            fn2 = "min" if out == "__ft" else "max"
        opts = _KEEP_NULLS if fn2 in ("first", "last") else None
        specs.append((out, fn2, opts, out))
    return [*specs, (FIRED, "any", None, FIRED), (DIRTY, "any", None, DIRTY)]


def _group(table: pa.Table, by: list[str], specs: list[Spec], sort_by: str | None) -> pa.Table:
    """``group_by(by).aggregate(specs)`` with outputs renamed; ordered if ``sort_by``."""
    if sort_by is not None:
        table = table.take(pc.sort_indices(table, sort_keys=[(sort_by, "ascending")]))
    agg = [(c, f, o) if o is not None else (c, f) for c, f, o, _ in specs]
    # Single-threaded: an engine holds one key partition and partitions are the unit of
    # parallelism (one actor each); Arrow's thread pool per 100K-row batch cost ~15% here.
    out = table.group_by(by, use_threads=False).aggregate(agg)
    outs = [n for _, _, _, n in specs]
    # Rename by position: two specs may share an input (sum for both sum and mean).
    if out.column_names[: len(by)] == by:
        return out.rename_columns([*by, *outs])
    return out.rename_columns([*outs, *by]).select([*by, *outs])


def _ordered(aggs: Sequence[Aggregation]) -> bool:
    """Only first/last depend on row order; without them grouping may run unsorted."""
    return any(a.fn in ("first", "last") for a in aggs)


def partial_from_pairs(pairs: pa.Table, keys: list[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """Partials of raw (event, window) pairs; first/last ordered by event time."""
    out = _group(pairs, [*keys, WS, WE], _raw_specs(aggs), sort_by=T if _ordered(aggs) else None)
    n = out.num_rows
    out = out.append_column(FIRED, pa.array(np.zeros(n, dtype=bool)))
    return out.append_column(DIRTY, pa.array(np.ones(n, dtype=bool)))


def merge_partials(partials: pa.Table, keys: list[str], aggs: Sequence[Aggregation]) -> pa.Table:
    """Combine rows of the same (key, window): sums add, min/max fold, first/last by time."""
    by = [*keys, WS, WE]
    specs = _merge_specs(aggs)
    lasts = [s for s in specs if s[1] == "last"]
    main = _group(
        partials,
        by,
        [s for s in specs if s[1] != "last"],
        sort_by="__ft" if _ordered(aggs) else None,
    )
    if not lasts:
        return main
    late = _group(partials, by, lasts, sort_by="__lt")
    # Both hold the same groups; sorting by the group columns aligns them row for row.
    order = [(c, "ascending") for c in by]
    main = main.take(pc.sort_indices(main, sort_keys=order))
    late = late.take(pc.sort_indices(late, sort_keys=order))
    for _, _, _, out in lasts:
        main = main.append_column(out, late.column(out))
    return main


def values_from_pairs(pairs: pa.Table, keys: list[str], agg: Aggregation) -> pa.Table:
    """The kept values of one distinct/quantile aggregation (nulls are not kept)."""
    assert agg.column is not None
    table = pairs.select([*keys, WS, WE, agg.column]).rename_columns([*keys, WS, WE, "__v"])
    table = table.filter(pc.is_valid(table.column("__v")))
    return dedupe(table) if agg.fn == "distinct" else table


def dedupe(values: pa.Table) -> pa.Table:
    """Distinct rows of a values table (exact distinct sets per window)."""
    return values.group_by(values.column_names).aggregate([])


def match_windows(
    codes_a: np.ndarray, starts_a: np.ndarray, codes_b: np.ndarray, starts_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
    """Common ids for (key code, window start) in two row sets, and the number of ids."""
    both = np.stack([np.r_[codes_a, codes_b], np.r_[starts_a, starts_b]], axis=1)
    if len(both) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64), 0
    uniq, inverse = np.unique(both, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[: len(codes_a)], inverse[len(codes_a) :], len(uniq)


def quantile_nearest(groups: np.ndarray, values: np.ndarray, n_groups: int, q: float) -> pa.Array:
    """Nearest-rank quantile per group: the ``ceil(q * n)``-th smallest (min for q=0)."""
    counts = np.bincount(groups, minlength=n_groups)
    order = np.lexsort((values, groups))
    first = np.cumsum(counts) - counts
    rank = np.clip(np.ceil(q * counts).astype(np.int64) - 1, 0, None)
    pick = np.minimum(first + rank, max(len(values) - 1, 0))
    sorted_values = values[order] if len(values) else np.zeros(1, dtype=values.dtype)
    return pa.array(sorted_values[pick], mask=counts == 0)


def finalize_columns(emitted: pa.Table, aggs: Sequence[Aggregation]) -> dict[str, pa.Array]:
    """Output columns computable from partials alone (not distinct/quantile)."""
    out: dict[str, pa.Array] = {}
    for a in aggs:
        name = a.as_
        if a.fn == "count":
            out[name] = emitted.column(f"{name}__c" if a.column else "__n")
        elif a.fn == "sum":
            out[name] = emitted.column(f"{name}__s")
        elif a.fn == "mean":
            total = pc.cast(emitted.column(f"{name}__s"), pa.float64())
            out[name] = pc.divide(total, pc.cast(emitted.column(f"{name}__c"), pa.float64()))
        elif a.fn in ("min", "max"):
            out[name] = emitted.column(f"{name}__m")
        elif a.fn in ("first", "last"):
            out[name] = emitted.column(f"{name}__v")
    return out
