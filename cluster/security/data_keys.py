"""Data keys of encrypted Lake columns: wrapped in the platform DB, unwrapped in memory.

One data key per (table, column), created on the first encrypted write and stored only
wrapped by the key provider's current master key. The Lake's blocking work runs in
worker threads, so this store speaks *synchronous* SQLAlchemy to the same platform
database the async stores use (SQLite file or PostgreSQL through psycopg2).

``rotate_master`` re-wraps every data key under a new master key. Each row is its own
commit and names the master that wrapped it, so a rotation cut short leaves every key
readable (both masters are still there) and running it again finishes the job.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cluster.db.models import DataKey
from cluster.errors import PlatformStateError
from cluster.security.envelope import new_data_key
from cluster.security.keyring import KeyProvider
from cluster.settings import Settings

_ASYNC_TO_SYNC = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg2"}


def sync_db_url(settings: Settings) -> str:
    """The platform DB's URL with a synchronous driver (for code running in threads)."""
    url = make_url(settings.platform_db_url())
    driver = _ASYNC_TO_SYNC.get(url.drivername, url.drivername)
    query = dict(url.query)
    if driver.startswith("postgresql") and "ssl" in query:  # asyncpg's spelling
        query.setdefault("sslmode", query.pop("ssl"))
    return url.set(drivername=driver, query=query).render_as_string(hide_password=False)


def _sqlite_busy_timeout(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA busy_timeout = 30000")


def sync_engine(settings: Settings) -> Engine:
    """A small synchronous engine on the platform DB; connects on first use."""
    url = sync_db_url(settings)
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_busy_timeout)
    return engine


def key_context(table: str, column: str, key_id: str) -> bytes:
    """What a wrapping is bound to: a wrapped key copied to another row does not open."""
    return f"{table}|{column}|{key_id}".encode()


@dataclass(frozen=True)
class ColumnKey:
    """An unwrapped data key: its id (part of every cell's associated data) and bytes."""

    key_id: str
    key: bytes = field(repr=False)


@dataclass(frozen=True)
class RotationReport:
    """What ``rotate_master`` did."""

    master_key_id: str
    rewrapped: int
    resumed: bool
    old_master_keys: list[str]
    removed: list[str]


class DataKeyStore:
    """Rows of ``data_keys`` (migration 0008) over a synchronous engine."""

    def __init__(self, engine: Engine, now: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self._engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._now = now
        self._checked = False

    def get(self, table: str, column: str) -> DataKey | None:
        with self._session() as session:
            return session.scalars(
                select(DataKey).where(DataKey.table_name == table, DataKey.column_name == column)
            ).one_or_none()

    def add(self, row: DataKey) -> DataKey:
        """Insert ``row``; when another process inserted that column's key first, theirs."""
        try:
            with self._session() as session, session.begin():
                session.add(row)
            return row
        except IntegrityError:
            existing = self.get(row.table_name, row.column_name)
            if existing is None:  # pragma: no cover - the conflict was on something else
                raise
            return existing

    def all(self) -> list[DataKey]:
        with self._session() as session:
            return list(session.scalars(select(DataKey).order_by(DataKey.created_at)))

    def rewrap(self, row: DataKey, master_key_id: str, wrapped: bytes) -> bool:
        """Store a new wrapping if the row is still under the master it was read with."""
        with self._session() as session, session.begin():
            result = session.execute(
                update(DataKey)
                .where(DataKey.id == row.id, DataKey.master_key_id == row.master_key_id)
                .values(master_key_id=master_key_id, wrapped=wrapped, rewrapped_at=self._now())
            )
        return bool(getattr(result, "rowcount", 0))

    def now(self) -> datetime:
        return self._now()

    def _session(self) -> Session:
        if not self._checked:
            self._check_schema()
        return self._sessions()

    def _check_schema(self) -> None:
        try:
            present = inspect(self._engine).has_table(DataKey.__tablename__)
        except OperationalError as exc:
            raise PlatformStateError(
                f"cannot read the platform database for data keys: {exc.orig}"
            ) from None
        if not present:
            raise PlatformStateError(
                "the platform database has no data_keys table (migration 0008); "
                "run `datapunk db upgrade`"
            )
        self._checked = True


class DataKeys:
    """Data keys for encrypted columns: created once, unwrapped once per process."""

    def __init__(self, store: DataKeyStore, provider: KeyProvider) -> None:
        self.store = store
        self.provider = provider
        self._cache: dict[tuple[str, str], ColumnKey] = {}
        self._lock = threading.Lock()  # the Lake runs in several worker threads

    def key_for(self, table: str, column: str, *, create: bool) -> ColumnKey | None:
        """The column's data key; created (and wrapped) when missing and ``create``."""
        with self._lock:
            cached = self._cache.get((table, column))
        if cached is not None:
            return cached
        row = self.store.get(table, column)
        if row is None:
            if not create:
                return None
            row = self.store.add(self._new_row(table, column))
        context = key_context(table, column, row.id)
        key = ColumnKey(row.id, self.provider.unwrap(row.master_key_id, row.wrapped, context))
        with self._lock:
            self._cache[(table, column)] = key
        return key

    def _new_row(self, table: str, column: str) -> DataKey:
        key_id = "dk_" + secrets.token_hex(8)
        master_id, wrapped = self.provider.wrap(new_data_key(), key_context(table, column, key_id))
        return DataKey(
            id=key_id,
            table_name=table,
            column_name=column,
            master_key_id=master_id,
            wrapped=wrapped,
            created_at=self.store.now(),
        )


def rotate_master(
    store: DataKeyStore, provider: KeyProvider, *, remove_old: bool = False
) -> RotationReport:
    """Re-wrap every data key under a new master key; no data file is touched.

    Idempotent when interrupted: if some rows are still under an older master, this run
    finishes that rotation instead of starting another. ``remove_old`` then destroys
    the master keys no row needs any more.
    """
    current = provider.current_key_id()
    rows = store.all()
    stale = [row for row in rows if row.master_key_id != current]
    resumed = bool(stale)
    if not resumed:
        current = provider.rotate()
        stale = rows
    for row in stale:
        context = key_context(row.table_name, row.column_name, row.id)
        plain = provider.unwrap(row.master_key_id, row.wrapped, context)
        master_id, wrapped = provider.wrap(plain, context)
        if master_id != current:  # pragma: no cover - a concurrent rotation moved on
            raise PlatformStateError(
                "another master-key rotation started meanwhile; run this one again"
            )
        store.rewrap(row, master_id, wrapped)
    in_use = {row.master_key_id for row in store.all()}
    old = [key_id for key_id in provider.key_ids() if key_id != current and key_id not in in_use]
    removed = []
    if remove_old:
        for key_id in old:
            provider.retire(key_id)
            removed.append(key_id)
    return RotationReport(current, len(stale), resumed, old, removed)
