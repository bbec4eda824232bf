"""The files source: globs, every format (and gzip), incremental plans, malformed files."""

from __future__ import annotations

import gzip
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from actors.ingest.sources import FileSource, InputChangedError, Source, SourcePlan, StateView
from actors.ingest.state import SqlIngestState
from actors.lake.sql_errors import MalformedFileError
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import upgrade
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings
from tests.clock import FakeClock

ROWS = pa.table({"id": [1, 2, 3], "name": ["a", "b", "c"]})
CSV = b"id,name\n1,a\n2,b\n3,c\n"
JSONL = b'{"id": 1, "name": "a"}\n{"id": 2, "name": "b"}\n{"id": 3, "name": "c"}\n'


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def parquet_bytes(table: pa.Table = ROWS) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def ipc_bytes(table: pa.Table = ROWS, *, file_format: bool = False) -> bytes:
    sink = pa.BufferOutputStream()
    opener = pa_ipc.new_file if file_format else pa_ipc.new_stream
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def read_all(source: FileSource, plan: SourcePlan) -> tuple[pa.Table, list[str]]:
    batches = list(source.read(plan))
    refs = [ref for batch in batches for ref in batch.refs.to_pylist()]
    tables = [batch.table for batch in batches]
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    return table, refs


@pytest.fixture
async def state(data_dir: Path) -> AsyncIterator[SqlIngestState]:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    engine = create_engine(settings)
    yield SqlIngestState(session_factory(engine), FakeClock().now)
    await engine.dispose()


# ---- formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("a.csv", CSV),
        ("a.csv.gz", gzip.compress(CSV)),
        ("a.jsonl", JSONL),
        ("a.ndjson.gz", gzip.compress(JSONL)),
        ("a.parquet", parquet_bytes()),
        ("a.parquet.gz", gzip.compress(parquet_bytes())),
        ("a.arrow", ipc_bytes(file_format=True)),
        ("a.arrows", ipc_bytes()),
        ("a.arrow.gz", gzip.compress(ipc_bytes())),
    ],
)
def test_each_format_is_read_with_row_refs(tmp_path: Path, name: str, data: bytes) -> None:
    path = write(tmp_path / name, data)
    source = FileSource(str(tmp_path / "*"))
    plan = source.plan(StateView.empty("p"))
    assert [ref.id for ref in plan.refs] == [str(path)]
    table, refs = read_all(source, plan)
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["a", "b", "c"]
    assert refs == [f"{path}:1", f"{path}:2", f"{path}:3"]


def test_rows_are_numbered_from_one_after_the_header_across_batches(tmp_path: Path) -> None:
    rows = "".join(f"{i},x{i}\n" for i in range(1, 8))
    path = write(tmp_path / "in" / "big.csv", ("id,name\n" + rows).encode())
    source = FileSource("in/*.csv", root=tmp_path, batch_rows=3)
    batches = list(source.read(source.plan(StateView.empty("p"))))
    assert [b.table.num_rows for b in batches] == [3, 3, 1]
    assert batches[1].refs.to_pylist() == [f"{path}:4", f"{path}:5", f"{path}:6"]
    assert batches[2].table.column("id").to_pylist() == [7]


def test_globs_recurse_and_dedupe_and_sort(tmp_path: Path) -> None:
    b = write(tmp_path / "x" / "b.csv", CSV)
    a = write(tmp_path / "x" / "deep" / "a.csv", CSV)
    write(tmp_path / "x" / "notes.txt", b"not data")
    source = FileSource([f"{tmp_path}/x/**/*.csv", f"{tmp_path}/x/b.csv"])
    plan = source.plan(StateView.empty("p"))
    assert [ref.id for ref in plan.refs] == sorted([str(a), str(b)])
    assert all(ref.size == len(CSV) and ref.mtime_ns for ref in plan.refs)
    assert isinstance(source, Source)


