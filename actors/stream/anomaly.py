"""Per-key anomaly detection over a sliding event-time window, vectorised per batch.

For each event at time ``t`` of key ``k``, the *window* is the earlier events of ``k``
(earlier batches, or earlier in this batch's (key, time) order) with time in
``(t - window_s, t]``. Its count, mean and population standard deviation (ddof=0) come
from cumulative sums over the batch ordered by (key, time) with the previous window's
tail prepended, so no Python loop runs per event. ``Threshold`` flags values outside
``[min, max]``; ``ZScore`` flags ``|value - mean| / std >= z`` once the window holds
``min_count`` events and ``std > 0``.

An event older than the last accepted time of its key is *late*: returned in
``AnomalyResult.late``, never scored. Events with a null value or time are skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from actors.stream.pattern_spec import time_seconds
from cluster.errors import InvalidInputError

_T, _V = "__t", "__v"


class Threshold(BaseModel):
    """Anomalous when the value is below ``min`` or above ``max`` (either may be unset)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["threshold"] = "threshold"
    min: float | None = Field(default=None, description="Lowest normal value.")
    max: float | None = Field(default=None, description="Highest normal value.")


class ZScore(BaseModel):
    """Anomalous when ``|z| >= z`` against the window before the event."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["zscore"] = "zscore"
    z: float = Field(gt=0, description="Absolute z-score at or above which an event is flagged.")
    min_count: int = Field(default=2, ge=1, description="Window size needed before scoring.")


@dataclass(frozen=True)
class AnomalyResult:
    """Anomalous events (with window_count, window_mean, window_std, z) and late events."""

    anomalies: pa.Table
    late: pa.Table


@dataclass(frozen=True)
class _Scored:
    source: np.ndarray  # row of the batch each scored event came from
    count: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    z: np.ndarray
    value: np.ndarray


class AnomalyDetector:
    """Threshold or z-score anomalies per key over the last ``window_s`` seconds."""

    def __init__(
        self,
        *,
        column: str,
        key_columns: Sequence[str],
        time_column: str,
        window_s: float,
        method: Threshold | ZScore,
    ) -> None:
        if window_s <= 0:
            raise InvalidInputError(field="window_s", value=window_s, allowed="seconds > 0")
        self.column = column
        self.key_columns = list(key_columns)
        self.time_column = time_column
        self.window_s = float(window_s)
        self.method = method
        self._tail: pa.Table | None = None  # key columns + __t + __v, ordered by key, time

    def process(self, batch: pa.Table | pa.RecordBatch) -> AnomalyResult:
        """Score one batch; returns its anomalies and its late events."""
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        self._check_columns(table)
        times = time_seconds(table[self.time_column])
        values = _floats(table[self.column])
        keys = table.select(self.key_columns)
        tail = self._tail if self._tail is not None else _empty_tail(keys.schema)
        groups = _group_ids(pa.concat_tables([tail.select(self.key_columns), keys]))
        n_tail = tail.num_rows
        tail_t = tail[_T].to_numpy()
        last = np.full(int(groups.max(initial=-1)) + 1, -np.inf)
        np.maximum.at(last, groups[:n_tail], tail_t)
        late = times < last[groups[n_tail:]]
        ok = ~late & ~np.isnan(times) & ~np.isnan(values)
        new_rows = np.flatnonzero(ok)
        g = np.concatenate([groups[:n_tail], groups[n_tail:][ok]])
        t = np.concatenate([tail_t, times[ok]])
        v = np.concatenate([tail[_V].to_numpy(), values[ok]])
        src = np.concatenate([np.full(n_tail, -1), new_rows])
        order = np.lexsort((t, g))  # stable: tail rows stay before equal-time new rows
        scored = self._score(g[order], t[order], v[order], src[order])
        self._keep_tail(keys, tail, g[order], t[order], v[order], src[order])
        return AnomalyResult(anomalies=self._emit(table, scored), late=table.filter(late))

    def _score(self, g: np.ndarray, t: np.ndarray, v: np.ndarray, src: np.ndarray) -> _Scored:
        start = _window_starts(g, t, self.window_s)
        # Shift each group by its first value: cumulative sums of small numbers lose less
        # precision when a group's values sit far from zero.
        first = np.searchsorted(g, g, side="left")
        shifted = v - v[first] if len(v) else v
        s1 = np.concatenate([[0.0], np.cumsum(shifted)])
        s2 = np.concatenate([[0.0], np.cumsum(shifted * shifted)])
        idx = np.arange(len(v))
        count = idx - start
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_shifted = (s1[idx] - s1[start]) / count
            var = (s2[idx] - s2[start]) / count - mean_shifted**2
            std = np.sqrt(np.clip(var, 0.0, None))
            mean = mean_shifted + (v[first] if len(v) else 0.0)
            z = np.where(std > 0, (v - mean) / std, np.nan)
        is_new = src >= 0
        return _Scored(src[is_new], count[is_new], mean[is_new], std[is_new], z[is_new], v[is_new])

    def _flags(self, scored: _Scored) -> np.ndarray:
        method = self.method
        if isinstance(method, Threshold):
            low = scored.value < method.min if method.min is not None else False
            high = scored.value > method.max if method.max is not None else False
            return np.asarray(low | high, dtype=bool)
        enough = (scored.count >= method.min_count) & (scored.std > 0)
        with np.errstate(invalid="ignore"):
            return np.asarray(enough & (np.abs(scored.z) >= method.z), dtype=bool)

    def _emit(self, table: pa.Table, scored: _Scored) -> pa.Table:
        flagged = self._flags(scored)
        out = table.take(pa.array(scored.source[flagged], type=pa.int64()))
        count = scored.count[flagged]
        has = count > 0
        out = out.append_column("window_count", pa.array(count, type=pa.int64()))
        for name, data in (("window_mean", scored.mean), ("window_std", scored.std)):
            out = out.append_column(name, pa.array(data[flagged], mask=~has))
        z = scored.z[flagged]
        return out.append_column("z", pa.array(z, mask=np.isnan(z), type=pa.float64()))

    def _keep_tail(
        self,
        keys: pa.Table,
        tail: pa.Table,
        g: np.ndarray,
        t: np.ndarray,
        v: np.ndarray,
        src: np.ndarray,
    ) -> None:
        newest = np.full(int(g.max(initial=-1)) + 1, -np.inf)
        np.maximum.at(newest, g, t)
        keep = t > newest[g] - self.window_s
        # Key values: tail rows by their tail position, new rows by their batch row.
        tail_pos = np.cumsum(src < 0) - 1
        combined = pa.concat_tables([tail.select(self.key_columns), keys])
        rows = np.where(src < 0, tail_pos, tail.num_rows + src)[keep]
        kept = combined.take(pa.array(rows, type=pa.int64()))
        kept = kept.append_column(_T, pa.array(t[keep], type=pa.float64()))
        self._tail = kept.append_column(_V, pa.array(v[keep], type=pa.float64()))

    def _check_columns(self, table: pa.Table) -> None:
        needed = [*self.key_columns, self.time_column, self.column]
        missing = [name for name in needed if name not in table.column_names]
        if missing:
            raise InvalidInputError(
                field="batch columns",
                value=table.column_names,
                allowed=f"columns {missing} are required by this AnomalyDetector",
            )

    def tail_size(self) -> int:
        """Events held in window state (all keys)."""
        return 0 if self._tail is None else self._tail.num_rows

    def snapshot(self) -> bytes:
        """The window tails as Arrow IPC stream bytes (empty bytes before any batch)."""
        if self._tail is None:
            return b""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self._tail.schema) as writer:
            writer.write_table(self._tail)
        return bytes(sink.getvalue().to_pybytes())

    def restore(self, data: bytes) -> None:
        """Replace the window state by a ``snapshot()``."""
        self._tail = pa.ipc.open_stream(pa.py_buffer(data)).read_all() if data else None


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    cast = pc.cast(column, pa.float64())
    return np.asarray(pc.fill_null(cast, np.nan).to_numpy(zero_copy_only=False), dtype=float)


def _empty_tail(key_schema: pa.Schema) -> pa.Table:
    fields = [*key_schema, pa.field(_T, pa.float64()), pa.field(_V, pa.float64())]
    return pa.schema(fields).empty_table()


def _group_ids(keys: pa.Table) -> np.ndarray:
    """Dense group id per row from the key columns (nulls form their own key)."""
    codes = []
    for column in keys.columns:
        encoded = pc.dictionary_encode(column.combine_chunks())
        indices = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False)
        codes.append(np.asarray(indices, dtype=np.int64))
    if not codes or keys.num_rows == 0:
        return np.zeros(keys.num_rows, dtype=np.int64)
    _, inverse = np.unique(np.stack(codes, axis=1), axis=0, return_inverse=True)
    return np.asarray(inverse, dtype=np.int64).reshape(-1)


def _window_starts(g: np.ndarray, t: np.ndarray, window_s: float) -> np.ndarray:
    """For rows ordered by (g, t): first index whose time is > t_i - window_s in group g_i.

    A vectorised per-group ``searchsorted``: merge the rows with the queries
    (g_i, t_i - window_s), queries after equal rows; a query's merged position minus
    its own rank counts the rows at or before it.
    """
    n = len(t)
    merged_g = np.concatenate([g, g])
    merged_t = np.concatenate([t, t - window_s])
    is_query = np.concatenate([np.zeros(n, dtype=np.int8), np.ones(n, dtype=np.int8)])
    order = np.lexsort((is_query, merged_t, merged_g))
    position = np.empty(2 * n, dtype=np.int64)
    position[order] = np.arange(2 * n)
    return position[n:] - np.arange(n)
