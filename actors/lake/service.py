"""The Lake port: one async API over the Lake core, with the result cache in front.

``LakeService`` runs the blocking pyiceberg/DuckDB work of ``LakeCore`` in worker
threads and serves repeated reads from the cache port, keyed by the snapshot ids they
read, so a new snapshot is a new key and nothing stale is ever served. It has no Ray in
it: the CLI and unit tests use it in-process (``LocalLake``), and each Lake actor wraps
one (``actors/lake/actor.py``); ``actors/lake/client.py`` offers the same methods over the
actor pool. Results are JSON-able dicts, except scans and SQL, which are Arrow tables.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
from pyiceberg.types import StringType

from actors.lake import maintenance
from actors.lake.compaction import compact
from actors.lake.core import LakeCore
from actors.lake.encryption import encrypted_columns, has_encrypted_fields
from actors.lake.formats import iter_batches_from_file
from actors.lake.native import ParquetFiles, native_files
from actors.lake.result_cache import ResultCache, cache_key
from actors.lake.sql import parse_query, run_sql
from cluster.cache import build_cache
from cluster.errors import InvalidInputError
from cluster.settings import Settings

T = TypeVar("T")


class _NoDictionaryNotice(logging.Filter):
    """pyiceberg logs a WARNING per batch read with ``dictionary_columns``; it means nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "does not have a dictionary type" not in record.getMessage()


_DICTIONARY_NOTICE = _NoDictionaryNotice()
RESULT_TTL_S = 600.0
MAX_CACHED_RESULT_BYTES = 32 * 1024 * 1024


