"""Where the Iceberg catalog and warehouse live, and opening the catalog.

The catalog is pyiceberg's ``SqlCatalog`` (the JDBC catalog's tables), so Spark, Trino,
DuckDB or plain pyiceberg can open the same tables with the same URI and warehouse:

* ``settings.catalog_url`` when set;
* else the platform database when it is PostgreSQL (``DATAPUNK_DATABASE_URL``);
* else a SQLite file, ``<data_dir>/lake/catalog.db``.

pyiceberg builds a *synchronous* SQLAlchemy engine, so async driver names are mapped to
psycopg2. The warehouse is ``<data_dir>/lake/warehouse``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from typing import Any

from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
from pyiceberg.table import CommitTableResponse, Table
from pyiceberg.table.metadata import TableMetadata
from sqlalchemy import event, make_url
from sqlalchemy.engine import URL, Engine
from sqlalchemy.exc import DBAPIError

from cluster.errors import ServiceUnavailableError
from cluster.settings import Settings, redact_url

CATALOG_NAME = "datapunk"
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = "10"
_PG_DRIVERS = ("postgresql", "postgresql+asyncpg", "postgresql+psycopg2", "postgres")


def catalog_uri(settings: Settings) -> str:
    """The synchronous SQLAlchemy URL of the Iceberg SQL catalog."""
    explicit = settings.secret("catalog_url")
    if explicit:
        return _sync_url(explicit)
    if settings.database_url is not None:
        platform = settings.database_url.get_secret_value()
        if make_url(platform).drivername in _PG_DRIVERS:
            return _sync_url(platform)
    return f"sqlite:///{settings.data_path / 'lake' / 'catalog.db'}"


def warehouse_uri(settings: Settings) -> str:
    """The ``file://`` URI of the directory that holds table data and metadata files."""
    return f"file://{settings.data_path / 'lake' / 'warehouse'}"


def open_catalog(settings: Settings) -> SqlCatalog:
    """Open (and on first use create) the catalog; unreachable DB -> ``ServiceUnavailableError``."""
    uri = catalog_uri(settings)
    (settings.data_path / "lake" / "warehouse").mkdir(parents=True, exist_ok=True)
    try:
        catalog = _LakeSqlCatalog(CATALOG_NAME, uri=uri, warehouse=warehouse_uri(settings))
    except DBAPIError as exc:
        raise catalog_unavailable(uri, exc) from None
    if catalog.engine.dialect.name == "sqlite":
        _tune_sqlite(catalog.engine)
    return catalog


def catalog_unavailable(uri: str, exc: DBAPIError) -> ServiceUnavailableError:
    """The one-line error for a catalog database that cannot be reached or used."""
    reason = " ".join(str(exc.orig).split()) or type(exc.orig).__name__
    return ServiceUnavailableError(
        service="Iceberg catalog database",
        target=redact_url(uri),
        reason=reason,
        fix="start the database, or point DATAPUNK_CATALOG_URL (or DATAPUNK_DATABASE_URL) "
        "at a reachable one",
    )


def _sync_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername not in _PG_DRIVERS:
        return url  # sqlite URLs are already synchronous
    parsed = parsed.set(drivername="postgresql+psycopg2")
    return _pg_query(parsed).render_as_string(hide_password=False)


def _pg_query(url: URL) -> URL:
    """libpq spellings of the query: asyncpg's ``ssl`` is ``sslmode``; a connect timeout.

    Without ``connect_timeout`` libpq waits for TCP itself (minutes) on an address that
    drops packets; the catalog is opened in the actor's constructor, which must fail fast.
    """
    query = dict(url.query)
    if "ssl" in query:
        query.setdefault("sslmode", query.pop("ssl"))
    query.setdefault("connect_timeout", PG_CONNECT_TIMEOUT_S)
    return url.set(query=query)


def _tune_sqlite(engine: Engine) -> None:
    """Make the SQLite catalog safe for several writer processes (one per lake actor).

    pyiceberg builds its engine as ``create_engine(uri, echo, pool_pre_ping)`` and offers
    no way to pass ``connect_args``. A SQLAlchemy ``connect`` listener runs for every new
    DBAPI connection, so it gives each one a 30 s busy timeout (a commit waits for the
    lock instead of failing with "database is locked") and WAL journaling (readers do not
    block the writer). The connection pyiceberg opened in its constructor, before the
    listener existed, is dropped with ``dispose()`` so every pooled one is tuned; that
    first one had sqlite3's default 5 s timeout, enough for creating the catalog tables.
    """
    event.listen(engine, "connect", _sqlite_pragmas)
    engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if not isinstance(dbapi_connection, sqlite3.Connection):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
    finally:
        cursor.close()


_CACHED_TABLES = 256


class _LakeSqlCatalog(SqlCatalog):
    """``SqlCatalog`` that keeps each table's latest parsed metadata, by its file.

    A metadata file is immutable (every commit writes a new one and swaps the catalog
    row's pointer), so the parsed, frozen ``TableMetadata`` stays valid for as long as
    the row points at that file. Without this every load re-reads and re-validates the
    whole JSON (each snapshot, the logs): twice per commit (the writer's load and the
    catalog's compare-and-swap check), ~6 ms each at 200 snapshots. The row is still read
    on every load, so a commit from another process is seen at once. One version per
    table is kept: older ones are only read by time travel, and each one held adds every
    snapshot's objects to what a full GC pass walks.
    """

    def __init__(self, name: str, **properties: str) -> None:
        super().__init__(name, **properties)
        self._latest: OrderedDict[tuple[str, str], tuple[str, TableMetadata]] = OrderedDict()
        self._latest_lock = threading.Lock()

    def _convert_orm_to_iceberg(self, orm_table: IcebergTables) -> Table:
        key = (orm_table.table_namespace, orm_table.table_name)
        location = orm_table.metadata_location
        with self._latest_lock:
            cached = self._latest.get(key)
        if cached is None or cached[0] != location:
            table = super()._convert_orm_to_iceberg(orm_table)
            self._remember(key, table.metadata_location, table.metadata)
            return table
        metadata = cached[1]
        return Table(
            identifier=(*Catalog.identifier_to_tuple(key[0]), key[1]),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    def commit_table(self, table: Table, requirements: Any, updates: Any) -> CommitTableResponse:
        response = super().commit_table(table, requirements, updates)
        identifier = table.name()
        key = (
            Catalog.namespace_to_string(Catalog.namespace_from(identifier)),
            Catalog.table_name_from(identifier),
        )
        self._remember(key, response.metadata_location, response.metadata)  # just written
        return response

    def _remember(self, key: tuple[str, str], location: str, metadata: TableMetadata) -> None:
        with self._latest_lock:
            self._latest[key] = (location, metadata)
            self._latest.move_to_end(key)
            while len(self._latest) > _CACHED_TABLES:
                self._latest.popitem(last=False)