def test_a_missing_literal_path_is_not_found_but_an_empty_glob_is_empty(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.csv"):
        FileSource(str(tmp_path / "nope.csv")).plan(StateView.empty("p"))
    assert FileSource(str(tmp_path / "*.csv")).plan(StateView.empty("p")).empty


def test_an_unknown_extension_fails_the_plan_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "data.xlsx", b"...")
    with pytest.raises(InvalidInputError, match=r"data\.xlsx"):
        FileSource(str(tmp_path / "*")).plan(StateView.empty("p"))
    plan = FileSource(str(tmp_path / "*"), format="csv").plan(StateView.empty("p"))
    assert len(plan.refs) == 1  # a format given explicitly reads any name


def test_an_empty_file_has_no_rows(tmp_path: Path) -> None:
    write(tmp_path / "empty.csv", b"")
    source = FileSource(str(tmp_path / "*.csv"))
    plan = source.plan(StateView.empty("p"))
    assert len(plan.refs) == 1 and list(source.read(plan)) == []


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="paths"):
        FileSource([])
    with pytest.raises(InvalidInputError, match="fingerprint"):
        FileSource("*.csv", fingerprint="md5")  # type: ignore[arg-type]


# ---- incremental -----------------------------------------------------------------


async def test_a_second_plan_sees_only_new_files(tmp_path: Path, state: SqlIngestState) -> None:
    write(tmp_path / "1.csv", CSV)
    source = FileSource(str(tmp_path / "*.csv"))
    first = source.plan(await state.consumed("p"))
    assert len(first.refs) == 1
    await state.mark_consumed("p", "run_1", first)
    assert source.plan(await state.consumed("p")).empty
    new = write(tmp_path / "2.csv", CSV)
    second = source.plan(await state.consumed("p"))
    assert [ref.id for ref in second.refs] == [str(new)] and second.skipped == 1


async def test_a_changed_file_is_seen_again(tmp_path: Path, state: SqlIngestState) -> None:
    path = write(tmp_path / "1.csv", CSV)
    source = FileSource(str(tmp_path / "*.csv"))
    await state.mark_consumed("p", "run_1", source.plan(await state.consumed("p")))
    write(path, CSV + b"4,d\n")  # size changes
    grown = source.plan(await state.consumed("p"))
    assert len(grown.refs) == 1
    await state.mark_consumed("p", "run_2", grown)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # mtime only
    assert len(source.plan(await state.consumed("p")).refs) == 1


async def test_a_content_fingerprint_ignores_a_touch(tmp_path: Path, state: SqlIngestState) -> None:
    path = write(tmp_path / "1.csv", CSV)
    source = FileSource(str(tmp_path / "*.csv"), fingerprint="sha256")
    plan = source.plan(await state.consumed("p"))
    assert plan.refs[0].fingerprint.startswith("sha256:")
    await state.mark_consumed("p", "run_1", plan)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert source.plan(await state.consumed("p")).empty
    write(path, CSV.replace(b"1,a", b"1,z"))
    assert len(source.plan(await state.consumed("p")).refs) == 1


def test_files_younger_than_min_age_wait_for_a_later_run(tmp_path: Path) -> None:
    path = write(tmp_path / "1.csv", CSV)
    mtime = path.stat().st_mtime
    source = FileSource(str(tmp_path / "*.csv"), min_age_s=60, now=lambda: mtime + 30)
    assert source.plan(StateView.empty("p")).empty
    later = FileSource(str(tmp_path / "*.csv"), min_age_s=60, now=lambda: mtime + 61)
    assert len(later.plan(StateView.empty("p")).refs) == 1


def test_a_file_changed_after_planning_fails_the_read(tmp_path: Path) -> None:
    path = write(tmp_path / "1.csv", CSV)
    source = FileSource(str(tmp_path / "*.csv"))
    plan = source.plan(StateView.empty("p"))
    write(path, CSV + b"4,d\n")
    with pytest.raises(InputChangedError, match="changed while the run read it") as caught:
        list(source.read(plan))
    assert caught.value.fields["path"] == str(path)
    path.unlink()
    with pytest.raises(InputChangedError, match="no file"):
        list(source.read(plan))