def plain(value: Any) -> Any:
    """Dataclasses, datetimes and containers as JSON-able values."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def parse_as_of(value: datetime | str | None) -> datetime | None:
    """``as_of`` as an aware datetime; ISO 8601 text accepted, naive means UTC."""
    if value is None or isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidInputError(
                field="as_of", value=value, allowed="an ISO 8601 time, e.g. 2026-11-26T10:00:00Z"
            ) from None
    if parsed is not None and parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


class LakeService:
    """The async Lake API over one ``LakeCore`` and an optional result cache."""

    # SQL lets DuckDB read a snapshot's Parquet files itself when that reads exactly what
    # an Iceberg scan would (``native.native_files``); False forces the Arrow path.
    native_sql = True

    def __init__(
        self,
        core: LakeCore,
        results: ResultCache | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.core = core
        self.results = results
        logging.getLogger("pyiceberg.io.pyarrow").addFilter(_DICTIONARY_NOTICE)
        self._now = now

    @classmethod
    def with_cache(cls, core: LakeCore) -> LakeService:
        """The service over ``core`` with results cached through the settings' cache port."""
        cache = build_cache(core.settings, prefix="datapunk:lake:")
        return cls(core, ResultCache(cache, RESULT_TTL_S, MAX_CACHED_RESULT_BYTES))

    @classmethod
    def from_settings(cls, settings: Settings, index: int = 0) -> LakeService:
        return cls.with_cache(LakeCore(settings, index))

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # pyiceberg and DuckDB block; keep them off the event loop that serves callers.
        return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))

    # --- namespaces and tables ------------------------------------------------------

    async def list_namespaces(self) -> list[str]:
        return await self._run(self.core.list_namespaces)

    async def create_namespace(self, namespace: str, *, exist_ok: bool = False) -> None:
        """Create a namespace; ``default`` exists on first use, others are explicit."""
        await self._run(self.core.create_namespace, namespace, exist_ok=exist_ok)

    async def list_tables(self, namespace: str | None = None) -> list[str]:
        return await self._run(self.core.list_tables, namespace)

    async def create_table(self, name: str, **options: Any) -> dict[str, Any]:
        return plain(await self._run(self.core.create_table, name, **options))

    async def describe(self, name: str) -> dict[str, Any]:
        return plain(await self._run(self.core.describe, name))

    async def drop_table(self, name: str) -> None:
        await self._run(self.core.drop_table, name)

    # --- writes ------------------------------------------------------------------

    async def append(
        self,
        name: str,
        data: pa.Table,
        *,
        evolve: bool = True,
        pause_before_commit_s: float = 0,
        snapshot_properties: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Append ``data``. ``snapshot_properties`` go into the snapshot summary (a run or
        epoch id, for idempotent writers). ``pause_before_commit_s`` holds the written
        files uncommitted for that long: a fault-injection seam for crash drills."""
        hold = (lambda: time.sleep(pause_before_commit_s)) if pause_before_commit_s else None
        result = await self._run(
            self.core.append,
            name,
            data,
            evolve=evolve,
            before_commit=hold,
            snapshot_properties=snapshot_properties,
        )
        return plain(result)

    async def append_file(
        self, name: str, path: str, *, fmt: str | None = None, evolve: bool = True
    ) -> dict[str, Any]:
        """Append a CSV/JSON Lines/Parquet/Arrow file, streamed in batches, in one commit."""

        def load_and_append() -> Any:
            batches = iter_batches_from_file(Path(path), fmt)  # type: ignore[arg-type]
            first = next(batches, None)
            if first is None:
                raise InvalidInputError(field="file", value=path, allowed="a file with rows")
            reader = pa.RecordBatchReader.from_batches(first.schema, _chain(first, batches))
            return self.core.append(name, reader, evolve=evolve)

        return plain(await self._run(load_and_append))

    async def overwrite(
        self, name: str, data: pa.Table, *, filter: str | None = None, evolve: bool = True
    ) -> dict[str, Any]:
        result = await self._run(self.core.overwrite, name, data, filter, evolve=evolve)
        return plain(result)

    async def upsert(
        self, name: str, data: pa.Table, key_columns: list[str], *, evolve: bool = True
    ) -> dict[str, Any]:
        result = await self._run(self.core.upsert, name, data, key_columns, evolve=evolve)
        return plain(result)

    async def delete(self, name: str, filter: str) -> dict[str, Any]:
        return plain(await self._run(self.core.delete, name, filter))

    async def rollback(self, name: str, snapshot_id: int) -> dict[str, Any]:
        return plain(await self._run(self.core.rollback, name, snapshot_id))

    async def evolve_schema(self, name: str, **changes: Any) -> dict[str, Any]:
        return plain(await self._run(self.core.evolve_schema, name, **changes))

    # --- reads -------------------------------------------------------------------

    async def history(self, name: str) -> list[dict[str, Any]]:
        return plain(await self._run(self.core.history, name))

    async def scan(
        self,
        name: str,
        *,
        columns: list[str] | None = None,
        filter: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | str | None = None,
        limit: int | None = None,
        decrypt: bool = False,
    ) -> pa.Table:
        """Rows of ``name`` at a snapshot (latest by default), served from cache when seen.

        Encrypted columns are decrypted with ``decrypt`` (the caller holds
        ``lake.table:decrypt``), else masked. The cache holds them sealed either way.
        """
        when = parse_as_of(as_of)
        snapshot = await self._run(self.core.resolve_snapshot, name, snapshot_id, when)
        request = {"table": name, "columns": columns, "filter": filter, "limit": limit}
        key = cache_key("scan", {name: snapshot}, request)
        stored = await self._cached(
            key,
            lambda: self.core.scan_stored(
                name, columns=columns, filter=filter, snapshot_id=snapshot, limit=limit
            ),
        )
        if not has_encrypted_fields(stored):
            return stored
        return await self._run(self.core.reveal, name, stored, decrypt=decrypt)

    async def protect_columns(self, name: str, columns: list[str]) -> dict[str, Any]:
        """Declare ``columns`` sensitive: stored encrypted from now on (existing data too)."""
        return plain(await self._run(self.core.protect_columns, name, list(columns)))

    async def sql(self, query: str, limit: int | None = None, decrypt: bool = False) -> pa.Table:
        """A read-only DuckDB query over the current snapshot of every table it names.

        DuckDB sees encrypted columns decrypted with ``decrypt``, else masked, so SQL
        shows a caller nothing a scan would not; plaintext results are never cached.
        """
        lake = self.settings.lake
        if isinstance(query, str) and len(query) > lake.sql_max_query_chars:
            raise InvalidInputError(  # a cost limit: parsing and planning grow with the text
                field="query",
                value=f"{len(query)} characters",
                allowed=f"at most {lake.sql_max_query_chars} characters "
                "(lake.sql_max_query_chars); shorten the query or raise the setting",
            )
        row_limit = min(limit or lake.sql_row_limit, lake.sql_row_limit)
        parsed = parse_query(query)
        snapshots = {n: await self._run(self.core.resolve_snapshot, n) for n in parsed.tables}
        key = cache_key("sql", snapshots, {"query": query, "limit": row_limit, "decrypt": decrypt})
        sources = {
            n: functools.partial(self._reader, n, s, parsed.columns, decrypt)
            for n, s in snapshots.items()
        }
        plaintext = decrypt and any([await self._run(self.core.is_encrypted, n) for n in snapshots])
        return await self._cached(
            key,
            cache=not plaintext,
            compute=lambda: run_sql(
                query,
                sources,
                row_limit=row_limit,
                timeout_s=lake.sql_timeout_s,
                max_result_bytes=lake.max_result_bytes,
            ),
        )

    @property
    def settings(self) -> Settings:
        return self.core.settings

    def _reader(
        self,
        name: str,
        snapshot_id: int | None,
        columns: frozenset[str] | None = None,
        decrypt: bool = False,
    ) -> pa.RecordBatchReader | ParquetFiles:
        """What DuckDB scans: the columns the query names (``None``: all), strings read as
        dictionaries (DuckDB then hashes codes, not 5 million strings). A table with
        encrypted columns is read through Arrow, decrypted or masked batch by batch."""
        parsed, table = self.core.tables.load(name)
        encrypted = bool(encrypted_columns(table.properties))
        if self.native_sql and not encrypted:
            files = native_files(table, table.scan(snapshot_id=snapshot_id))
            if files is not None:
                return files
        fields = table.schema().fields
        if columns is None:
            chosen = list(fields)
        else:  # count(*) names no column: read the first one for the row count
            chosen = [f for f in fields if f.name.lower() in columns] or list(fields[:1])
        selected = ("*",) if len(chosen) == len(fields) else tuple(f.name for f in chosen)
        strings = tuple(f.name for f in chosen if isinstance(f.field_type, StringType))
        scan = table.scan(snapshot_id=snapshot_id, selected_fields=selected)
        reader = scan.to_arrow_batch_reader(dictionary_columns=strings)
        if not encrypted:
            return reader
        return self.core.crypto.reveal_reader(
            parsed.full, table.properties, reader, decrypt=decrypt
        )

    async def _cached(
        self, key: str, compute: Callable[[], pa.Table], *, cache: bool = True
    ) -> pa.Table:
        if self.results is not None and cache:
            hit = await self.results.get(key)
            if hit is not None:
                return hit
        result = await self._run(compute)
        if self.results is not None and cache:
            await self.results.put(key, result)
        return result

    # --- maintenance -------------------------------------------------------------

    async def maintain(
        self,
        name: str,
        *,
        compact_files: bool = True,
        expire_older_than_s: float | None = None,
        retain_last: int = 1,
        remove_orphans: bool = False,
        orphan_older_than_s: float | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Compact small files, expire old snapshots, remove orphan files; report each."""
        return plain(
            await self._run(
                self._maintain,
                name,
                compact_files,
                expire_older_than_s,
                retain_last,
                remove_orphans,
                orphan_older_than_s,
                dry_run,
            )
        )

    def _maintain(
        self,
        name: str,
        compact_files: bool,
        expire_older_than_s: float | None,
        retain_last: int,
        remove_orphans: bool,
        orphan_older_than_s: float | None,
        dry_run: bool,
    ) -> dict[str, Any]:
        now = self._now()
        lake = self.settings.lake
        report: dict[str, Any] = {"table": name}
        _, table = self.core.tables.load(name)
        if compact_files:
            target = lake.target_file_size_mb * 1024 * 1024
            report["compaction"] = compact(table, target_file_size_bytes=target, now=now)
        if expire_older_than_s is not None:
            older = now - timedelta(seconds=expire_older_than_s)
            report["expired_snapshots"] = maintenance.expire_snapshots(
                table, older_than=older, retain_last=retain_last
            )
        if remove_orphans:
            grace = lake.orphan_grace_s if orphan_older_than_s is None else orphan_older_than_s
            report["orphan_files"] = maintenance.remove_orphan_files(
                table, older_than=now - timedelta(seconds=grace), dry_run=dry_run
            )
        return report


def _chain(first: pa.RecordBatch, rest: Any) -> Any:
    yield first
    yield from rest


LocalLake = LakeService

# What the actor pool forwards: the public coroutine methods, nothing else.
LAKE_METHODS = frozenset(
    name
    for name, member in vars(LakeService).items()
    if not name.startswith("_") and inspect.iscoroutinefunction(member)
)
