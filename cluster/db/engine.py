"""The platform database engine: SQLite in ``data_dir`` by default, PostgreSQL when set.

``create_engine`` only builds the engine (and the SQLite folder); the first connection
is made when something uses it, so building one at an entry point is cheap.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import StaticPool

from cluster.db.diagnose import is_unavailable, unavailable_error
from cluster.errors import ConfigError, DatapunkError
from cluster.settings import Settings

CHECK_TIMEOUT_S = 5.0
SQLITE_BUSY_TIMEOUT_MS = 5_000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the gateway read while the CLI writes; busy_timeout makes a writer wait
    # for the lock instead of failing at once with "database is locked".
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_engine(url: str) -> AsyncEngine:
    database = make_url(url).database
    if database in (None, "", ":memory:"):
        # One shared connection, or every checkout would see its own empty database.
        engine = create_async_engine(url, poolclass=StaticPool)
    else:
        folder = Path(database).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                key="data_dir (env DATAPUNK_DATA_DIR)",
                value=str(folder),
                allowed=f"a directory Datapunk can create and write ({exc.strerror})",
            ) from None
        engine = create_async_engine(url)
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def create_engine(settings: Settings, *, connect_timeout_s: float = 10.0) -> AsyncEngine:
    """The async engine of ``settings.platform_db_url()``; creates the SQLite folder.

    Raises ``ConfigError`` when that folder cannot be created.
    """
    url = settings.platform_db_url()
    if make_url(url).get_backend_name() == "sqlite":
        return _sqlite_engine(url)
    return create_async_engine(
        url,
        pool_pre_ping=True,
        connect_args={
            "timeout": connect_timeout_s,
            "server_settings": {"application_name": "datapunk"},
        },
    )


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose loaded rows stay readable after commit (no lazy reloads in async)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def connect(engine: AsyncEngine, url: str) -> AsyncIterator[AsyncConnection]:
    """A connection of ``engine``; a failure to connect becomes ``ServiceUnavailableError``.

    ``url`` is the plain URL (redacted before it is shown). Errors raised by the caller's
    own statements pass through unchanged.
    """
    try:
        connection = await engine.connect()
    except Exception as exc:
        if is_unavailable(exc):
            raise unavailable_error(url, exc) from None
        raise
    try:
        yield connection
    finally:
        await connection.close()


async def check_database(settings: Settings, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """Connect and run ``SELECT 1`` within ``timeout_s``; raise ``ServiceUnavailableError``."""
    url = settings.platform_db_url()
    engine = create_engine(settings, connect_timeout_s=timeout_s)
    try:
        async with asyncio.timeout(timeout_s + 1.0), connect(engine, url) as connection:
            await connection.execute(text("SELECT 1"))
    except DatapunkError:
        raise
    except TimeoutError as exc:
        raise unavailable_error(url, exc) from None
    except Exception as exc:
        if is_unavailable(exc):
            raise unavailable_error(url, exc) from None
        raise
    finally:
        await engine.dispose()
