"""Malformed CSV through a whole pipeline run: the run fails with a typed error naming
the file, the run record says so, the sink is untouched, and nothing is lost: once the
file is fixed the next run writes every row exactly once. Lenient quoting pyarrow
accepts keeps every row (rows read = rows written)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.ingest.run_records import RunCounts, RunRecord
from actors.ingest.runner import RunOutcome
from actors.ingest.state import SqlIngestState
from actors.lake.core import LakeCore
from actors.lake.sql_errors import MalformedFileError
from cluster.settings import Settings, load_settings
from tests.ingest_support import ingest_state, run_pipeline

SINK = "raw.orders"
PIPELINE = """
name: malformed
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
  table: raw.orders
"""
HEADER = b"order_id,qty,status\n"
GOOD = HEADER + b"1,1,ok\n2,2,test\n3,-1,ok\n"  # 1 written, 1 filtered, 1 quarantined


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir)


@pytest.fixture
async def state(settings: Settings) -> AsyncIterator[SqlIngestState]:
    async with ingest_state(settings) as store:
        yield store


@pytest.fixture
def lake(settings: Settings) -> LakeCore:
    return LakeCore(settings, 0)


async def run(
    settings: Settings, state: SqlIngestState, lake: LakeCore, root: Path, pipeline: str = PIPELINE
) -> RunOutcome:
    return await run_pipeline(pipeline.format(root=root), settings, state, lake)


def balanced(counts: RunCounts | None) -> RunCounts:
    assert counts is not None
    assert counts.read == counts.written + counts.quarantined + counts.filtered
    return counts


async def latest(state: SqlIngestState) -> RunRecord:
    return (await state.list_runs("malformed", limit=1))[0]


MALFORMED = [
    pytest.param(
        HEADER + b"10,1,ok\n11,1,ok,extra\n12,1,ok\n",
        "Expected 3 columns, got 4",
        id="extra-column",
    ),
    pytest.param(
        HEADER + b"10,1,ok\n11,1\n12,1,ok\n", "Expected 3 columns, got 2", id="missing-column"
    ),
    pytest.param(
        HEADER + b'10,1,"ok\n11,1,ok\n12,1,ok\n', "unbalanced quote", id="unbalanced-quote"
    ),
    pytest.param(HEADER + b"10,1,caf\xe9\n11,1,ok\n", "not valid utf8 text", id="invalid-utf8"),
    pytest.param(
        b"order_id,q\xe9y,status\n10,1,ok\n",
        "header row is not valid utf8",
        id="invalid-utf8-header",
    ),
    pytest.param(
        HEADER + b"".join(b"%d,1,ok\n" % i for i in range(10, 150_000)) + b"9,1,caf\xe9\n",
        "invalid UTF8 data",
        id="invalid-utf8-in-a-later-block",
    ),
]


@pytest.mark.parametrize(("data", "problem"), MALFORMED)
async def test_a_malformed_csv_fails_the_run_clearly_and_changes_nothing(
    settings: Settings,
    state: SqlIngestState,
    lake: LakeCore,
    tmp_path: Path,
    data: bytes,
    problem: str,
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.csv").write_bytes(GOOD)
    first = await run(settings, state, lake, root)
    assert balanced(first.counts) == RunCounts(read=3, written=1, quarantined=1, filtered=1)
    before = lake.describe(SINK).current_snapshot_id
    quarantine_before = lake.describe(SINK + "__quarantine").current_snapshot_id

    # A good new file beside the bad one: the run is all or nothing.
    (root / "b.csv").write_bytes(HEADER + b"4,1,ok\n5,1,ok\n")
    bad = root / "c.csv"
    bad.write_bytes(data)
    with pytest.raises(MalformedFileError, match=problem) as caught:
        await run(settings, state, lake, root)
    assert caught.value.fields["path"] == str(bad)
    assert str(bad) in caught.value.message

    record = await latest(state)
    assert record.status == "failed" and record.error == caught.value.message
    assert balanced(record.counts).written == 0
    assert lake.describe(SINK).current_snapshot_id == before
    assert lake.describe(SINK + "__quarantine").current_snapshot_id == quarantine_before
    assert sorted(lake.scan(SINK)["order_id"].to_pylist()) == [1]

    # Fixed, the file (and the good one the failed run did not commit) arrive once.
    bad.write_bytes(HEADER + b"6,1,ok\n7,1,test\n")
    retry = await run(settings, state, lake, root)
    assert balanced(retry.counts) == RunCounts(read=4, written=3, quarantined=0, filtered=1)
    record = await latest(state)
    assert record.status == "succeeded" and balanced(record.counts) == retry.counts
    assert sorted(lake.scan(SINK)["order_id"].to_pylist()) == [1, 4, 5, 6]
    assert (await run(settings, state, lake, root)).counts == RunCounts()


@pytest.mark.parametrize(
    ("data", "names"),
    [
        # pyarrow's parser keeps reading after a closing quote: "a"x is the value ax.
        pytest.param(HEADER + b'1,1,"o"k\n2,1,ok\n', ["ok", "ok"], id="text-after-closing-quote"),
        pytest.param(HEADER + b'1,1,o"k\n2,1,ok\n', ['o"k', "ok"], id="quote-inside-a-value"),
        pytest.param(HEADER + b'1,1,ok\n2,1,"ok', ["ok", "ok"], id="unclosed-quote-at-eof"),
    ],
)
async def test_lenient_quoting_keeps_every_row(
    settings: Settings,
    state: SqlIngestState,
    lake: LakeCore,
    tmp_path: Path,
    data: bytes,
    names: list[str],
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.csv").write_bytes(data)
    outcome = await run(settings, state, lake, root)
    assert balanced(outcome.counts) == RunCounts(read=2, written=2)
    assert lake.scan(SINK)["status"].to_pylist() == names
    assert balanced((await latest(state)).counts) == outcome.counts


HEADERLESS = """
name: malformed
source:
  type: files
  path: {root}/*.csv
  csv:
    header: false
    delimiter: ";"
sink:
  table: raw.orders
"""


async def test_a_headerless_csv_keeps_its_first_row(
    settings: Settings, state: SqlIngestState, lake: LakeCore, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.csv").write_bytes(b"1;1;ok\n2;1;ok\n")
    outcome = await run(settings, state, lake, root, HEADERLESS)
    assert outcome.counts.read == 2
    rows = lake.scan("raw.orders")
    assert rows.column_names == ["f0", "f1", "f2"]
    assert sorted(rows["f0"].to_pylist()) == [1, 2]
