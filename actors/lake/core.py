"""Lake service core: Iceberg tables in a SQL catalog, time travel, optimistic commits.

``LakeCore`` is the facade the Ray shell (``actors/lake/actor.py``) calls; the work is
done by ``TableCatalog`` (namespaces, create, describe, drop), ``TableWriter`` (commits
under optimistic concurrency) and ``reads`` (scans, time travel). Tables are plain
Iceberg tables, so other Iceberg engines read them through the same catalog.

The catalog opens on first use, not in the constructor, so health checks and tests that
never touch a table need no database.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.exc import DBAPIError

from actors.base import ServiceCore
from actors.lake import reads
from actors.lake.catalog import catalog_unavailable, catalog_uri, open_catalog
from actors.lake.commits import CommitResult, RetryPolicy, Sleep
from actors.lake.describe import SnapshotInfo, TableDescription
from actors.lake.encryption import (
    LakeEncryption,
    encrypted_columns,
    has_encrypted_fields,
    sensitive_columns,
    shown_description,
)
from actors.lake.errors import invalid
from actors.lake.evolution import SchemaChanges
from actors.lake.specs import parse_table_name
from actors.lake.staging import materialise
from actors.lake.tables import TableCatalog
from actors.lake.writes import BeforeCommit, Data, Properties, TableWriter
from cluster.settings import Settings

P = ParamSpec("P")
R = TypeVar("R")


def _catalog_call(
    method: Callable[Concatenate[LakeCore, P], R],
) -> Callable[Concatenate[LakeCore, P], R]:
    """Report a catalog database that fails mid-operation as ``ServiceUnavailableError``."""

    @functools.wraps(method)
    def wrapper(self: LakeCore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(self, *args, **kwargs)
        except DBAPIError as exc:
            raise catalog_unavailable(catalog_uri(self.settings), exc) from None

    return wrapper


class LakeCore(ServiceCore):
    """Plain lake logic, tested without Ray."""

    service = "lake"

    def __init__(
        self,
        settings: Settings,
        index: int,
        now: Callable[[], float] = time.time,
        *,
        sleep: Sleep = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(settings, index, now)
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._tables: TableCatalog | None = None
        self._writer: TableWriter | None = None
        # Sensitive columns; keys and the platform DB are opened only when one is used.
        self.crypto = LakeEncryption(settings)

    # --- wiring ----------------------------------------------------------------

    @property
    def catalog(self) -> SqlCatalog:
        """The pyiceberg catalog (opened on first use)."""
        return self.tables.catalog

    @property
    def tables(self) -> TableCatalog:
        if self._tables is None:
            self._tables = TableCatalog(
                open_catalog(self.settings), compression=self.settings.lake.compression
            )
        return self._tables

    @property
    def writer(self) -> TableWriter:
        if self._writer is None:
            policy = RetryPolicy(retries=self.settings.lake.commit_retries)
            self._writer = TableWriter(
                self.tables, policy, sleep=self._sleep, rng=self._rng, crypto=self.crypto
            )
        return self._writer

    # --- namespaces ------------------------------------------------------------

    @_catalog_call
    def create_namespace(self, namespace: str, *, exist_ok: bool = False) -> None:
        """Create a namespace (``default`` also appears on first table creation)."""
        self.tables.create_namespace(namespace, exist_ok=exist_ok)

    @_catalog_call
    def list_namespaces(self) -> list[str]:
        return self.tables.list_namespaces()

    @_catalog_call
    def drop_namespace(self, namespace: str) -> None:
        """Drop an empty namespace."""
        self.tables.drop_namespace(namespace)

    # --- tables ----------------------------------------------------------------

    @_catalog_call
    def create_table(
        self,
        name: str,
        schema: pa.Schema | None = None,
        data: Data | None = None,
        partition_by: list[str] | None = None,
        sort_by: list[str] | None = None,
        properties: dict[str, Any] | None = None,
    ) -> TableDescription:
        """Create ``ns.table`` from a schema or data; partition/sort by the mini-syntax.

        ``properties`` may name sensitive columns (``datapunk.sensitive``): they are stored
        encrypted from the first row on.
        """
        if properties and sensitive_columns({k: str(v) for k, v in properties.items()}):
            schema, data, properties = self._encrypted_create(
                name, schema, data, properties, [*(partition_by or []), *(sort_by or [])]
            )
        return self.tables.create_table(
            name,
            schema,
            data,
            partition_by=partition_by,
            sort_by=sort_by,
            properties=properties,
        )

    def _encrypted_create(
        self,
        name: str,
        schema: pa.Schema | None,
        data: Data | None,
        properties: dict[str, Any],
        terms: list[str],
    ) -> tuple[pa.Schema, pa.Table | None, dict[str, Any]]:
        full = parse_table_name(name).full
        rows = materialise(data) if data is not None else None
        plain_schema = schema if schema is not None else (rows.schema if rows else None)
        if plain_schema is None:
            raise invalid("schema", None, "give a schema, or data to infer it from")
        stored, props = self.crypto.prepare_create(full, plain_schema, properties, terms)
        if rows is not None:
            rows, _ = self.crypto.seal(full, {k: str(v) for k, v in props.items()}, rows)
        return stored, rows, props

    @_catalog_call
    def list_tables(self, namespace: str | None = None) -> list[str]:
        return self.tables.list_tables(namespace)

    @_catalog_call
    def describe(self, name: str) -> TableDescription:
        """The table as its users see it: an encrypted column shows its own type."""
        return shown_description(self.tables.describe(name))

    @_catalog_call
    def drop_table(self, name: str, *, purge: bool = False) -> None:
        self.tables.drop_table(name, purge=purge)

    # --- writes ----------------------------------------------------------------

    @_catalog_call
    def append(
        self,
        name: str,
        data: Data,
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
        snapshot_properties: Properties = None,
    ) -> CommitResult:
        """Append rows; ``before_commit`` runs after data files are written, before commit;
        ``snapshot_properties`` go into the snapshot summary."""
        return self.writer.append(
            name,
            data,
            evolve=evolve,
            before_commit=before_commit,
            snapshot_properties=snapshot_properties,
        )

    @_catalog_call
    def overwrite(
        self,
        name: str,
        data: Data,
        filter: str | None = None,
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
    ) -> CommitResult:
        """Replace every row, or the rows matching ``filter``, with ``data``."""
        return self.writer.overwrite(name, data, filter, evolve=evolve, before_commit=before_commit)

    @_catalog_call
    def upsert(
        self,
        name: str,
        data: Data,
        key_columns: list[str],
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
        snapshot_properties: Properties = None,
    ) -> CommitResult:
        """Update changed rows matching on ``key_columns``; insert the rest."""
        return self.writer.upsert(
            name,
            data,
            key_columns,
            evolve=evolve,
            before_commit=before_commit,
            snapshot_properties=snapshot_properties,
        )

    @_catalog_call
    def delete(self, name: str, filter: str, *, before_commit: BeforeCommit = None) -> CommitResult:
        """Delete the rows matching ``filter``."""
        return self.writer.delete(name, filter, before_commit=before_commit)

    @_catalog_call
    def evolve_schema(
        self,
        name: str,
        add: dict[str, str] | None = None,
        rename: dict[str, str] | None = None,
        widen: dict[str, str] | None = None,
    ) -> TableDescription:
        """Add, rename and widen columns in one commit; returns the new description."""
        changes = SchemaChanges(
            add=dict(add or {}), rename=dict(rename or {}), widen=dict(widen or {})
        )
        self.writer.evolve_schema(name, changes)
        return self.tables.describe(name)

    @_catalog_call
    def rollback(self, name: str, snapshot_id: int) -> CommitResult:
        """Make an earlier (or, after a rollback, a later) snapshot current again."""
        return self.writer.rollback(name, snapshot_id)

    # --- reads -----------------------------------------------------------------

    @_catalog_call
    def scan(
        self,
        name: str,
        columns: list[str] | None = None,
        filter: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
        limit: int | None = None,
        *,
        decrypt: bool = False,
    ) -> pa.Table:
        """Rows, projected and filtered in pyiceberg, optionally at a snapshot or time.

        Encrypted columns come back decrypted with ``decrypt``, else masked.
        """
        stored = self.scan_stored(name, columns, filter, snapshot_id, as_of, limit)
        return self.reveal(name, stored, decrypt=decrypt)

    @_catalog_call
    def scan_stored(
        self,
        name: str,
        columns: list[str] | None = None,
        filter: str | None = None,
        snapshot_id: int | None = None,
        as_of: datetime | None = None,
        limit: int | None = None,
    ) -> pa.Table:
        """``scan`` as stored: encrypted columns still sealed (safe to cache), annotated
        so ``reveal`` can open or mask them later."""
        parsed, table = self.tables.load(name)
        self.crypto.check_filter(parsed.full, table.properties, filter)
        stored = reads.scan(
            table,
            parsed.full,
            columns=columns,
            filter=filter,
            snapshot_id=snapshot_id,
            as_of=as_of,
            limit=limit,
            max_bytes=self.settings.lake.max_result_bytes,
        )
        return self.crypto.annotate(table.properties, stored)

    @_catalog_call
    def is_encrypted(self, name: str) -> bool:
        """Whether ``name`` stores any column encrypted (metadata only)."""
        _, table = self.tables.load(name)
        return bool(encrypted_columns(table.properties))

    def reveal(self, name: str, stored: pa.Table, *, decrypt: bool) -> pa.Table:
        """Decrypt (``decrypt``) or mask the encrypted columns of a ``scan_stored`` result."""
        if not has_encrypted_fields(stored):
            return stored
        return self.crypto.reveal(parse_table_name(name).full, stored, decrypt=decrypt)

    @_catalog_call
    def protect_columns(self, name: str, columns: list[str]) -> dict[str, Any]:
        """Declare more columns sensitive; data already stored in them is rewritten
        encrypted in one commit (see ``actors.lake.protect``)."""
        from actors.lake.protect import protect_columns

        parsed, table = self.tables.load(name)
        return protect_columns(self.crypto, parsed.full, table, columns)

    @_catalog_call
    def resolve_snapshot(
        self, name: str, snapshot_id: int | None = None, as_of: datetime | None = None
    ) -> int | None:
        """The snapshot id a read would see (``None``: empty table); metadata only."""
        parsed, table = self.tables.load(name)
        return reads.resolve_snapshot(table, parsed.full, snapshot_id=snapshot_id, as_of=as_of)

    @_catalog_call
    def history(self, name: str) -> list[SnapshotInfo]:
        """When each snapshot became current, oldest first."""
        _, table = self.tables.load(name)
        return reads.history(table)
