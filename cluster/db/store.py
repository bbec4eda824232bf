"""The shared base of stores on the platform DB: one clock, one session discipline.

Every store reads time only through its injected ``now`` (aware UTC) and opens sessions
whose database failures arrive as typed errors: unreachable → ``ServiceUnavailableError``,
missing table → ``PlatformStateError`` telling to run ``datapunk db upgrade``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cluster.db.diagnose import (
    is_missing_table,
    is_unavailable,
    missing_schema_error,
    unavailable_error,
)
from cluster.errors import ConfigError, DatapunkError


class PlatformStore:
    """Base for ``KeyStore``, ``SqlIngestState`` and later stores on the platform DB."""

    table_name: ClassVar[str] = "the platform tables"

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], now: Callable[[], datetime]
    ) -> None:
        self._sessions = session_factory
        self._now_fn = now

    def _now(self) -> datetime:
        now = self._now_fn()
        if now.tzinfo is None:
            raise ValueError(f"{type(self).__name__}'s now() must return an aware datetime")
        return now.astimezone(UTC)

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        """A session whose database failures arrive as ``DatapunkError`` subclasses."""
        try:
            async with self._sessions() as session:
                yield session
        except DatapunkError:
            raise
        except Exception as exc:
            if is_unavailable(exc):
                raise unavailable_error(self._url(), exc) from None
            if is_missing_table(exc):
                raise missing_schema_error(self.table_name) from None
            raise

    def _url(self) -> str:
        bind = self._sessions.kw.get("bind")
        if isinstance(bind, AsyncEngine):
            return bind.url.render_as_string(hide_password=False)
        return "the configured database"


def upsert_insert(session: AsyncSession) -> Any:
    """The dialect's ``insert``, which offers ``on_conflict_do_update`` (an upsert)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return pg_insert
    if dialect == "sqlite":
        return sqlite_insert
    raise ConfigError(
        key="database_url", value=dialect, allowed="a PostgreSQL or SQLite platform database"
    )
