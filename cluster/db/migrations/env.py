"""Alembic environment: runs on a connection handed over by ``cluster.db.migrate``.

``cluster.db.migrate`` opens an async connection and calls Alembic inside
``connection.run_sync``, passing the connection in ``config.attributes``. Run from the
``alembic`` CLI instead, this file builds the engine from Datapunk's settings.
Logging is deliberately left alone: ``fileConfig`` would replace the app's handlers.
"""

from __future__ import annotations

import asyncio
import logging

from alembic import context
from sqlalchemy.engine import Connection

from cluster.db.engine import create_engine
from cluster.db.models import Base
from cluster.settings import load_settings

config = context.config
target_metadata = Base.metadata


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite can't ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=True,
        **kwargs,
    )


def _run_on(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_settings() -> None:
    engine = create_engine(load_settings())
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: print the SQL for the configured database."""
    url = config.get_main_option("sqlalchemy.url") or load_settings().platform_db_url()
    _configure(url=url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Apply migrations on the handed-over connection, or on one made from settings."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
        return
    if config.cmd_opts is not None:  # the `alembic` CLI: show progress as it always does
        logging.basicConfig(level=logging.INFO, format="%(levelname)-5.5s [%(name)s] %(message)s")
    asyncio.run(_run_from_settings())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
