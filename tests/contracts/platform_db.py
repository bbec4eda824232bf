"""The fixtures every platform-database contract shares: settings, a clock and an engine.

A contract class (``AccountStoreContract``, ``KeyStoreContract``, ...) subclasses
``PlatformDbContract`` and builds its stores on ``engine`` and ``clock``; a backend's
test class subclasses the contract and provides ``db_settings``: settings whose
platform database is fresh and empty (SQLite in tests/unit, PostgreSQL in
tests/integration). ``table_names`` and ``downgrade_to`` serve the migration tests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic import command
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from cluster.db.engine import create_engine
from cluster.db.migrate import alembic_config, head_revision, upgrade
from cluster.settings import Settings
from tests.clock import FakeClock


def table_names(connection: Connection) -> set[str]:
    """The tables in the connection's database (for ``run_sync``)."""
    return set(sa_inspect(connection).get_table_names())


def downgrade_to(connection: Connection, revision: str) -> set[str]:
    """Run the migrations down to ``revision`` on ``connection`` (for ``run_sync``); the
    tables left."""
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, revision)
    return table_names(connection)


class PlatformDbContract:
    """A migrated platform database on the backend's ``db_settings``, and a fake clock."""

    @pytest.fixture
    def db_settings(self) -> Settings:
        raise NotImplementedError("a backend's test class provides db_settings")

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def engine(self, db_settings: Settings) -> AsyncIterator[AsyncEngine]:
        """An engine on a database upgraded to head; disposed after the test."""
        assert await upgrade(db_settings) == head_revision()
        engine = create_engine(db_settings)
        yield engine
        await engine.dispose()
