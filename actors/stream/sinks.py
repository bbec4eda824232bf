"""Sinks of a running topology: a Lake table, and latest values per key in the cache.

Both keep the ``Sink`` promise of ``actors/stream/ports.py``: writing an epoch that is
already written changes nothing, so the runner may write an epoch again after a crash
between its checkpoint (the commit point) and its acknowledgement.

* ``LakeSink`` appends each epoch as ONE Iceberg snapshot whose summary names the
  topology, the sink and the epoch (``datapunk.stream.*``). The table's history is
  therefore the record of what was written: a fresh process reads the highest epoch
  from it once, at ``open``, and skips every epoch up to it.
* ``CacheLatestSink`` keeps the last row per key as JSON under
  ``stream:<topology>:<sink>:<k1>|<k2>...``; writing the same rows again stores the
  same values, so it is idempotent by nature. ``latest`` reads one back.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa

from actors.lake.errors import TableExistsError, TableNotFoundError
from actors.lake.service import LakeService
from actors.lake.specs import parse_table_name
from cluster.cache.port import Cache
from cluster.errors import InvalidInputError

__all__ = [
    "EPOCH_PROPERTY",
    "SINK_PROPERTY",
    "TOPOLOGY_PROPERTY",
    "CacheLatestSink",
    "LakeSink",
    "committed_epoch",
    "latest",
    "latest_key",
]

log = logging.getLogger(__name__)

TOPOLOGY_PROPERTY = "datapunk.stream.topology"
SINK_PROPERTY = "datapunk.stream.sink"
EPOCH_PROPERTY = "datapunk.stream.epoch"

_CACHE_CONCURRENCY = 256  # cache writes in flight at once for one epoch
_KEY_SEPARATOR = "|"


def _check_label(field: str, value: str) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise InvalidInputError(field=field, value=value, allowed="a non-empty printable name")
    return value


# ------------------------------------------------------------------------- Lake sink


def committed_epoch(history: Iterable[Mapping[str, Any]], topology: str, sink: str) -> int | None:
    """The highest epoch that ``sink`` of ``topology`` committed, from a table's history.

    ``history`` is ``LakeService.history(table)``: dicts with a ``summary``. Snapshots of
    other writers, and summaries whose epoch is not an integer, are ignored.
    """
    highest: int | None = None
    for entry in history:
        summary = entry.get("summary") or {}
        if summary.get(TOPOLOGY_PROPERTY) != topology or summary.get(SINK_PROPERTY) != sink:
            continue
        try:
            epoch = int(summary[EPOCH_PROPERTY])
        except (KeyError, TypeError, ValueError):
            continue
        highest = epoch if highest is None else max(highest, epoch)
    return highest


class LakeSink:
    """Appends each epoch's rows to a Lake table in one snapshot, at most once per epoch.

    ``table`` is ``"namespace.table"`` (no dot: namespace ``default``). The table is
    created on the first write that has rows, from that batch's schema (every column
    nullable, since later epochs may lack values); the namespace too. With ``evolve``
    (the default) columns new to the table are added by the same commit; without it the
    Lake refuses them with ``UnknownColumnError``/``SchemaMismatchError``.

    Only one process may write one (topology, sink) at a time: the committed epoch is
    read once from the table's history and then tracked in memory. Snapshot expiry must
    keep the newest snapshot of each sink, or a restarted topology could write an epoch
    again.
    """

    def __init__(
        self, lake: LakeService, table: str, *, topology: str, name: str, evolve: bool = True
    ) -> None:
        self._lake = lake
        self.table = parse_table_name(table).full
        self.topology = _check_label("topology", topology)
        self.name = _check_label("name", name)
        self.evolve = evolve
        self._opened = False
        self._exists = False
        self._committed: int | None = None

    @property
    def committed_epoch(self) -> int | None:
        """The highest epoch this sink has in the table (known once opened)."""
        return self._committed

    async def open(self) -> None:
        """Read the committed epoch from the table's history; a missing table is created
        on the first write (its schema comes from the rows)."""
        try:
            history = await self._lake.history(self.table)
        except TableNotFoundError:
            self._exists, self._committed = False, None
        else:
            self._exists = True
            self._committed = committed_epoch(history, self.topology, self.name)
        self._opened = True

    async def write(self, epoch: int, rows: pa.Table) -> None:
        """Append ``rows`` as one snapshot tagged with ``epoch``; skip an epoch already in.

        No rows: no snapshot (nothing to record; an empty epoch needs no replay).
        """
        if not self._opened:
            await self.open()
        if self._committed is not None and epoch <= self._committed:
            log.debug(
                "stream sink %s skips epoch %d of %s: epoch %d is already in %s",
                self.name,
                epoch,
                self.topology,
                self._committed,
                self.table,
            )
            return
        if rows.num_rows == 0:
            return
        try:
            if not self._exists:
                await self._create(rows.schema)
            await self._append(rows, self._properties(epoch))
        except BaseException:
            # The commit may have landed before the failure reached us (a dead actor, a
            # timeout): read the table's history again before the next write.
            self._opened = False
            raise
        self._committed = epoch

    async def close(self) -> None:
        """Nothing to release: the Lake service belongs to the caller."""
        self._opened = False

    def _properties(self, epoch: int) -> dict[str, str]:
        return {
            TOPOLOGY_PROPERTY: self.topology,
            SINK_PROPERTY: self.name,
            EPOCH_PROPERTY: str(epoch),
        }

    async def _create(self, schema: pa.Schema) -> None:
        namespace = parse_table_name(self.table).namespace
        await self._lake.create_namespace(namespace, exist_ok=True)
        nullable = pa.schema([field.with_nullable(True) for field in schema])
        # Another writer may have created it first; appending is all we need then.
        with contextlib.suppress(TableExistsError):
            await self._lake.create_table(self.table, schema=nullable)
        self._exists = True

    async def _append(self, rows: pa.Table, properties: dict[str, str]) -> None:
        await self._lake.append(
            self.table, rows, evolve=self.evolve, snapshot_properties=properties
        )


# ------------------------------------------------------------------------ cache sink


def _key_part(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return str(value)


def latest_key(topology: str, sink: str, key_values: Sequence[Any]) -> str:
    """The cache key of one key's latest row: ``stream:<topology>:<sink>:<k1>|<k2>...``.

    Values are joined as text: ISO 8601 for times, ``""`` for null.
    """
    return f"stream:{topology}:{sink}:" + _KEY_SEPARATOR.join(_key_part(v) for v in key_values)


def _json_value(value: Any) -> Any:
    """Arrow's Python values that ``json`` cannot write, as JSON-able values."""
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot store a {type(value).__name__} as JSON")


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    # NaN/inf are not JSON; a reader in another language would refuse the whole value.
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}


