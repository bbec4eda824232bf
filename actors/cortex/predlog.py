"""The prediction log: every served row, its inputs and outputs, appended to the Lake.

Serving must never wait on the log. A replica ``offer``s each request's rows to a
bounded ``PredictionBuffer`` (a lock and a list: no I/O, never blocks); when it is full
the batch is dropped and counted. A ``PredictionLogger`` task drains the buffer into one
Lake append per table when ``flush_rows`` rows are waiting or ``flush_s`` has passed; a
failed append is logged, put back at the front and retried after ``flush_s``.

One table per model, ``<namespace>.<model>_predictions``, one row per predicted row:
``request_id``, ``ts``, ``model``, ``version``, ``latency_ms``, the feature columns
under their own names, ``prediction`` and (classification) ``probabilities``. A feature
whose name is one of those metadata columns is stored as ``feature_<name>`` (prefixed
again until the name is free), the same way every time: ``feature_columns`` gives the
mapping, so drift jobs read features back by their signature names.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from actors.lake.errors import TableExistsError, TableNotFoundError
from actors.lake.specs import parse_namespace, parse_table_name
from cluster.errors import InvalidInputError

__all__ = [
    "METADATA_COLUMNS",
    "AppendFn",
    "LakeWriter",
    "PredictionBuffer",
    "PredictionLogger",
    "feature_columns",
    "lake_append",
    "log_table_name",
    "prediction_rows",
]

log = logging.getLogger(__name__)

METADATA_COLUMNS = (
    "request_id",
    "ts",
    "model",
    "version",
    "latency_ms",
    "prediction",
    "probabilities",
)
FEATURE_PREFIX = "feature_"
_PLAIN_NAME = re.compile(r"[a-z][a-z0-9_]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

AppendFn = Callable[[str, pa.Table], Awaitable[None]]


def log_table_name(namespace: str, model: str) -> str:
    """``"<namespace>.<model>_predictions"``, a valid Lake name for every model name.

    Registry names may hold ``.`` and ``-``, which Lake names may not: those become
    ``_`` and a short hash of the real name is appended, so ``churn.v2`` and ``churn_v2``
    never share a table. Names of letters, digits and ``_`` are used as they are.
    """
    parse_namespace(namespace)
    if _PLAIN_NAME.fullmatch(model):
        table = model
    else:
        digest = hashlib.sha256(model.encode()).hexdigest()[:8]
        table = f"{re.sub(r'[^A-Za-z0-9_]', '_', model)}_{digest}"
    return parse_table_name(f"{namespace}.{table}_predictions").full


def feature_columns(features: Iterable[str]) -> dict[str, str]:
    """Each feature's column name in the log (``feature_<name>`` when it would clash)."""
    names = list(features)
    taken = set(METADATA_COLUMNS) | set(names)
    mapping: dict[str, str] = {}
    for name in names:
        column = name
        if name in METADATA_COLUMNS:
            column = FEATURE_PREFIX + name
            while column in taken:
                column = FEATURE_PREFIX + column
            taken.add(column)
        mapping[name] = column
    return mapping


def prediction_rows(
    *,
    request_id: str,
    model: str,
    version: int,
    latency_ms: float,
    features: pa.Table,
    outputs: dict[str, np.ndarray],
    at: datetime,
) -> pa.Table:
    """The log rows of one request: one per predicted row (see the module docstring)."""
    count = features.num_rows
    prediction = np.asarray(outputs["prediction"])
    if len(prediction) != count:
        raise InvalidInputError(
            field="outputs",
            value=f"{len(prediction)} predictions",
            allowed=f"one per feature row ({count})",
        )
    if at.tzinfo is None:
        raise InvalidInputError(field="at", value=at, allowed="an aware datetime (UTC)")
    micros = (at - _EPOCH) // timedelta(microseconds=1)
    ts = pa.array(np.full(count, micros, dtype=np.int64), type=pa.timestamp("us", tz="UTC"))
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "request_id": pa.array([request_id] * count, type=pa.string()),
        "ts": ts,
        "model": pa.array([model] * count, type=pa.string()),
        "version": pa.array(np.full(count, version, dtype=np.int64)),
        "latency_ms": pa.array(np.full(count, latency_ms, dtype=np.float64)),
    }
    for name, column in feature_columns(features.schema.names).items():
        columns[column] = features.column(name).cast(pa.float64())
    kind = pa.int64() if np.issubdtype(prediction.dtype, np.integer) else pa.float64()
    columns["prediction"] = pa.array(prediction, type=kind)
    if "probabilities" in outputs:
        columns["probabilities"] = _list_of_doubles(np.asarray(outputs["probabilities"]))
    return pa.table(columns)


def _list_of_doubles(matrix: np.ndarray) -> pa.Array:
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float64).reshape(-1))
    return pa.ListArray.from_arrays(offsets, values)


# ------------------------------------------------------------------------- buffer


