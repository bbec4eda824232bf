"""The Lake actor pool on a real Ray cluster: concurrent writers, a writer killed
between writing files and committing, typed errors across processes, Ray Data reads."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pyarrow as pa
import pytest
import ray

from actors.lake.client import RayLake, to_ray_dataset
from actors.lake.errors import SchemaMismatchError, TableNotFoundError
from actors.lake.service import LakeService
from cluster.pools import actor_name, start_pools, stop_pools
from cluster.settings import Settings, load_settings
from tests.ray.conftest import TEST_NAMESPACE

WRITERS = 4
APPENDS_EACH = 50


@pytest.fixture
def lake_settings(ray_cluster: None, data_dir) -> Iterator[Settings]:
    settings = load_settings(
        data_dir=data_dir,
        ray={"namespace": TEST_NAMESPACE},
        pools={"lake": WRITERS, "stream": 0, "cortex": 0, "forge": 0},
    )
    start_pools(settings)
    yield settings
    stop_pools(settings)


def _rows(writer: int, seq: int) -> pa.Table:
    return pa.table({"writer": pa.array([writer], pa.int64()), "seq": pa.array([seq], pa.int64())})


async def _create(lake: LakeService, name: str) -> None:
    schema = pa.schema([pa.field("writer", pa.int64()), pa.field("seq", pa.int64())])
    await lake.create_table(name, schema=schema)


def test_four_writers_fifty_appends_each_lose_nothing(lake_settings: Settings) -> None:
    lake = RayLake(lake_settings).as_service()
    name = "load.events"

    async def writer(index: int) -> list[int]:
        attempts = []
        for seq in range(APPENDS_EACH):
            result = await lake.append(name, _rows(index, seq))
            attempts.append(result["attempts"])
        return attempts

    async def scenario() -> tuple[list[list[int]], pa.Table, list[dict]]:
        await lake.create_namespace("load")
        await _create(lake, name)
        attempts = await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        return attempts, await lake.scan(name), await lake.history(name)

    attempts, rows, history = asyncio.run(scenario())
    expected = {(w, s) for w in range(WRITERS) for s in range(APPENDS_EACH)}
    seen = set(zip(rows["writer"].to_pylist(), rows["seq"].to_pylist(), strict=True))
    assert seen == expected and rows.num_rows == len(expected)
    appends = [h for h in history if h["operation"] == "append"]
    assert len(appends) == WRITERS * APPENDS_EACH
    # The writers really raced: optimistic commits were lost and retried, not serialised.
    assert max(max(a) for a in attempts) > 1


def test_killing_a_writer_between_file_write_and_commit_changes_nothing(
    lake_settings: Settings,
) -> None:
    lake = RayLake(lake_settings).as_service()
    name = "default.crash"
    asyncio.run(_create(lake, name))
    asyncio.run(lake.append(name, _rows(0, 0)))
    before = asyncio.run(lake.describe(name))["current_snapshot_id"]
    victim = ray.get_actor(actor_name("lake", 0), lake_settings.ray.namespace)
    pending = victim.call.remote("append", None, name, _rows(9, 9), pause_before_commit_s=30.0)
    time.sleep(3.0)  # files are written well before this; the commit waits on the pause
    ray.kill(victim, no_restart=False)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(pending, timeout=60)
    _wait_until_restarted(victim)
    assert asyncio.run(lake.describe(name))["current_snapshot_id"] == before
    assert asyncio.run(lake.scan(name)).num_rows == 1
    after = asyncio.run(lake.append(name, _rows(1, 1)))
    assert after["snapshot_id"] != before
    assert asyncio.run(lake.scan(name)).num_rows == 2


def _wait_until_restarted(handle: ray.actor.ActorHandle, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ray.get(handle.ping.remote(), timeout=10)
            return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_errors_cross_the_process_boundary_typed(lake_settings: Settings) -> None:
    lake = RayLake(lake_settings).as_service()
    with pytest.raises(TableNotFoundError, match=r"nope\.missing"):
        asyncio.run(lake.describe("nope.missing"))
    asyncio.run(_create(lake, "default.typed"))
    bad = pa.table({"writer": ["not a number"], "seq": [1]})
    with pytest.raises(SchemaMismatchError, match="writer"):
        asyncio.run(lake.append("default.typed", bad))
    assert asyncio.run(lake.scan("default.typed")).num_rows == 0


def test_scans_return_arrow_and_ray_data_reads_a_pinned_snapshot(
    lake_settings: Settings,
) -> None:
    lake = RayLake(lake_settings).as_service()
    name = "default.pinned"
    asyncio.run(_create(lake, name))
    first = asyncio.run(lake.append(name, pa.table({"writer": [1, 2], "seq": [1, 2]})))
    asyncio.run(lake.append(name, pa.table({"writer": [3], "seq": [3]})))
    table = asyncio.run(lake.scan(name))
    assert isinstance(table, pa.Table) and table.num_rows == 3
    pinned = to_ray_dataset(lake_settings, name, snapshot_id=first["snapshot_id"])
    assert sorted(r["writer"] for r in pinned.take_all()) == [1, 2]
    assert to_ray_dataset(lake_settings, name).count() == 3
