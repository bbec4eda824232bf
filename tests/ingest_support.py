"""What the pipeline-run tests share: a run-state store on the platform DB and one run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

from actors.ingest.build import build_source
from actors.ingest.run_records import RUN_ID_SUMMARY_KEY
from actors.ingest.runner import PipelineRunner, RunOutcome
from actors.ingest.spec import parse_pipeline
from actors.ingest.state import SqlIngestState
from actors.lake.core import LakeCore
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.settings import Settings
from tests.clock import FakeClock


@asynccontextmanager
async def ingest_state(settings: Settings) -> AsyncIterator[SqlIngestState]:
    """A migrated ``SqlIngestState`` whose clock ticks one second per reading, so runs
    list in start order."""
    await upgrade(settings)
    engine = create_engine(settings)
    clock = FakeClock()

    def ticking() -> datetime:
        clock.advance(1)
        return clock.now()

    try:
        yield SqlIngestState(session_factory(engine), ticking)
    finally:
        await engine.dispose()


async def run_pipeline(
    text: str,
    settings: Settings,
    state: SqlIngestState,
    lake: LakeCore,
    env: Mapping[str, str] | None = None,
) -> RunOutcome:
    """One run with a fresh source (as ``jobs.ingest`` does), closed afterwards."""
    spec = parse_pipeline(text, env=dict(env or {}))
    source = build_source(spec, settings, lake)
    try:
        return await PipelineRunner(spec, lake=lake, state=state, source=source).run()
    finally:
        source.close()


def run_ids(lake: LakeCore, table: str) -> list[str]:
    """The ingest run id of each snapshot of ``table``, oldest first."""
    return [s.summary.get(RUN_ID_SUMMARY_KEY, "") for s in lake.history(table)]
