"""Scan and SQL results cached by (tables' snapshot ids, request) through the Cache port.

A key hashes every table's snapshot id together with the request, so a commit (a new
snapshot id) is a new key and a stale result can never be served: nothing needs
invalidating, old entries simply expire. Values are Arrow IPC streams (zstd-compressed
buffers); entries over ``max_entry_bytes`` are not stored. The cache is an optimisation:
an unreachable backend or an unreadable entry reads as a miss and a failed write is
skipped, so a Redis outage slows queries down instead of failing them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any, Literal

import pyarrow as pa
import pyarrow.ipc as pa_ipc

from cluster.cache.port import Cache
from cluster.errors import InvalidInputError, ServiceUnavailableError

logger = logging.getLogger(__name__)

CacheKind = Literal["scan", "sql"]
_KEY_VERSION = "v1"  # bump when the value layout or the key recipe changes
_IPC_OPTIONS = pa_ipc.IpcWriteOptions(compression="zstd")


def cache_key(
    kind: CacheKind, snapshots: Mapping[str, int | None], request: Mapping[str, Any]
) -> str:
    """A stable key: ``lake:<kind>:<sha256 of sorted JSON>`` over snapshots and request.

    ``snapshots`` maps every table the result reads to its snapshot id (None for a table
    with no snapshot yet). ``request`` holds what else shapes the result (query, columns,
    filter, limits) as JSON values; anything else is refused, since ``str()`` of an
    arbitrary object is not stable across processes.
    """
    if kind not in ("scan", "sql"):
        raise InvalidInputError(field="kind", value=kind, allowed="'scan' or 'sql'")
    if not snapshots:
        raise InvalidInputError(field="snapshots", value={}, allowed="at least one table")
    payload = {"kind": kind, "snapshots": dict(snapshots), "request": dict(request)}
    try:
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            field="request",
            value=str(exc),
            allowed="JSON values only (str, int, float, bool, None, lists, string-keyed dicts)",
        ) from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"lake:{kind}:{_KEY_VERSION}:{digest}"


def table_to_bytes(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream with zstd-compressed buffers."""
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_from_bytes(data: bytes) -> pa.Table:
    """The table ``table_to_bytes`` wrote."""
    return pa_ipc.open_stream(pa.py_buffer(data)).read_all()


class ResultCache:
    """Arrow results in a ``Cache`` for ``ttl_s`` seconds, up to ``max_entry_bytes`` each."""

    def __init__(self, cache: Cache, ttl_s: float, max_entry_bytes: int) -> None:
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not ttl_s > 0:
            raise InvalidInputError(field="ttl_s", value=ttl_s, allowed="seconds > 0")
        if isinstance(max_entry_bytes, bool) or not isinstance(max_entry_bytes, int):
            raise InvalidInputError(field="max_entry_bytes", value=max_entry_bytes, allowed="int")
        if max_entry_bytes < 1:
            raise InvalidInputError(field="max_entry_bytes", value=max_entry_bytes, allowed=">= 1")
        self._cache = cache
        self._ttl_s = float(ttl_s)
        self._max_entry_bytes = max_entry_bytes

    async def get(self, key: str) -> pa.Table | None:
        """The cached table for ``key``, or None on a miss (or an unusable entry)."""
        try:
            data = await self._cache.get(key)
        except ServiceUnavailableError as exc:
            logger.warning("result cache unavailable, reading as a miss: %s", exc.message)
            return None
        if data is None:
            return None
        try:
            return table_from_bytes(data)
        except (pa.ArrowException, OSError, ValueError):
            logger.warning("dropping unreadable result cache entry %s", key)
            await self._delete_quietly(key)
            return None

    async def put(self, key: str, table: pa.Table) -> bool:
        """Store ``table`` under ``key``; False when it was too big or the cache was down."""
        data = table_to_bytes(table)
        if len(data) > self._max_entry_bytes:
            logger.debug(
                "result of %d bytes not cached (limit %d)", len(data), self._max_entry_bytes
            )
            return False
        try:
            await self._cache.set(key, data, ttl_s=self._ttl_s)
        except ServiceUnavailableError as exc:
            logger.warning("result cache unavailable, not caching: %s", exc.message)
            return False
        return True

    async def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(ServiceUnavailableError):
            await self._cache.delete(key)
