"""The platform database on SQLite: engine, migrations, and one-line connection errors."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text

from cluster.db.engine import check_database, create_engine, session_factory
from cluster.db.migrate import current_revision, ensure_schema, head_revision, upgrade
from cluster.errors import ConfigError, InvalidInputError, ServiceUnavailableError
from cluster.security.keys import KeyStore
from cluster.settings import Settings
from tests.clock import FakeClock

UNREACHABLE_PG = "postgresql+asyncpg://nobody@127.0.0.1:1/x"


async def test_engine_creates_the_data_dir_and_uses_wal(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "not" / "yet")
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            mode = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            busy = (await connection.execute(text("PRAGMA busy_timeout"))).scalar()
    finally:
        await engine.dispose()
    assert (tmp_path / "not" / "yet" / "platform.db").is_file()
    assert (mode, busy) == ("wal", 5000)


async def test_uncreatable_data_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="data_dir"):
        create_engine(Settings(data_dir=tmp_path / "file" / "sub"))


async def test_upgrade_twice_and_current(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    assert await current_revision(settings) is None
    assert await upgrade(settings) == head_revision()
    assert await upgrade(settings) == head_revision()
    assert await ensure_schema(settings) == head_revision()
    assert await current_revision(settings) == head_revision()


async def test_a_database_at_0001_upgrades_to_the_ingest_tables(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    assert await upgrade(settings, "0001") == "0001"
    assert await ensure_schema(settings) == head_revision()
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(sa_inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert {"api_keys", "ingest_runs", "ingest_inputs"} <= tables


async def test_unknown_revision_is_invalid_input(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="revision"):
        await upgrade(Settings(data_dir=data_dir), "nope")


async def test_migrations_leave_logging_alone(data_dir: Path) -> None:
    app_logger = logging.getLogger("some.app.logger")
    cluster_logger = logging.getLogger("cluster")
    before = (list(logging.root.handlers), logging.root.level, list(cluster_logger.handlers))
    await upgrade(Settings(data_dir=data_dir))
    after = (list(logging.root.handlers), logging.root.level, list(cluster_logger.handlers))
    assert after == before
    assert not app_logger.disabled  # fileConfig would have disabled existing loggers


async def test_check_database_passes_on_sqlite(data_dir: Path) -> None:
    await check_database(Settings(data_dir=data_dir))


async def test_unreachable_postgres_is_one_clear_line(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, database_url=UNREACHABLE_PG)
    with pytest.raises(ServiceUnavailableError) as caught:
        await check_database(settings)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith("platform database at postgresql+asyncpg://nobody@127.0.0.1:1/x")
    assert "connection refused" in message
    assert "Fix: start the database server on 127.0.0.1:1" in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


async def test_password_is_redacted_in_the_error(data_dir: Path) -> None:
    url = "postgresql+asyncpg://bob:hunter2@127.0.0.1:1/x"
    with pytest.raises(ServiceUnavailableError) as caught:
        await check_database(Settings(data_dir=data_dir, database_url=url))
    assert "hunter2" not in caught.value.message
    assert "bob:***@127.0.0.1" in caught.value.message


async def test_unresolvable_host_is_named(data_dir: Path) -> None:
    url = "postgresql+asyncpg://u@no-such-host.invalid:5432/x"
    with pytest.raises(
        ServiceUnavailableError, match=r"could not resolve host 'no-such-host\.invalid'"
    ):
        await check_database(Settings(data_dir=data_dir, database_url=url))


async def test_migrating_an_unreachable_database_is_service_unavailable(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir, database_url=UNREACHABLE_PG)
    with pytest.raises(ServiceUnavailableError, match="connection refused"):
        await upgrade(settings)
    with pytest.raises(ServiceUnavailableError, match="connection refused"):
        await current_revision(settings)


async def test_keystore_on_an_unreachable_database_is_service_unavailable(data_dir: Path) -> None:
    engine = create_engine(Settings(data_dir=data_dir, database_url=UNREACHABLE_PG))
    try:
        store = KeyStore(session_factory(engine), FakeClock().now)
        with pytest.raises(ServiceUnavailableError, match="connection refused"):
            await store.authenticate("dp_" + "x" * 43)
    finally:
        await engine.dispose()


async def test_keystore_refuses_a_naive_clock(data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    try:
        store = KeyStore(session_factory(engine), lambda: FakeClock().now().replace(tzinfo=None))
        with pytest.raises(ValueError, match="aware"):
            await store.create("admin")
    finally:
        await engine.dispose()


async def test_a_server_that_never_answers_times_out(data_dir: Path) -> None:
    with socket.socket() as silent:  # accepts TCP (kernel backlog) but never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        url = f"postgresql+asyncpg://u@127.0.0.1:{port}/x"
        with pytest.raises(ServiceUnavailableError, match="connection timed out"):
            await check_database(Settings(data_dir=data_dir, database_url=url), timeout_s=0.5)
