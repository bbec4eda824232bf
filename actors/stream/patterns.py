"""Sequence pattern detection per key: A then B (then ...) within a time bound.

Semantics (the unit tests' brute-force reference implements exactly this):

* Each batch is ordered by (key, event time), ties in arrival order; batches are
  processed in arrival order.
* An event older than ``max_seen - max_delay_s`` (``max_seen``: the largest event time
  accepted in earlier batches) is *late*: it is returned in ``MatchResult.late`` and
  changes no state. Disorder inside one batch is always accepted.
* Per key, for each event at time ``t``, in this order:
  1. if it satisfies ``absent``: every partial match whose last event is at or before
     ``t`` is cancelled;
  2. every remaining partial whose last event is at or before ``t``, with
     ``t - start <= within_s`` and whose next step holds on the event, advances
     (skip-till-next-match: one event may advance several partials); a partial that
     reaches the last step is emitted and removed;
  3. if step 0 holds, a new partial starts at ``t``.
* A partial that no acceptable future event could complete
  (``start < max_seen - max_delay_s - within_s``) is dropped; this is cleanup only and
  never changes which matches are found.

Cost per batch of n events: O(n) vectorised condition masks (``pyarrow.compute``),
O(c log c) to order the c candidate events (those satisfying some step or ``absent``),
then a Python walk over the c candidates only, O(c * p) with p the live partials of the
event's key. Non-candidate events never reach Python.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.stream._pattern_state import decode, encode
from actors.stream.pattern_spec import AllOf, AnyOf, Cond, evaluate, time_seconds
from cluster.errors import InvalidInputError

ConditionSpec = Cond | AllOf | AnyOf
Key = tuple[Any, ...]


@dataclass
class _Partial:
    seq: int
    next_step: int
    start: float
    last: float
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MatchResult:
    """Matches completed by one batch, and the batch's events that arrived too late."""

    matches: pa.Table
    late: pa.Table


