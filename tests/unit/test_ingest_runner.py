"""A pipeline run end to end in one process: files → transforms → expectations → Lake,
with the invariant, idempotent re-runs, quarantine, and a failed commit that changes
nothing and leaves the inputs to the next run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.ingest.runner import RunOutcome
from actors.ingest.state import SqlIngestState
from actors.lake.core import LakeCore
from cluster.settings import Settings, load_settings
from tests.ingest_support import ingest_state, run_pipeline

PIPELINE = """
name: orders
source:
  type: files
  path: {root}/*.csv
  format: csv
transforms:
  - op: derive
    column: total
    expr: quantity * price
  - op: filter
    expr: status <> 'test'
expectations:
  - rule: not_null
    column: order_id
    action: quarantine
  - rule: range
    column: total
    min: 0
    max: 1000
    action: quarantine
sink:
  table: sales.orders
  mode: append
schema_evolution: add_columns
"""


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir)


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[SqlIngestState]:
    async with ingest_state(settings) as store:
        yield store


def write_csv(folder: Path, name: str, rows: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("order_id,quantity,price,status\n" + "\n".join(rows) + "\n")


async def run(settings: Settings, state: SqlIngestState, root: Path, lake: LakeCore) -> RunOutcome:
    return await run_pipeline(PIPELINE.format(root=root), settings, state, lake)


def check_invariant(outcome: RunOutcome) -> None:
    c = outcome.counts
    assert c.read == c.written + c.quarantined + c.filtered


async def test_run_writes_filters_quarantines_and_keeps_the_invariant(
    settings: Settings, state: SqlIngestState, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    write_csv(root, "a.csv", ["1,2,10.0,ok", "2,1,5.0,test", ",1,1.0,ok", "4,500,10.0,ok"])
    lake = LakeCore(settings, 0)
    outcome = await run(settings, state, root, lake)
    check_invariant(outcome)
    assert (outcome.counts.read, outcome.counts.written) == (4, 1)
    assert (outcome.counts.filtered, outcome.counts.quarantined) == (1, 2)
    assert lake.scan("sales.orders")["total"].to_pylist() == [20.0]
    bad = lake.scan("sales.orders__quarantine")
    assert sorted(bad["_dq_source"].to_pylist()) == [f"{root / 'a.csv'}:3", f"{root / 'a.csv'}:4"]
    assert set(bad["_dq_run_id"].to_pylist()) == {outcome.run_id}
    record = await state.get_run(outcome.run_id)
    assert record.status == "succeeded" and record.snapshot_id == outcome.snapshot_id


async def test_rerun_adds_nothing_and_a_new_file_adds_only_its_rows(
    settings: Settings, state: SqlIngestState, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    write_csv(root, "a.csv", ["1,1,1.0,ok", "2,1,2.0,ok"])
    lake = LakeCore(settings, 0)
    first = await run(settings, state, root, lake)
    again = await run(settings, state, root, lake)
    assert again.counts.read == 0 and again.snapshot_id == first.snapshot_id
    write_csv(root, "b.csv", ["3,1,3.0,ok"])
    third = await run(settings, state, root, lake)
    assert third.counts.read == 1
    assert sorted(lake.scan("sales.orders")["order_id"].to_pylist()) == [1, 2, 3]


async def test_a_failed_commit_changes_nothing_and_the_next_run_succeeds(
    settings: Settings, state: SqlIngestState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "in"
    write_csv(root, "a.csv", ["1,1,1.0,ok"])
    lake = LakeCore(settings, 0)
    await run(settings, state, root, lake)
    before = lake.describe("sales.orders").current_snapshot_id
    write_csv(root, "b.csv", ["2,1,2.0,ok"])

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("killed between file write and commit")

    monkeypatch.setattr(lake, "append", crash)
    with pytest.raises(RuntimeError):
        await run(settings, state, root, lake)
    monkeypatch.undo()
    assert lake.describe("sales.orders").current_snapshot_id == before
    failed = [r for r in await state.list_runs("orders") if r.status == "failed"]
    assert len(failed) == 1 and "killed" in (failed[0].error or "")
    retry = await run(settings, state, root, lake)
    assert retry.counts.written == 1
    assert sorted(lake.scan("sales.orders")["order_id"].to_pylist()) == [1, 2]