# ---- malformed CSV ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "data", "problem"),
    [
        ("unbalanced quote", b'id,name\n1,"a\n2,b\n', "row 1, column 'name'.*unbalanced"),
        ("stray quote", b'id,name\n1,"a"x,\n2,b\n', "Expected 2 columns, got 3"),
        ("wrong column count", b"id,name\n1,a\n2,b,extra\n", "Expected 2 columns"),
        ("bad encoding", b"id,name\n1,caf\xe9\n", "not valid utf8"),
    ],
)
def test_a_malformed_csv_raises_naming_the_file(
    tmp_path: Path, case: str, data: bytes, problem: str
) -> None:
    path = write(tmp_path / "bad.csv", data)
    source = FileSource(str(tmp_path / "*.csv"))
    with pytest.raises(MalformedFileError, match=problem) as caught:
        list(source.read(source.plan(StateView.empty("p"))))
    assert caught.value.fields["path"] == str(path)
    assert str(path) in caught.value.message


def test_malformed_json_lines_and_parquet_raise_naming_the_file(tmp_path: Path) -> None:
    write(tmp_path / "bad.jsonl", b'{"id": 1}\n{"id": \n')
    write(tmp_path / "bad.parquet", parquet_bytes()[:40])
    source = FileSource(str(tmp_path / "bad.*"))
    for one in source.splits(source.plan(StateView.empty("p")), 2):
        with pytest.raises(MalformedFileError) as caught:
            list(source.read(one))
        assert caught.value.fields["path"] == one.refs[0].id


def test_a_malformed_file_does_not_hide_the_good_ones(tmp_path: Path) -> None:
    """Read split by file, the runner can quarantine the bad file and keep the rest."""
    write(tmp_path / "a.csv", CSV)
    write(tmp_path / "b.csv", b"id,name\n1,a,b\n")
    source = FileSource(str(tmp_path / "*.csv"))
    plan = source.plan(StateView.empty("p"))
    outcomes = {}
    for one in source.splits(plan, len(plan.refs)):
        try:
            outcomes[Path(one.refs[0].id).name] = sum(b.table.num_rows for b in source.read(one))
        except MalformedFileError as error:
            outcomes[Path(error.fields["path"]).name] = "quarantined"
    assert outcomes == {"a.csv": 3, "b.csv": "quarantined"}


# ---- splits ----------------------------------------------------------------------


def test_splits_are_by_file_balanced_by_size(tmp_path: Path) -> None:
    write(tmp_path / "big.csv", CSV * 20)
    write(tmp_path / "s1.csv", CSV)
    write(tmp_path / "s2.csv", CSV)
    source = FileSource(str(tmp_path / "*.csv"))
    plan = source.plan(StateView.empty("p"))
    parts = source.splits(plan, 2)
    assert sorted(len(p.refs) for p in parts) == [1, 2]
    assert sorted(r.id for p in parts for r in p.refs) == sorted(r.id for r in plan.refs)
    assert len(source.splits(plan, 10)) == 3
    assert source.splits(SourcePlan(source="files", kind="files"), 4) == [
        SourcePlan(source="files", kind="files")
    ]
    with pytest.raises(InvalidInputError, match="splits"):
        source.splits(plan, 0)


def test_an_unbalanced_quote_in_a_large_csv_fails_too(tmp_path: Path) -> None:
    rows = "".join(f"{i},x{i}\n" for i in range(2, 200_000))
    write(tmp_path / "big.csv", ('id,name\n1,"a\n' + rows).encode())
    source = FileSource(str(tmp_path / "*.csv"))
    with pytest.raises(MalformedFileError, match=r"big\.csv") as caught:
        list(source.read(source.plan(StateView.empty("p"))))
    assert caught.value.fields["fmt"] == "csv"
