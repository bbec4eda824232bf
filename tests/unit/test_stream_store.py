"""Stream checkpoints and topologies: the in-memory store and SQLite, one contract."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.stream.ports import CheckpointStore, InMemoryCheckpoints
from cluster.db.engine import connect, create_engine
from cluster.db.migrate import ensure_schema, head_revision, upgrade
from cluster.settings import Settings
from tests.contracts.checkpoints import CheckpointStoreContract, StreamStoresContract
from tests.contracts.platform_db import downgrade_to, table_names


class TestInMemoryCheckpoints(CheckpointStoreContract):
    @pytest.fixture
    def checkpoints(self) -> CheckpointStore:
        return InMemoryCheckpoints()


class TestStreamStoresOnSqlite(StreamStoresContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)


async def test_a_database_at_0002_gains_the_stream_tables_and_loses_them_down(
    data_dir: Path,
) -> None:
    settings = Settings(data_dir=data_dir)
    assert await upgrade(settings, "0002") == "0002"
    assert await ensure_schema(settings) == head_revision()
    stream = {"stream_topologies", "stream_checkpoints"}
    engine = create_engine(settings)
    try:
        async with connect(engine, settings.platform_db_url()) as connection:
            assert stream <= await connection.run_sync(table_names)
            after = await connection.run_sync(downgrade_to, "0002")
            await connection.commit()
    finally:
        await engine.dispose()
    assert not stream & after
    assert {"api_keys", "ingest_runs", "ingest_inputs"} <= after
