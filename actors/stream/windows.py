"""Vectorised event-time window assignment (numpy over Arrow columns, no per-event loop).

Time is handled as int64 microseconds ("ticks") so window arithmetic is exact.
Assignment returns *pairs*: ``rows`` (indices into the batch) with the
``[start, end)`` of each window that row belongs to; sliding windows repeat a row
once per window (``np.repeat``). Sessions start as one ``[t, t + gap)`` interval per
event and are merged per key by :func:`merge_intervals`, both within a batch and
with the open sessions kept in the engine's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.stream.config import SessionWindow, SlidingWindow, TumblingWindow
from cluster.errors import InvalidInputError

TICKS_PER_S = 1_000_000


def seconds_to_ticks(seconds: float) -> int:
    """Seconds as integer microseconds (the engine's time unit)."""
    return round(seconds * TICKS_PER_S)


def to_ticks(column: pa.Array | pa.ChunkedArray, name: str) -> np.ndarray:
    """Event times as int64 microseconds; nulls become ``INT64_MIN`` (caller routes them)."""
    typ = column.type
    if pa.types.is_timestamp(typ):
        ticks = pc.cast(pc.cast(column, pa.timestamp("us", typ.tz)), pa.int64())
    elif pa.types.is_integer(typ):
        ticks = pc.multiply_checked(pc.cast(column, pa.int64()), TICKS_PER_S)
    elif pa.types.is_floating(typ):
        ticks = pc.cast(
            pc.round(pc.multiply(pc.cast(column, pa.float64()), TICKS_PER_S)), pa.int64()
        )
    else:
        raise InvalidInputError(
            field=f"time column {name!r}",
            value=str(typ),
            allowed="a timestamp or numeric (seconds) column",
        )
    filled = pc.fill_null(ticks, np.iinfo(np.int64).min)
    return np.asarray(filled, dtype=np.int64)


@dataclass(frozen=True)
class Pairs:
    """(row, window) memberships: ``rows[i]`` belongs to ``[starts[i], ends[i])``."""

    rows: np.ndarray
    starts: np.ndarray
    ends: np.ndarray


def assign(ticks: np.ndarray, window: TumblingWindow | SlidingWindow | SessionWindow) -> Pairs:
    """Window memberships of each event (sessions: a provisional ``[t, t + gap)``)."""
    if isinstance(window, TumblingWindow):  # one window per event: no repeat/tile needed
        size = seconds_to_ticks(window.size_s)
        starts = (ticks // size) * size
        return Pairs(np.arange(len(ticks), dtype=np.int64), starts, starts + size)
    if isinstance(window, SlidingWindow):
        return assign_sliding(
            ticks, seconds_to_ticks(window.size_s), seconds_to_ticks(window.slide_s)
        )
    gap = seconds_to_ticks(window.gap_s)
    return Pairs(np.arange(len(ticks), dtype=np.int64), ticks, ticks + gap)


def assign_sliding(ticks: np.ndarray, size: int, slide: int) -> Pairs:
    """Sliding windows (tumbling when ``slide == size``): ``ceil(size/slide)`` per event."""
    per_event = -(-size // slide)
    last_start = (ticks // slide) * slide
    rows = np.repeat(np.arange(len(ticks), dtype=np.int64), per_event)
    back = np.tile(np.arange(per_event, dtype=np.int64), len(ticks))
    starts = last_start[rows] - back * slide
    keep = starts + size > ticks[rows]
    starts = starts[keep]
    return Pairs(rows[keep], starts, starts + size)


def merge_intervals(
    codes: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge overlapping ``[start, end)`` intervals of the same key code.

    Returns ``(group, merged_start, merged_end)``: ``group[i]`` is the merged interval
    of input ``i`` and ``merged_*`` are indexed by group. Intervals that merely touch
    (``start == previous end``) stay separate: a gap of exactly ``gap`` ends a session.
    """
    n = len(codes)
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    order = np.lexsort((starts, codes))
    c, s, e = codes[order], starts[order], ends[order]
    first = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    # Shift each key into its own disjoint range so one running max serves all keys
    # (a segmented cumulative max without a Python loop over keys).
    kmin = s[first]
    span = np.maximum.reduceat(e, first) - kmin + 1
    offset = np.cumsum(np.r_[0, span[:-1]])
    seg = np.cumsum(np.r_[True, c[1:] != c[:-1]]) - 1
    shift = offset[seg] - kmin[seg]
    running = np.maximum.accumulate(e + shift)
    new = np.r_[True, (s + shift)[1:] >= running[:-1]]
    sorted_group = np.cumsum(new) - 1
    heads = np.flatnonzero(new)
    merged_start = np.minimum.reduceat(s, heads)
    merged_end = np.maximum.reduceat(e, heads)
    group = np.empty(n, dtype=np.int64)
    group[order] = sorted_group
    return group, merged_start, merged_end


def key_codes(tables: list[pa.Table], key_columns: list[str]) -> list[np.ndarray]:
    """One int64 code per distinct key tuple, consistent across ``tables``."""
    sizes = [t.num_rows for t in tables]
    total = sum(sizes)
    if not key_columns:
        return [np.zeros(n, dtype=np.int64) for n in sizes]
    parts = []
    for name in key_columns:
        col = pa.chunked_array(
            [c for t in tables for c in t.column(name).chunks], tables[0].schema.field(name).type
        )
        enc = pc.dictionary_encode(col, null_encoding="encode").combine_chunks()
        parts.append(np.asarray(enc.indices, dtype=np.int64))
    stacked = np.stack(parts, axis=1) if total else np.empty((0, len(parts)), dtype=np.int64)
    _, inverse = np.unique(stacked, axis=0, return_inverse=True)
    flat = inverse.reshape(-1).astype(np.int64)
    return list(np.split(flat, np.cumsum(sizes)[:-1]))
