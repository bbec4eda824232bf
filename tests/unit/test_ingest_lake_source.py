"""The Lake source on the embedded catalog: incremental by snapshot, pinned reads, splits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest

from actors.ingest.sources import LakePositionError, LakeSource, SourcePlan, StateView
from actors.ingest.state import SqlIngestState
from actors.lake.service import LakeService
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.errors import InvalidInputError
from cluster.settings import Settings, load_settings
from tests.clock import FakeClock


def events(ids: list[int]) -> pa.Table:
    tags = pa.array([f"t{i}" for i in ids], pa.string())
    return pa.table({"id": pa.array(ids, pa.int64()), "tag": tags})


@pytest.fixture
def lake(tmp_path: Path) -> LakeService:
    return LakeService.from_settings(load_settings(data_dir=tmp_path / "lake"))


@pytest.fixture
async def state(data_dir: Path) -> AsyncIterator[SqlIngestState]:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    yield SqlIngestState(session_factory(engine), FakeClock().now)
    await engine.dispose()


def ids(source: LakeSource, plan: SourcePlan) -> list[int]:
    return sorted(i for batch in source.read(plan) for i in batch.table.column("id").to_pylist())


async def test_incremental_reads_only_rows_appended_since_the_last_snapshot(
    lake: LakeService, state: SqlIngestState
) -> None:
    await lake.create_table("events", data=events([1, 2]))
    source = LakeSource(lake, "events")
    first = source.plan(await state.consumed("p"))
    assert ids(source, first) == [1, 2]
    await state.mark_consumed("p", "run_1", first)
    assert source.plan(await state.consumed("p")).empty

    await lake.append("events", events([3, 4]))
    await lake.append("events", events([5]))
    second = source.plan(await state.consumed("p"))
    assert second.refs[0].size == 3 and len(second.parts) == 2
    assert ids(source, second) == [3, 4, 5]
    await state.mark_consumed("p", "run_2", second)
    current = (await lake.describe("events"))["current_snapshot_id"]
    assert (await state.consumed("p")).position("lake") == second.position
    assert str(current) in (second.position or "")
    assert source.plan(await state.consumed("p")).empty


async def test_deletes_are_not_read_again_and_move_the_position(
    lake: LakeService, state: SqlIngestState
) -> None:
    await lake.create_table("events", data=events([1, 2, 3]))
    source = LakeSource(lake.core, "events")  # the core works as well as the service
    await state.mark_consumed("p", "run_1", source.plan(await state.consumed("p")))
    await lake.delete("events", "id = 2")
    after_delete = source.plan(await state.consumed("p"))
    assert ids(source, after_delete) == []
    await state.mark_consumed("p", "run_2", after_delete)
    await lake.append("events", events([9]))
    assert ids(source, source.plan(await state.consumed("p"))) == [9]


async def test_a_pinned_snapshot_is_read_once(lake: LakeService, state: SqlIngestState) -> None:
    await lake.create_table("events", data=events([1, 2]))
    pinned_id = (await lake.describe("events"))["current_snapshot_id"]
    await lake.append("events", events([3]))
    source = LakeSource(lake, "events", snapshot_id=pinned_id, name="pinned")
    plan = source.plan(await state.consumed("p"))
    assert plan.position is None and plan.refs[0].fingerprint == str(pinned_id)
    assert ids(source, plan) == [1, 2]
    await state.mark_consumed("p", "run_1", plan)
    again = source.plan(await state.consumed("p"))
    assert again.empty and again.skipped == 1
    history = await lake.history("events")
    as_of = LakeSource(lake, "events", as_of=history[-1]["timestamp"], name="at")
    assert ids(as_of, as_of.plan(await state.consumed("p"))) == [1, 2, 3]


def test_row_refs_name_the_data_file_and_row(lake: LakeService) -> None:
    lake.core.create_table("events", data=events([1, 2, 3]))
    source = LakeSource(lake, "events", columns=["id"])
    plan = source.plan(StateView.empty("p"))
    [batch] = list(source.read(plan))
    assert batch.table.column_names == ["id"]
    [data_file] = plan.parts
    assert batch.refs.to_pylist() == [f"{data_file}:1", f"{data_file}:2", f"{data_file}:3"]


def test_splits_are_by_data_file(lake: LakeService) -> None:
    lake.core.create_table("events", data=events([1]))
    for n in range(2, 6):
        lake.core.append("events", events([n]))
    source = LakeSource(lake, "events")
    plan = source.plan(StateView.empty("p"))
    parts = source.splits(plan, 2)
    assert len(parts) == 2 and not set(parts[0].parts) & set(parts[1].parts)
    assert all(p.position == plan.position for p in parts)
    assert sorted(i for p in parts for i in ids(source, p)) == [1, 2, 3, 4, 5]
    with pytest.raises(InvalidInputError, match="splits"):
        source.splits(plan, 0)


def test_an_empty_table_has_nothing_to_read(lake: LakeService) -> None:
    lake.core.create_table("empty", schema=events([]).schema)
    plan = LakeSource(lake, "empty").plan(StateView.empty("p"))
    assert plan.empty and plan.position is None


async def test_a_rollback_past_the_consumed_snapshot_is_refused(
    lake: LakeService, state: SqlIngestState
) -> None:
    await lake.create_table("events", data=events([1]))
    first_id = (await lake.describe("events"))["current_snapshot_id"]
    await lake.append("events", events([2]))
    source = LakeSource(lake, "events")
    await state.mark_consumed("p", "run_1", source.plan(await state.consumed("p")))
    await lake.rollback("events", first_id)
    with pytest.raises(LakePositionError, match="reset the pipeline's position"):
        source.plan(await state.consumed("p"))


def test_a_snapshot_and_a_time_together_are_refused(lake: LakeService) -> None:
    with pytest.raises(InvalidInputError, match="not both"):
        LakeSource(lake, "events", snapshot_id=1, as_of="2026-01-01T00:00:00Z")
