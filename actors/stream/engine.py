"""The windowed aggregation engine: Arrow batches in, window results and late data out.

``WindowedAggregator.process`` runs per batch, never per event in Python:
filter/derive by Arrow expressions, assign windows (numpy), classify lateness
against the watermark before the batch, fold partial aggregates into state with
``group_by``, advance the watermark, emit windows it passed, purge expired state.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from actors.stream import aggregate as agg
from actors.stream.config import SessionWindow, StreamConfig
from actors.stream.watermark import END_OF_STREAM, NO_WATERMARK, Lateness, Watermark, classify
from actors.stream.windows import Pairs, assign, key_codes, merge_intervals, seconds_to_ticks
from actors.stream.windows import to_ticks as _to_ticks
from cluster.errors import InvalidInputError, PlatformStateError


@dataclass(frozen=True)
class EmitResult:
    """What one ``process``/``flush`` call decided.

    ``results``: key columns, ``window_start``, ``window_end``, aggregates, ``is_update``
    (true when it replaces an earlier emission of that window). ``late``: input rows
    too late for a window, with that window and a ``reason``. ``retractions``: key
    columns and window bounds of earlier emitted session windows that a late event
    merged into another (superseded by a row in ``results``). ``watermark``: ticks.
    """

    results: pa.Table
    late: pa.Table
    retractions: pa.Table
    watermark: int


class WindowedAggregator:
    """Keyed event-time window aggregation over Arrow record batches."""

    def __init__(
        self,
        config: StreamConfig,
        *,
        where: pc.Expression | None = None,
        derive: Mapping[str, pc.Expression] | None = None,
    ) -> None:
        self.config = config
        self._where = where
        self._derive = dict(derive or {})
        self._keys = list(config.key_columns)
        self._vaggs = agg.value_aggs(config.aggregations)
        self._lateness = seconds_to_ticks(config.allowed_lateness_s)
        gap = config.window.gap_s if isinstance(config.window, SessionWindow) else 0.0
        # Sessions stay one gap longer so an accepted late event never meets a purged one.
        self._keep_extra = seconds_to_ticks(gap)
        self._wm = Watermark(seconds_to_ticks(config.max_delay_s))
        self._partials: pa.Table | None = None
        self._values: dict[str, pa.Table] = {}

    @property
    def watermark(self) -> int:
        """Current watermark in ticks (int64 microseconds)."""
        return self._wm.value

    def process(
        self, batch: pa.RecordBatch | pa.Table, *, seen_max: int | None = None
    ) -> EmitResult:
        """Fold one batch into state; emit windows the advanced watermark completed.

        ``seen_max`` (ticks) is the newest event time of the whole input batch when this
        engine holds one key partition of it: every partition then advances one common
        watermark, so partitioned results equal a single engine's and idle partitions
        still close their windows.
        """
        table = self._prepare(pa.table(batch) if isinstance(batch, pa.RecordBatch) else batch)
        ticks = _to_ticks(table.column(self.config.time_column), self.config.time_column)
        valid = ticks != NO_WATERMARK
        pairs = assign(ticks[valid], self.config.window)
        rows = np.flatnonzero(valid)[pairs.rows]
        codes = classify(ticks[rows], self._wm.value, pairs.ends, self._lateness)
        late = self._late(table, rows, pairs, codes == Lateness.TOO_LATE, np.flatnonzero(~valid))
        ok = codes != Lateness.TOO_LATE
        self._fold(table, rows[ok], pairs.starts[ok], pairs.ends[ok], ticks)
        retractions = self._merge_sessions() if self._keep_extra else None
        self._wm = self._wm.observe(ticks[valid])
        if seen_max is not None and seen_max != NO_WATERMARK:
            self._wm = self._wm.observe(np.array([seen_max], dtype=np.int64))
        return self._emit(late, retractions)

    def flush(self) -> EmitResult:
        """End of stream: emit every open window and clear state."""
        self._wm = Watermark(0, END_OF_STREAM)
        return self._emit(self._late_empty(), None)

    # -- per-batch steps ------------------------------------------------------------

    def _prepare(self, table: pa.Table) -> pa.Table:
        if self._derive:
            cols = {c: pc.field(c) for c in table.column_names if c not in self._derive}
            table = ds.dataset(table).to_table(columns={**cols, **self._derive})
        if self._where is not None:
            table = table.filter(self._where)
        needed = [self.config.time_column, *self._keys]
        needed += [a.column for a in self.config.aggregations if a.column]
        missing = sorted(set(needed) - set(table.column_names))
        if missing:
            raise InvalidInputError(
                field="batch columns",
                value=missing,
                allowed=f"the batch must carry the configured columns; it has {table.column_names}",
            )
        return table

    def _late(
        self,
        table: pa.Table,
        rows: np.ndarray,
        pairs: Pairs,
        too_late: np.ndarray,
        nulls: np.ndarray,
    ) -> pa.Table:
        idx = np.r_[rows[too_late], nulls]
        out = table.take(pa.array(idx, pa.int64()))
        n_late = int(too_late.sum())
        starts = np.r_[pairs.starts[too_late], np.zeros(len(nulls), np.int64)]
        ends = np.r_[pairs.ends[too_late], np.zeros(len(nulls), np.int64)]
        mask = np.r_[np.zeros(n_late, bool), np.ones(len(nulls), bool)]
        out = out.append_column("window_start", _window_col(starts, mask))
        out = out.append_column("window_end", _window_col(ends, mask))
        reasons = ["too_late"] * n_late + ["null_event_time"] * len(nulls)
        self._late_schema = out.append_column("reason", pa.array(reasons, pa.string())).schema
        return out.append_column("reason", pa.array(reasons, pa.string()))

    def _late_empty(self) -> pa.Table:
        schema = getattr(self, "_late_schema", None)
        return (
            schema.empty_table()
            if schema is not None
            else pa.table({"reason": pa.array([], pa.string())})
        )

    def _fold(
        self,
        table: pa.Table,
        rows: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        ticks: np.ndarray,
    ) -> None:
        cols = sorted({a.column for a in self.config.aggregations if a.column} - {*self._keys})
        pairs = table.select([*self._keys, *cols]).take(pa.array(rows, pa.int64()))
        pairs = pairs.append_column(agg.WS, pa.array(starts, pa.int64()))
        pairs = pairs.append_column(agg.WE, pa.array(ends, pa.int64()))
        pairs = pairs.append_column(agg.T, pa.array(ticks[rows], pa.int64()))
        new = agg.partial_from_pairs(pairs, self._keys, self.config.aggregations)
        parts = [new] if self._partials is None else [self._partials.select(new.column_names), new]
        self._partials = agg.merge_partials(
            pa.concat_tables(parts), self._keys, self.config.aggregations
        )
        for a in self._vaggs:
            fresh = agg.values_from_pairs(pairs, self._keys, a)
            old = self._values.get(a.as_)
            merged = (
                fresh if old is None else pa.concat_tables([old.select(fresh.column_names), fresh])
            )
            self._values[a.as_] = agg.dedupe(merged) if a.fn == "distinct" else merged

    def _merge_sessions(self) -> pa.Table | None:
        """Merge overlapping sessions per key; return retractions of emitted ones."""
        p = self._partials
        assert p is not None
        names = [a.as_ for a in self._vaggs]
        codes = key_codes([p, *(self._values[n] for n in names)], self._keys)
        ws, we = _np(p, agg.WS), _np(p, agg.WE)
        group, mstart, mend = merge_intervals(codes[0], ws, we)
        new_ws, new_we = mstart[group], mend[group]
        changed = (new_ws != ws) | (new_we != we)
        fired = _np(p, agg.FIRED)
        retractions = p.filter(pa.array(changed & fired)).select([*self._keys, agg.WS, agg.WE])
        p = _set(p, {agg.WS: new_ws, agg.WE: new_we, agg.DIRTY: _np(p, agg.DIRTY) | changed})
        for name, vcodes in zip(names, codes[1:], strict=True):
            vals = self._values[name]
            ids_p, ids_v, n = agg.match_windows(codes[0], ws, vcodes, _np(vals, agg.WS))
            lut_s, lut_e = np.zeros(n, np.int64), np.zeros(n, np.int64)
            lut_s[ids_p], lut_e[ids_p] = new_ws, new_we
            vals = _set(vals, {agg.WS: lut_s[ids_v], agg.WE: lut_e[ids_v]})
            self._values[name] = agg.dedupe(vals) if name in self._distinct_names() else vals
        self._partials = agg.merge_partials(p, self._keys, self.config.aggregations)
        return _as_windows(retractions)

    def _distinct_names(self) -> set[str]:
        return {a.as_ for a in self._vaggs if a.fn == "distinct"}

    def _emit(self, late: pa.Table, retractions: pa.Table | None) -> EmitResult:
        w = self._wm.value
        p = self._partials
        if p is None:
            return EmitResult(pa.table({}), late, retractions or pa.table({}), w)
        we, fired = _np(p, agg.WE), _np(p, agg.FIRED)
        due = we <= w
        emit = due & (~fired | _np(p, agg.DIRTY))
        results = self._finalize(p.filter(pa.array(emit)))
        p = _set(p, {agg.FIRED: fired | due, agg.DIRTY: _np(p, agg.DIRTY) & ~due})
        # Purge state the watermark has passed by more than lateness (+ gap for sessions).
        horizon = max(w - self._lateness - self._keep_extra, NO_WATERMARK)
        self._partials = p.filter(pa.array(we > horizon))
        for name, vals in self._values.items():
            self._values[name] = vals.filter(pa.array(_np(vals, agg.WE) > horizon))
        empty_retractions = _as_windows(p.select([*self._keys, agg.WS, agg.WE]).slice(0, 0))
        return EmitResult(
            results, late, retractions if retractions is not None else empty_retractions, w
        )

    def _finalize(self, emitted: pa.Table) -> pa.Table:
        cols = agg.finalize_columns(emitted, self.config.aggregations)
        # Key codes only serve distinct/quantile values; plain aggregates skip the argsort.
        codes = (
            key_codes([emitted, *(self._values[a.as_] for a in self._vaggs)], self._keys)
            if self._vaggs
            else []
        )
        for a, vcodes in zip(self._vaggs, codes[1:], strict=True):
            vals = self._values[a.as_]
            ids_e, ids_v, n = agg.match_windows(
                codes[0], _np(emitted, agg.WS), vcodes, _np(vals, agg.WS)
            )
            if a.fn == "distinct":
                cols[a.as_] = pa.array(np.bincount(ids_v, minlength=n)[ids_e], pa.int64())
            else:
                assert a.q is not None
                v = np.asarray(vals.column("__v"))
                cols[a.as_] = agg.quantile_nearest(ids_v, v, n, a.q).take(
                    pa.array(ids_e, pa.int64())
                )
        out = _as_windows(emitted.select([*self._keys, agg.WS, agg.WE]))
        for a in self.config.aggregations:
            out = out.append_column(a.as_, cols[a.as_])
        return out.append_column("is_update", emitted.column(agg.FIRED))

    # -- checkpoints ----------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as Arrow IPC: one stream per state table, plus the watermark."""
        tables = {"partials": self._partials, **{f"values:{k}": v for k, v in self._values.items()}}
        names = [k for k, v in tables.items() if v is not None]
        payloads = [_ipc(tables[k]) for k in names]
        meta = {"max_seen": self._wm.max_seen, "config": self.config.model_dump_json(by_alias=True)}
        container = pa.table({"name": names, "payload": pa.array(payloads, pa.binary())})
        container = container.replace_schema_metadata({"datapunk.stream": json.dumps(meta)})
        return _ipc(container)

    def restore(self, data: bytes) -> None:
        """Replace the state with a ``snapshot()`` taken by an identically configured engine."""
        container = pa.ipc.open_stream(data).read_all()
        meta = json.loads((container.schema.metadata or {})[b"datapunk.stream"])
        if meta["config"] != self.config.model_dump_json(by_alias=True):
            raise PlatformStateError(
                "stream snapshot was taken with a different StreamConfig; restore it into an "
                "aggregator built from the same config (or start from an empty state)"
            )
        self._wm = Watermark(self._wm.max_delay, int(meta["max_seen"]))
        loaded = {
            n: pa.ipc.open_stream(p).read_all()
            for n, p in zip(
                container.column("name").to_pylist(),
                container.column("payload").to_pylist(),
                strict=True,
            )
        }
        self._partials = loaded.get("partials")
        self._values = {k.removeprefix("values:"): v for k, v in loaded.items() if k != "partials"}


def _np(table: pa.Table, column: str) -> np.ndarray:
    return np.asarray(table.column(column).combine_chunks().to_numpy(zero_copy_only=False))


def _set(table: pa.Table, columns: Mapping[str, np.ndarray]) -> pa.Table:
    for name, values in columns.items():
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    return table


def _window_col(ticks: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    return pa.array(ticks, pa.int64(), mask=mask).cast(agg.WINDOW_TYPE)


def _as_windows(table: pa.Table) -> pa.Table:
    """Rename internal window columns to ``window_start``/``window_end`` timestamps."""
    out = table.drop_columns([agg.WS, agg.WE])
    out = out.append_column("window_start", _window_col(_np(table, agg.WS)))
    return out.append_column("window_end", _window_col(_np(table, agg.WE)))


def _ipc(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()