def _encode(row: dict[str, Any]) -> bytes:
    text = json.dumps(_clean(row), default=_json_value, separators=(",", ":"), allow_nan=False)
    return text.encode()


class CacheLatestSink:
    """The latest row per key in the cache, as JSON (times as ISO 8601 text).

    Within an epoch the last row of each key wins. ``ttl_s`` (None: never) lets keys
    that stop receiving rows fade away. An epoch older than one this object already
    wrote is skipped, so a late replay never puts older values back.
    """

    def __init__(
        self,
        cache: Cache,
        *,
        topology: str,
        name: str,
        key_columns: Sequence[str],
        ttl_s: float | None = None,
    ) -> None:
        if isinstance(key_columns, str) or not key_columns:
            raise InvalidInputError(
                field="key_columns", value=key_columns, allowed="a list of one or more columns"
            )
        self._cache = cache
        self.topology = _check_label("topology", topology)
        self.name = _check_label("name", name)
        self.key_columns = list(key_columns)
        self.ttl_s = ttl_s
        self._written: int | None = None

    async def open(self) -> None:
        """Check that the cache answers, so a bad Redis URL fails at deploy, not mid-epoch."""
        await self._cache.ping()

    async def write(self, epoch: int, rows: pa.Table) -> None:
        """Store the last row of each key in ``rows``; rewriting an epoch is harmless."""
        if self._written is not None and epoch < self._written:
            return
        if rows.num_rows:
            missing = [c for c in self.key_columns if c not in rows.column_names]
            if missing:
                raise InvalidInputError(
                    field="key_columns",
                    value=missing,
                    allowed=f"columns of sink {self.name!r}'s rows: {', '.join(rows.column_names)}",
                )
            values = self._latest_values(rows)
            items = list(values.items())
            for start in range(0, len(items), _CACHE_CONCURRENCY):
                chunk = items[start : start + _CACHE_CONCURRENCY]
                await asyncio.gather(*(self._cache.set(k, v, self.ttl_s) for k, v in chunk))
        self._written = epoch

    def _latest_values(self, rows: pa.Table) -> dict[str, bytes]:
        latest_rows: dict[str, dict[str, Any]] = {}
        for row in rows.to_pylist():
            key = latest_key(self.topology, self.name, [row[c] for c in self.key_columns])
            latest_rows[key] = row  # later rows replace earlier ones: the last wins
        return {key: _encode(row) for key, row in latest_rows.items()}

    async def close(self) -> None:
        """Nothing to release: the cache belongs to the caller."""


async def latest(
    cache: Cache, topology: str, name: str, key_values: Sequence[Any] | str | int
) -> dict[str, Any] | None:
    """The latest row ``CacheLatestSink`` stored for ``key_values``, or None.

    ``key_values`` are the key columns' values in order; a single key may be given bare.
    """
    values = [key_values] if isinstance(key_values, str | int) else list(key_values)
    raw = await cache.get(latest_key(topology, name, values))
    if raw is None:
        return None
    value: dict[str, Any] = json.loads(raw)
    return value