class SequenceDetector:
    """Detects ``steps[0]`` then ``steps[1]`` ... within ``within_s`` seconds, per key."""

    def __init__(
        self,
        *,
        steps: Sequence[ConditionSpec],
        within_s: float,
        key_columns: Sequence[str],
        time_column: str,
        absent: ConditionSpec | None = None,
        max_delay_s: float = 0.0,
    ) -> None:
        if not steps:
            raise InvalidInputError(field="steps", value=[], allowed="at least one condition")
        if within_s < 0 or max_delay_s < 0:
            raise InvalidInputError(
                field="within_s/max_delay_s",
                value=(within_s, max_delay_s),
                allowed="non-negative seconds",
            )
        self.steps = list(steps)
        self.within_s = float(within_s)
        self.key_columns = list(key_columns)
        self.time_column = time_column
        self.absent = absent
        self.max_delay_s = float(max_delay_s)
        self._schema: pa.Schema | None = None
        self._max_seen: float | None = None
        self._partials: dict[Key, list[_Partial]] = {}
        self._counters: dict[Key, int] = {}

    # ------------------------------------------------------------------ processing
    def process(
        self, batch: pa.Table | pa.RecordBatch, *, seen_max_s: float | None = None
    ) -> MatchResult:
        """Advance the detector by one batch; returns completed matches and late events.

        ``seen_max_s``: the newest event time of the whole input batch when this detector
        holds one key partition of it, so all partitions judge lateness alike.
        """
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        self._check_schema(table.schema)
        times = time_seconds(table[self.time_column])
        late = np.zeros(len(times), dtype=bool)
        if self._max_seen is not None:
            late = times < self._max_seen - self.max_delay_s
        masks = np.stack([evaluate(step, table) for step in self.steps]) & ~late
        absent = evaluate(self.absent, table) & ~late if self.absent else np.zeros_like(late)
        if (~late).any():
            batch_max = float(times[~late].max())
            self._max_seen = batch_max if self._max_seen is None else max(self._max_seen, batch_max)
        if seen_max_s is not None and not np.isnan(seen_max_s):
            self._max_seen = (
                seen_max_s if self._max_seen is None else max(self._max_seen, seen_max_s)
            )
        candidates = np.flatnonzero(masks.any(axis=0) | absent)
        completed = self._walk(table, times, candidates, masks, absent)
        self._expire()
        return MatchResult(matches=self._matches_table(completed), late=table.filter(late))

    def _walk(
        self,
        table: pa.Table,
        times: np.ndarray,
        candidates: np.ndarray,
        masks: np.ndarray,
        absent: np.ndarray,
    ) -> list[tuple[Key, _Partial]]:
        if len(candidates) == 0:
            return []
        subset = table.take(pa.array(candidates))
        order_table = subset.select(self.key_columns).append_column(
            "__t", pa.array(times[candidates])
        )
        sort_keys = [(name, "ascending") for name in [*self.key_columns, "__t"]]
        order = pc.sort_indices(order_table, sort_keys=sort_keys).to_numpy()
        rows = subset.take(pa.array(order)).to_pylist()
        completed: list[tuple[Key, _Partial]] = []
        for row, index in zip(rows, candidates[order], strict=True):
            key = tuple(row[name] for name in self.key_columns)
            flags = masks[:, index]
            done = self._step(key, float(times[index]), row, flags, bool(absent[index]))
            completed.extend((key, partial) for partial in done)
        return completed

    def _step(
        self, key: Key, t: float, row: dict[str, Any], flags: np.ndarray, absent: bool
    ) -> list[_Partial]:
        partials = self._partials.get(key, [])
        if absent:
            partials = [p for p in partials if p.last > t]
        kept: list[_Partial] = []
        done: list[_Partial] = []
        for partial in partials:
            if (
                partial.last <= t
                and t - partial.start <= self.within_s
                and flags[partial.next_step]
            ):
                partial.events.append(row)
                partial.last = t
                partial.next_step += 1
                if partial.next_step == len(self.steps):
                    done.append(partial)
                    continue
            kept.append(partial)
        if flags[0]:
            seq = self._counters.get(key, 0)
            self._counters[key] = seq + 1
            fresh = _Partial(seq=seq, next_step=1, start=t, last=t, events=[row])
            (done if len(self.steps) == 1 else kept).append(fresh)
        if kept:
            self._partials[key] = kept
        else:
            self._partials.pop(key, None)
        return done

    def _expire(self) -> None:
        if self._max_seen is None:
            return
        horizon = self._max_seen - self.max_delay_s - self.within_s
        for key in list(self._partials):
            alive = [p for p in self._partials[key] if p.start >= horizon]
            if alive:
                self._partials[key] = alive
            else:
                del self._partials[key]

    def partial_count(self) -> int:
        """Number of live partial matches (all keys); for metrics and tests."""
        return sum(len(partials) for partials in self._partials.values())

    # ------------------------------------------------------------------ output
    def _check_schema(self, schema: pa.Schema) -> None:
        missing = [c for c in [*self.key_columns, self.time_column] if c not in schema.names]
        if missing:
            raise InvalidInputError(
                field="batch columns",
                value=schema.names,
                allowed=f"the key and time columns {missing} must be present",
            )
        if self._schema is None:
            self._schema = schema
        elif not schema.equals(self._schema, check_metadata=False):
            raise InvalidInputError(
                field="batch schema",
                value=str(schema),
                allowed=f"the schema of the first batch ({self._schema}); cast batches to it",
            )

    def output_schema(self) -> pa.Schema:
        """Schema of ``MatchResult.matches`` (known once the first batch was seen)."""
        schema = self._schema
        if schema is None:
            raise InvalidInputError(
                field="output_schema", value=None, allowed="process a batch first"
            )
        keys = [schema.field(name) for name in self.key_columns]
        time_type = schema.field(self.time_column).type
        return pa.schema(
            [
                *keys,
                pa.field("match_id", pa.string()),
                pa.field("start_time", time_type),
                pa.field("end_time", time_type),
                pa.field("events", pa.list_(pa.struct(list(schema)))),
            ]
        )

    def _matches_table(self, completed: list[tuple[Key, _Partial]]) -> pa.Table:
        rows = []
        for key, partial in completed:
            row = dict(zip(self.key_columns, key, strict=True))
            row["match_id"] = json.dumps([*key, partial.seq], default=str)
            row["start_time"] = partial.events[0][self.time_column]
            row["end_time"] = partial.events[-1][self.time_column]
            row["events"] = partial.events
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=self.output_schema())

    # ------------------------------------------------------------------ state
    def snapshot(self) -> bytes:
        """Partial matches, per-key match counters and ``max_seen`` as an Arrow IPC stream."""
        return encode(self._schema, self.key_columns, self._max_seen, self._state_rows())

    def restore(self, data: bytes) -> None:
        """Replace this detector's state by a ``snapshot()`` (same configuration)."""
        schema, max_seen, rows = decode(data, self.key_columns)
        self._schema, self._max_seen = schema, max_seen
        self._partials, self._counters = {}, {}
        for row in rows:
            key = tuple(row["key"][name] for name in self.key_columns)
            if row["next_step"] < 0:
                self._counters[key] = row["seq"]
                continue
            partial = _Partial(row["seq"], row["next_step"], row["start"], row["last"])
            partial.events = list(row["events"])
            self._partials.setdefault(key, []).append(partial)

    def _state_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for key, count in self._counters.items():
            key_row = dict(zip(self.key_columns, key, strict=True))
            rows.append({"key": key_row, "seq": count, "next_step": -1, "events": []})
        for key, partials in self._partials.items():
            key_row = dict(zip(self.key_columns, key, strict=True))
            for p in partials:
                rows.append(
                    {
                        "key": key_row,
                        "seq": p.seq,
                        "next_step": p.next_step,
                        "start": p.start,
                        "last": p.last,
                        "events": p.events,
                    }
                )
        return rows