class PredictionBuffer:
    """Bounded, thread-safe rows waiting for the Lake; full means dropped, not blocked."""

    def __init__(self, capacity_rows: int) -> None:
        if capacity_rows < 1:
            raise InvalidInputError(
                field="capacity_rows", value=capacity_rows, allowed="at least 1"
            )
        self.capacity_rows = capacity_rows
        self._lock = threading.Lock()
        self._batches: list[tuple[str, pa.Table]] = []
        self._buffered = 0
        self._dropped = 0

    @property
    def buffered_rows(self) -> int:
        return self._buffered

    @property
    def dropped_rows(self) -> int:
        return self._dropped

    def offer(self, table_name: str, rows: pa.Table) -> bool:
        """Keep ``rows`` for ``table_name`` if they fit, else drop and count them."""
        count = rows.num_rows
        with self._lock:
            if self._buffered + count > self.capacity_rows:
                self._dropped += count
                return False
            if count:
                self._batches.append((table_name, rows))
                self._buffered += count
            return True

    def drain(self) -> dict[str, pa.Table]:
        """Everything buffered, one table per log table (oldest rows first); empties it."""
        with self._lock:
            batches, self._batches, self._buffered = self._batches, [], 0
        return _group(batches)

    def requeue(self, batches: dict[str, pa.Table]) -> None:
        """Put back what a flush could not write, ahead of newer rows; what no longer
        fits is dropped and counted (the newest rows win: they are still to be written)."""
        with self._lock:
            room = self.capacity_rows - self._buffered
            kept: list[tuple[str, pa.Table]] = []
            for name, rows in batches.items():
                if rows.num_rows <= room:
                    kept.append((name, rows))
                    room -= rows.num_rows
                else:
                    self._dropped += rows.num_rows
            self._batches[:0] = kept
            self._buffered += sum(rows.num_rows for _, rows in kept)


def _group(batches: list[tuple[str, pa.Table]]) -> dict[str, pa.Table]:
    grouped: dict[str, list[pa.Table]] = {}
    for name, rows in batches:
        grouped.setdefault(name, []).append(rows)
    # Versions of one model may differ in features (or add probabilities): missing
    # columns become nulls, and the Lake's schema evolution adds the new ones.
    return {
        name: pa.concat_tables(tables, promote_options="permissive")
        for name, tables in grouped.items()
    }


# ------------------------------------------------------------------------- flusher


class LakeWriter(Protocol):
    """What the log needs of the Lake (``LakeService`` or the actor-pool client)."""

    async def create_namespace(self, namespace: str, *, exist_ok: bool = False) -> None: ...
    async def create_table(self, name: str, **options: Any) -> dict[str, Any]: ...
    async def append(self, name: str, data: pa.Table, *, evolve: bool = True) -> dict[str, Any]: ...


def lake_append(lake: LakeWriter) -> AppendFn:
    """An ``append`` for ``PredictionLogger`` that creates each log table on first use
    (namespace too, every column nullable) and then appends with schema evolution."""
    created: set[str] = set()

    async def append(table_name: str, rows: pa.Table) -> None:
        if table_name not in created:
            await lake.create_namespace(parse_table_name(table_name).namespace, exist_ok=True)
            schema = pa.schema([field.with_nullable(True) for field in rows.schema])
            # Another replica may have created it first; appending is all we need then.
            with contextlib.suppress(TableExistsError):
                await lake.create_table(table_name, schema=schema)
            created.add(table_name)
        try:
            await lake.append(table_name, rows, evolve=True)
        except TableNotFoundError:
            created.discard(table_name)  # dropped under us: create it again next time
            raise

    return append


class PredictionLogger:
    """Flushes a ``PredictionBuffer`` to the Lake from a background asyncio task."""

    def __init__(
        self,
        buffer: PredictionBuffer,
        append: AppendFn,
        *,
        flush_rows: int,
        flush_s: float,
        clock: Callable[[], float] = time.monotonic,
        poll_s: float = 0.05,
    ) -> None:
        self.buffer = buffer
        self._append = append
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self._clock = clock
        self._poll_s = poll_s
        self._last_attempt = clock()
        self._failing = False
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.flushed_rows = 0
        self.failed_flushes = 0
        self.last_error: str | None = None

    async def start(self) -> None:
        """Start the background flusher (once)."""
        if self._task is None or self._task.done():
            self._last_attempt = self._clock()
            self._task = asyncio.create_task(self._run(), name="cortex-prediction-log")

    async def stop(self) -> None:
        """Stop the flusher and write what is buffered (a final flush)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()

    def due(self) -> bool:
        """Whether a flush is due now: enough rows, or ``flush_s`` since the last try.

        After a failure only time makes it due, so a Lake outage is retried every
        ``flush_s``, not in a tight loop.
        """
        if self.buffer.buffered_rows == 0:
            return False
        waited = self._clock() - self._last_attempt >= self.flush_s
        return waited or (not self._failing and self.buffer.buffered_rows >= self.flush_rows)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_s)
            if self.due():
                try:
                    await self.flush()
                except Exception:  # flush logs its own failures; keep the loop alive
                    log.exception("cortex prediction log flush crashed")

    async def flush(self) -> int:
        """Write everything buffered now; returns the rows written. Failed tables go back."""
        async with self._lock:
            self._last_attempt = self._clock()
            batches = self.buffer.drain()
            failed: dict[str, pa.Table] = {}
            written = 0
            for name, rows in batches.items():
                try:
                    await self._append(name, rows)
                except Exception as exc:
                    failed[name] = rows
                    self.failed_flushes += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning(
                        "cortex prediction log: writing %d rows to %s failed (%s); "
                        "kept for the next flush",
                        rows.num_rows,
                        name,
                        self.last_error,
                    )
                else:
                    written += rows.num_rows
            if failed:
                self.buffer.requeue(failed)
            self._failing = bool(failed)
            if batches:
                self.flushes += 1
            self.flushed_rows += written
            return written

    def stats(self) -> dict[str, Any]:
        """Counters for metrics and health: rows buffered, written, dropped; failures."""
        return {
            "buffered_rows": self.buffer.buffered_rows,
            "dropped_rows": self.buffer.dropped_rows,
            "flushed_rows": self.flushed_rows,
            "flushes": self.flushes,
            "failed_flushes": self.failed_flushes,
            "last_error": self.last_error,
            "running": self._task is not None and not self._task.done(),
        }
