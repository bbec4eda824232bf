"""Ingestion split across the shared Ray cluster: one Ray task per split, ONE commit.

A parallel run writes exactly the rows a sequential run of the same files writes, in
one sink snapshot carrying the run id; a split whose task fails (its file vanished
between plan and read) fails the whole run with the sink unchanged, and the run after
the file is back writes every row exactly once."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import pytest
from ray.exceptions import RayTaskError

from actors.ingest.build import build_source
from actors.ingest.parallel import ray_map_splits
from actors.ingest.run_records import RunCounts
from actors.ingest.runner import PipelineRunner, RunOutcome, SplitResult
from actors.ingest.sources.base import SourcePlan, StateView
from actors.ingest.sources.errors import InputChangedError
from actors.ingest.spec import parse_pipeline
from actors.ingest.state import SqlIngestState
from actors.lake.core import LakeCore
from cluster.settings import Settings, load_settings
from tests.ingest_support import ingest_state, run_ids

pytestmark = pytest.mark.ray

PIPELINE = """
name: {name}
source:
  type: files
  path: {root}/*.csv
transforms:
  - op: filter
    expr: status <> 'test'
expectations:
  - rule: range
    column: qty
    min: 0
    action: quarantine
sink:
  table: {sink}
"""
ROWS_PER_FILE = 40


@pytest.fixture
def settings(ray_cluster: None, data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir)


@pytest.fixture
def lake(settings: Settings) -> LakeCore:
    return LakeCore(settings, 0)


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[SqlIngestState]:
    async with ingest_state(settings) as store:
        yield store


def write_files(root: Path, numbers: Iterable[int]) -> None:
    """Files f<n>.csv, 40 rows each: ids n*1000+i; every 10th row 'test' (filtered),
    every 7th a negative qty (quarantined)."""
    root.mkdir(parents=True, exist_ok=True)
    for n in numbers:
        lines = ["order_id,qty,status"]
        for i in range(ROWS_PER_FILE):
            status = "test" if i % 10 == 0 else "ok"
            qty = -1 if i % 7 == 3 else i
            lines.append(f"{n * 1000 + i},{qty},{status}")
        (root / f"f{n}.csv").write_text("\n".join(lines) + "\n")


def expected_ids(numbers: Iterable[int]) -> list[int]:
    return sorted(
        n * 1000 + i for n in numbers for i in range(ROWS_PER_FILE) if i % 10 != 0 and i % 7 != 3
    )


class Spy:
    """Counts the splits handed to the Ray shell, and runs them there."""

    def __init__(self, text: str, lake: LakeCore, sink: str) -> None:
        self.inner = ray_map_splits(text, {}, lake, sink, {})
        self.calls: list[int] = []

    def __call__(
        self, splits: Sequence[SourcePlan], run_id: str, now: datetime
    ) -> Iterable[SplitResult]:
        self.calls.append(len(splits))
        return self.inner(splits, run_id, now)


async def run(
    settings: Settings,
    state: SqlIngestState,
    lake: LakeCore,
    root: Path,
    *,
    name: str = "par",
    sink: str = "sales.par",
    parallel: bool = True,
    after_plan: Iterable[Path] = (),
) -> tuple[RunOutcome, Spy]:
    """One run; with ``after_plan`` those files vanish once the plan is made."""
    text = PIPELINE.format(name=name, root=root, sink=sink)
    spec = parse_pipeline(text, env={})
    source = build_source(spec, settings, lake)
    plan_files = source.plan

    def plan_then_vanish(view: StateView) -> SourcePlan:
        plan = plan_files(view)
        for path in after_plan:
            os.rename(path, f"{path}.away")  # out of the glob; rename keeps its mtime
        return plan

    source.plan = plan_then_vanish  # type: ignore[method-assign,assignment]
    spy = Spy(text, lake, sink)
    runner = PipelineRunner(
        spec,
        lake=lake,
        state=state,
        source=source,
        map_splits=spy if parallel else None,
        parallelism=3 if parallel else 1,
    )
    outcome = await runner.run()
    record = await state.get_run(outcome.run_id)
    assert record.status == "succeeded" and record.counts == outcome.counts
    c = outcome.counts
    assert c.read == c.written + c.quarantined + c.filtered
    return outcome, spy


def rows(lake: LakeCore, table: str) -> list[dict[str, object]]:
    return lake.scan(table).sort_by("order_id").to_pylist()


async def test_a_parallel_run_equals_a_sequential_one_in_one_snapshot(
    settings: Settings, state: SqlIngestState, lake: LakeCore, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    write_files(root, range(6))
    parallel, spy = await run(settings, state, lake, root)
    assert spy.calls == [3]  # six files in three Ray tasks
    sequential, _ = await run(
        settings, state, lake, root, name="seq", sink="sales.seq", parallel=False
    )

    assert parallel.counts == sequential.counts
    assert parallel.counts == RunCounts(read=240, written=186, quarantined=30, filtered=24)
    assert rows(lake, "sales.par") == rows(lake, "sales.seq")
    assert [r["order_id"] for r in rows(lake, "sales.par")] == expected_ids(range(6))
    quarantined = {
        t: lake.scan(f"sales.{t}__quarantine").sort_by("order_id") for t in ("par", "seq")
    }
    assert set(quarantined["par"]["_dq_run_id"].to_pylist()) == {parallel.run_id}
    assert quarantined["par"].drop_columns(["_dq_run_id"]) == quarantined["seq"].drop_columns(
        ["_dq_run_id"]
    )

    assert run_ids(lake, "sales.par") == [parallel.run_id]  # ONE snapshot, tagged
    assert lake.describe("sales.par").current_snapshot_id == parallel.snapshot_id
    assert (await state.get_run(parallel.run_id)).snapshot_id == parallel.snapshot_id

    again, spy = await run(settings, state, lake, root)
    assert again.counts == RunCounts() and spy.calls == []
    assert run_ids(lake, "sales.par") == [parallel.run_id]


async def test_a_failed_split_fails_the_run_and_changes_nothing(
    settings: Settings, state: SqlIngestState, lake: LakeCore, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    write_files(root, range(3))
    first, _ = await run(settings, state, lake, root)
    before = lake.describe("sales.par").current_snapshot_id
    quarantine_before = lake.describe("sales.par__quarantine").current_snapshot_id

    write_files(root, range(3, 6))
    vanished = root / "f4.csv"
    with pytest.raises(InputChangedError) as caught:
        await run(settings, state, lake, root, after_plan=[vanished])
    assert isinstance(caught.value, RayTaskError)  # raised in the split's Ray task
    assert str(vanished) in caught.value.message and "no file" in caught.value.message

    assert lake.describe("sales.par").current_snapshot_id == before
    assert lake.describe("sales.par__quarantine").current_snapshot_id == quarantine_before
    assert run_ids(lake, "sales.par") == [first.run_id]
    [failed] = [r for r in await state.list_runs("par") if r.status == "failed"]
    assert failed.error == caught.value.message
    assert failed.counts == RunCounts()

    os.rename(f"{vanished}.away", vanished)  # the same file, same size and mtime
    retry, spy = await run(settings, state, lake, root)
    assert spy.calls == [3]
    assert retry.counts == RunCounts(read=120, written=93, quarantined=15, filtered=12)
    assert [r["order_id"] for r in rows(lake, "sales.par")] == expected_ids(range(6))
    assert run_ids(lake, "sales.par") == [first.run_id, retry.run_id]
