"""The exactly-once protocol end to end, with a stand-in for the runner's commit.

plan → start_run → read → commit (run id in the snapshot summary) → mark_consumed → ack.
A crash between the commit and mark_consumed is repaired by reconcile on the next run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest

from actors.ingest.sources import FileSource, Source, SourcePlan
from actors.ingest.state import RUN_ID_SUMMARY_KEY, SqlIngestState, committed_run_ids
from actors.lake.service import LakeService
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.settings import Settings, load_settings
from tests.clock import FakeClock

TABLE = "default.orders"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def state(data_dir: Path, clock: FakeClock) -> AsyncIterator[SqlIngestState]:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    yield SqlIngestState(session_factory(engine), clock.now)
    await engine.dispose()


@pytest.fixture
def lake(tmp_path: Path) -> LakeService:
    return LakeService.from_settings(load_settings(data_dir=tmp_path / "lake"))


def exists(lake: LakeService) -> bool:
    return TABLE in lake.core.list_tables()


def commit(lake: LakeService, rows: pa.Table, run_id: str) -> None:
    """The runner's step 3: one snapshot whose summary names the run (a stand-in)."""
    if not exists(lake):
        lake.core.create_table(TABLE, schema=rows.schema)
    _, table = lake.core.tables.load(TABLE)
    table.append(rows, snapshot_properties={RUN_ID_SUMMARY_KEY: run_id})


async def run_once(
    source: Source, state: SqlIngestState, lake: LakeService, *, crash_after_commit: bool = False
) -> SourcePlan:
    """One run as the runner does it (one source; no splits, quarantine or retries)."""
    history = await lake.history(TABLE) if exists(lake) else []
    await state.reconcile("orders", committed_run_ids(history), abandon_uncommitted=True)
    plan = source.plan(await state.consumed("orders"))
    run = await state.start_run("orders", "cfg", [plan])
    tables = [batch.table for batch in source.read(plan)]
    if tables:
        commit(lake, pa.concat_tables(tables), run.run_id)
    if crash_after_commit:
        return plan
    await state.mark_consumed("orders", run.run_id, plan)
    await state.finish_run(run.run_id, "succeeded", {"read": sum(len(t) for t in tables)}, 0.1)
    source.ack(plan)
    return plan


async def test_a_crash_between_commit_and_bookkeeping_adds_no_duplicates(
    tmp_path: Path, state: SqlIngestState, lake: LakeService, clock: FakeClock
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "1.csv").write_text("id,amount\n1,10\n2,20\n")
    source = FileSource(str(inbox / "*.csv"))
    await run_once(source, state, lake, crash_after_commit=True)
    assert lake.core.scan(TABLE).num_rows == 2

    (inbox / "2.csv").write_text("id,amount\n3,30\n")
    clock.advance(60)
    plan = await run_once(source, state, lake)  # reconciles the crashed run first
    assert [Path(ref.id).name for ref in plan.refs] == ["2.csv"]
    assert sorted(lake.core.scan(TABLE).column("id").to_pylist()) == [1, 2, 3]
    runs = await state.list_runs("orders")
    assert [r.status for r in runs] == ["succeeded", "recovered"]

    assert (await run_once(source, state, lake)).empty  # the same input again adds nothing
    assert lake.core.scan(TABLE).num_rows == 3
