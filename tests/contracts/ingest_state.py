"""The ``IngestState`` contract: one set of tests, run on SQLite (unit) and PostgreSQL.

A backend's test module subclasses ``IngestStateContract`` and provides ``db_settings``:
settings whose platform database is fresh and empty.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from actors.ingest.sources.base import InputRef, SourcePlan, encode_position
from actors.ingest.state import IngestState, ReconcileResult, RunCounts, SqlIngestState
from cluster.db.engine import create_engine, session_factory
from cluster.errors import InvalidInputError, NotFoundError, PlatformStateError
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.contracts.platform_db import PlatformDbContract

PIPELINE = "orders"


def files_plan(*names: str, source: str = "files") -> SourcePlan:
    refs = tuple(
        InputRef(kind="file", id=f"/in/{n}", fingerprint=f"10:{i}", size=10, mtime_ns=i)
        for i, n in enumerate(names)
    )
    return SourcePlan(source=source, kind="files", refs=refs)


def sql_plan(upto: int, after: int | None = None) -> SourcePlan:
    position = encode_position(upto)
    ref = InputRef(
        kind="rows",
        id="table:orders",
        after=None if after is None else encode_position(after),
        upto=position,
    )
    return SourcePlan(source="db", kind="sql", refs=(ref,), position=position)


def messages_plan(*ids: str) -> SourcePlan:
    refs = tuple(InputRef(kind="message", id=i, size=2, body=b"{}") for i in ids)
    return SourcePlan(source="queue", kind="rabbitmq", refs=refs)


class IngestStateContract(PlatformDbContract):
    """What every platform-database backend must do for ingest bookkeeping."""

    @pytest.fixture
    def state(self, engine: AsyncEngine, clock: FakeClock) -> SqlIngestState:
        return SqlIngestState(session_factory(engine), clock.now)

    # ---- schema (that migrations match every model is checked once, in the keystore
    # contract, over the whole Base.metadata) ----------------------------------------

    async def test_an_unmigrated_database_says_to_upgrade(
        self, db_settings: Settings, clock: FakeClock
    ) -> None:
        engine = create_engine(db_settings)
        try:
            state = SqlIngestState(session_factory(engine), clock.now)
            with pytest.raises(PlatformStateError, match="datapunk db upgrade"):
                await state.consumed(PIPELINE)
        finally:
            await engine.dispose()

    async def test_it_is_an_ingest_state(self, state: SqlIngestState) -> None:
        port: IngestState = state
        assert (await port.consumed(PIPELINE)).consumed == frozenset()

    # ---- consumed inputs ------------------------------------------------------------

    async def test_a_new_pipeline_has_consumed_nothing(self, state: SqlIngestState) -> None:
        view = await state.consumed(PIPELINE)
        assert view.pipeline == PIPELINE
        assert view.consumed == frozenset() and dict(view.positions) == {}
        assert view.position("db") is None

    async def test_marked_files_and_positions_are_consumed(self, state: SqlIngestState) -> None:
        run = await state.start_run(PIPELINE, "h1", [files_plan("a.csv", "b.csv"), sql_plan(7)])
        await state.mark_consumed(PIPELINE, run.run_id, [files_plan("a.csv", "b.csv"), sql_plan(7)])
        view = await state.consumed(PIPELINE)
        assert view.has("files", "file", "/in/a.csv", "10:0")
        assert view.has("files", "file", "/in/b.csv", "10:1")
        assert not view.has("files", "file", "/in/a.csv", "11:0")  # another version
        assert view.position("db") == encode_position(7)
        assert not any(kind == "rows" for _, kind, _, _ in view.consumed)  # by position only
        assert (await state.get_run(run.run_id)).consumed_at is not None

    async def test_marking_twice_changes_nothing(self, state: SqlIngestState) -> None:
        plan = files_plan("a.csv")
        await state.mark_consumed(PIPELINE, "run_1", plan)
        before = await state.count_inputs(PIPELINE)
        await state.mark_consumed(PIPELINE, "run_1", plan)
        await state.mark_consumed(PIPELINE, "run_2", [plan, plan])
        assert await state.count_inputs(PIPELINE) == before == 1

    async def test_the_position_moves_to_the_latest_run(self, state: SqlIngestState) -> None:
        await state.mark_consumed(PIPELINE, "run_1", sql_plan(5))
        await state.mark_consumed(PIPELINE, "run_2", sql_plan(9, after=5))
        assert (await state.consumed(PIPELINE)).position("db") == encode_position(9)

    async def test_pipelines_and_sources_are_separate(self, state: SqlIngestState) -> None:
        await state.mark_consumed("one", "run_1", files_plan("a.csv"))
        await state.mark_consumed("one", "run_1", files_plan("a.csv", source="other"))
        assert (await state.consumed("two")).consumed == frozenset()
        only = await state.consumed("one", source="other")
        assert {src for src, *_ in only.consumed} == {"other"}
        assert len((await state.consumed("one")).consumed) == 2

    async def test_message_ids_are_kept_for_the_retention_time(
        self, state: SqlIngestState, clock: FakeClock
    ) -> None:
        await state.mark_consumed(PIPELINE, "run_1", messages_plan("m1", "m2"))
        clock.advance(timedelta(days=6).total_seconds())
        await state.mark_consumed(PIPELINE, "run_2", messages_plan("m3"))
        assert (await state.consumed(PIPELINE)).has("queue", "message", "m1")
        clock.advance(timedelta(days=2).total_seconds())
        await state.mark_consumed(PIPELINE, "run_3", messages_plan("m4"))
        view = await state.consumed(PIPELINE)
        assert not view.has("queue", "message", "m1")
        assert {i for _, kind, i, _ in view.consumed if kind == "message"} == {"m3", "m4"}

    async def test_message_ids_are_kept_up_to_the_retention_count(
        self, engine: AsyncEngine, clock: FakeClock
    ) -> None:
        state = SqlIngestState(session_factory(engine), clock.now, max_message_ids=3)
        for n in range(5):
            clock.advance(1)
            await state.mark_consumed(PIPELINE, f"run_{n}", messages_plan(f"m{n}"))
        view = await state.consumed(PIPELINE)
        assert {i for _, _, i, _ in view.consumed} == {"m2", "m3", "m4"}

    async def test_bad_retention_is_refused(self, engine: AsyncEngine, clock: FakeClock) -> None:
        with pytest.raises(InvalidInputError, match="max_message_ids"):
            SqlIngestState(session_factory(engine), clock.now, max_message_ids=0)

    # ---- run records ----------------------------------------------------------------

    async def test_a_run_starts_running_and_finishes_with_its_record(
        self, state: SqlIngestState, clock: FakeClock
    ) -> None:
        started = await state.start_run(PIPELINE, "cfg", [files_plan("a.csv")], run_id="run_a")
        assert (started.run_id, started.status, started.counts) == ("run_a", "running", None)
        assert started.started_at == clock.now()
        clock.advance(3)
        lineage = {"sources": [files_plan("a.csv").lineage()], "snapshot_id": 42}
        done = await state.finish_run(
            "run_a",
            "succeeded",
            {"read": 10, "written": 8, "quarantined": 1, "filtered": 1},
            2.5,
            snapshot_id=42,
            lineage=lineage,
        )
        assert done.status == "succeeded" and done.finished_at == clock.now()
        assert done.counts == RunCounts(read=10, written=8, quarantined=1, filtered=1)
        assert (done.duration_s, done.snapshot_id, done.error) == (2.5, 42, None)
        assert await state.get_run("run_a") == done
        assert done.lineage["sources"][0]["ids"] == ["/in/a.csv"]

    async def test_a_failed_run_keeps_its_error(self, state: SqlIngestState) -> None:
        await state.start_run(PIPELINE, "cfg", run_id="run_f")
        done = await state.finish_run("run_f", "failed", RunCounts(read=3), 0.1, error="boom")
        assert (done.status, done.error, done.snapshot_id) == ("failed", "boom", None)

    async def test_run_ids_are_generated_unique_and_sortable(
        self, state: SqlIngestState, clock: FakeClock
    ) -> None:
        first = await state.start_run(PIPELINE, "cfg")
        clock.advance(1)
        second = await state.start_run(PIPELINE, "cfg")
        assert first.run_id.startswith("run_20260102T030405_")
        assert first.run_id < second.run_id

    async def test_list_runs_newest_first_per_pipeline(
        self, state: SqlIngestState, clock: FakeClock
    ) -> None:
        for run_id, pipeline in (("r1", "a"), ("r2", "b"), ("r3", "a")):
            await state.start_run(pipeline, "cfg", run_id=run_id)
            clock.advance(1)
        assert [r.run_id for r in await state.list_runs()] == ["r3", "r2", "r1"]
        assert [r.run_id for r in await state.list_runs("a")] == ["r3", "r1"]
        assert [r.run_id for r in await state.list_runs(limit=1)] == ["r3"]

    async def test_wrong_arguments_are_refused(self, state: SqlIngestState) -> None:
        await state.start_run(PIPELINE, "cfg", run_id="dup")
        with pytest.raises(InvalidInputError, match="run_id"):
            await state.start_run(PIPELINE, "cfg", run_id="dup")
        with pytest.raises(InvalidInputError, match="pipeline"):
            await state.start_run(" ", "cfg")
        with pytest.raises(InvalidInputError, match="status"):
            await state.finish_run("dup", "done", RunCounts(), 1.0)  # type: ignore[arg-type]
        with pytest.raises(InvalidInputError, match="counts"):
            await state.finish_run("dup", "failed", {"rows": 1}, 1.0)
        with pytest.raises(InvalidInputError, match="limit"):
            await state.list_runs(limit=0)

    async def test_unknown_runs_are_not_found(self, state: SqlIngestState) -> None:
        with pytest.raises(NotFoundError, match="run_nope"):
            await state.get_run("run_nope")
        with pytest.raises(NotFoundError, match="run_nope"):
            await state.finish_run("run_nope", "failed", RunCounts(), 0.0)

    async def test_timestamps_round_trip_as_aware_utc(self, engine: AsyncEngine) -> None:
        local = timezone(timedelta(hours=2))
        clock = FakeClock(datetime(2026, 6, 1, 12, 30, 15, 123456, tzinfo=local))
        state = SqlIngestState(session_factory(engine), clock.now)
        run = await state.start_run(PIPELINE, "cfg")
        stored = await state.get_run(run.run_id)
        assert stored.started_at == datetime(2026, 6, 1, 10, 30, 15, 123456, tzinfo=UTC)
        assert stored.started_at.utcoffset() == timedelta(0)

    # ---- recovery -------------------------------------------------------------------

    async def test_a_committed_run_with_lost_bookkeeping_is_recovered(
        self, state: SqlIngestState
    ) -> None:
        plans = [files_plan("a.csv"), sql_plan(12), messages_plan("m1")]
        run = await state.start_run(PIPELINE, "cfg", plans)
        # ... the snapshot is committed, then the process dies before mark_consumed.
        assert await state.pending_run_ids(PIPELINE) == [run.run_id]
        result = await state.reconcile(PIPELINE, {run.run_id, "run_of_someone_else"})
        assert result.recovered == (run.run_id,) and result.abandoned == ()
        view = await state.consumed(PIPELINE)
        assert view.has("files", "file", "/in/a.csv", "10:0")
        assert view.has("queue", "message", "m1")
        assert view.position("db") == encode_position(12)
        record = await state.get_run(run.run_id)
        assert record.status == "recovered" and record.consumed_at is not None
        assert await state.pending_run_ids(PIPELINE) == []
        assert (await state.reconcile(PIPELINE, {run.run_id})).recovered == ()

    async def test_an_uncommitted_run_stays_unconsumed(self, state: SqlIngestState) -> None:
        run = await state.start_run(PIPELINE, "cfg", [files_plan("a.csv")])
        assert await state.reconcile(PIPELINE, set()) == ReconcileResult()
        assert await state.pending_run_ids(PIPELINE) == [run.run_id]
        result = await state.reconcile(PIPELINE, [], abandon_uncommitted=True)
        assert result.abandoned == (run.run_id,)
        assert (await state.get_run(run.run_id)).status == "abandoned"
        assert (await state.consumed(PIPELINE)).consumed == frozenset()
        assert await state.pending_run_ids(PIPELINE) == []

    async def test_a_marked_run_is_not_pending(self, state: SqlIngestState) -> None:
        plan = files_plan("a.csv")
        run = await state.start_run(PIPELINE, "cfg", [plan])
        await state.mark_consumed(PIPELINE, run.run_id, plan)
        await state.finish_run(run.run_id, "succeeded", RunCounts(read=1, written=1), 0.2)
        assert await state.pending_run_ids(PIPELINE) == []
        assert (await state.reconcile(PIPELINE, [run.run_id])).recovered == ()
        assert (await state.get_run(run.run_id)).status == "succeeded"

    async def test_a_run_that_failed_after_committing_is_recovered(
        self, state: SqlIngestState
    ) -> None:
        run = await state.start_run(PIPELINE, "cfg", [files_plan("a.csv")])
        await state.finish_run(run.run_id, "failed", RunCounts(read=1), 1.0, error="lost ack")
        result = await state.reconcile(PIPELINE, [run.run_id])
        assert result.recovered == (run.run_id,)
        assert (await state.get_run(run.run_id)).status == "recovered"
