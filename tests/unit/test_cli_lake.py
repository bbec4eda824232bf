"""`datapunk lake` through Typer's test runner, in-process on a data dir of its own (no Ray)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.main import get_command
from typer.testing import CliRunner

import actors.lake
from cluster.cli import app
from cluster.cli_lake import lake_app

TABLE = "default.orders"
CREATE = (
    "lake",
    "create",
    "orders",
    "--column",
    "id:long:required",
    "--column",
    "region:string",
    "--column",
    "amount:double",
    "--column",
    "ts:timestamp",
    "--partition-by",
    "day(ts)",
    "--sort-by",
    "id",
)
CSV_ROWS = [
    (1, "eu", 10.5, "2026-01-01T10:00:00"),
    (2, "us", 20.0, "2026-01-02T11:00:00"),
    (3, "eu", 5.0, "2026-01-02T12:00:00"),
]
JSON_ROWS = [
    {"id": 4, "region": "us", "amount": 1.25, "ts": "2026-01-03T09:00:00"},
    {"id": 5, "region": "apac", "amount": 2.0, "ts": "2026-01-03T10:00:00"},
]


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def ok(runner: CliRunner, *args: str) -> Any:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    return result


def one_error_line(result: Any) -> str:
    """Exit 2, nothing on stdout, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    line: str = lines[0]
    return line


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "region", "amount", "ts"])
        writer.writerows(rows)
    return path


def write_jsonl_gz(path: Path, rows: list[dict[str, Any]]) -> Path:
    with gzip.open(path, "wt") as out:
        out.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def scan_json(runner: CliRunner, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(ok(runner, "lake", "scan", *args, "-f", "json").stdout)
    return rows


def history(runner: CliRunner, name: str = "orders") -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads(ok(runner, "lake", "history", name, "--json").stdout)
    return entries


@pytest.fixture
def loaded(runner: CliRunner, tmp_path: Path) -> CliRunner:
    """`orders` created from column specs, then a CSV and a gzipped JSON Lines appended."""
    ok(runner, *CREATE)
    ok(runner, "lake", "append", "orders", str(write_csv(tmp_path / "a.csv", CSV_ROWS)))
    ok(runner, "lake", "append", "orders", str(write_jsonl_gz(tmp_path / "b.jsonl.gz", JSON_ROWS)))
    return runner


# --- create, append, describe ------------------------------------------------------------


def test_create_with_columns_partitions_and_sort_order(runner: CliRunner) -> None:
    created = ok(runner, *CREATE)
    assert "created default.orders (4 columns)" in created.stdout
    assert ok(runner, "lake", "ls").stdout.split() == [TABLE]
    assert json.loads(ok(runner, "lake", "ls", "default", "--json").stdout) == [TABLE]
    described = ok(runner, "lake", "describe", TABLE).stdout
    for text in ("id", "long", "yes", "region", "string", "timestamp", "ts_day", "day"):
        assert text in described
    assert "identity" in described and "asc" in described  # the sort order
    assert "no snapshots yet" in described


def test_append_csv_and_gzipped_json_lines(loaded: CliRunner, tmp_path: Path) -> None:
    rows = scan_json(loaded, "orders")
    assert sorted(r["id"] for r in rows) == [1, 2, 3, 4, 5]
    by_id = {r["id"]: r for r in rows}
    assert by_id[1] == {"id": 1, "region": "eu", "amount": 10.5, "ts": "2026-01-01T10:00:00"}
    assert by_id[5]["region"] == "apac"
    entries = history(loaded)
    assert [e["summary"]["added-records"] for e in entries] == ["3", "2"]
    described = ok(loaded, "lake", "describe", "orders").stdout
    for entry in entries:
        assert str(entry["snapshot_id"]) in described  # ids are never cut short
    assert "region" in described and "amount" in described


def test_append_prints_rows_and_the_new_snapshot(runner: CliRunner, tmp_path: Path) -> None:
    ok(runner, *CREATE)
    result = ok(runner, "lake", "append", "orders", str(write_csv(tmp_path / "a.csv", CSV_ROWS)))
    [entry] = history(runner)
    assert f"appended 3 rows to default.orders; snapshot {entry['snapshot_id']}" in result.stdout
    assert "Traceback" not in result.output


def test_append_parquet_adds_a_column_unless_no_evolve(runner: CliRunner, tmp_path: Path) -> None:
    ok(runner, *CREATE)
    extra = pa.table({"id": [9], "region": ["eu"], "channel": ["web"]})
    pq.write_table(extra, tmp_path / "extra.parquet")
    refused = invoke(
        runner, "lake", "append", "orders", str(tmp_path / "extra.parquet"), "--no-evolve"
    )
    line = one_error_line(refused)
    assert "'channel'" in line and "nothing was written" in line
    assert history(runner) == []
    ok(runner, "lake", "append", "orders", str(tmp_path / "extra.parquet"))
    assert scan_json(runner, "orders", "--columns", "id,channel") == [{"id": 9, "channel": "web"}]


def test_create_from_a_file_infers_the_schema_and_loads_it(
    runner: CliRunner, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "seed.csv", CSV_ROWS)
    result = ok(
        runner, "lake", "create", "seeded", "--from", str(source), "--partition-by", "region"
    )
    assert "created default.seeded (4 columns) with 3 rows" in result.stdout
    assert len(scan_json(runner, "seeded")) == 3
    again = one_error_line(invoke(runner, "lake", "create", "seeded", "--from", str(source)))
    assert "table 'default.seeded' already exists" in again
    assert "`datapunk lake drop`" in again


def test_create_needs_columns_or_a_file_but_not_both(runner: CliRunner, tmp_path: Path) -> None:
    assert "--column/--from" in one_error_line(invoke(runner, "lake", "create", "t"))
    source = str(write_csv(tmp_path / "seed.csv", CSV_ROWS))
    both = invoke(runner, "lake", "create", "t", "--column", "id:long", "--from", source)
    assert "--column/--from" in one_error_line(both)


# --- reads -------------------------------------------------------------------------------


def test_query_sql_aggregates(loaded: CliRunner) -> None:
    sql = (
        "SELECT region, sum(amount) AS total, count(*) AS n "
        "FROM orders GROUP BY region ORDER BY region"
    )
    rows = json.loads(ok(loaded, "lake", "query", sql, "--format", "json").stdout)
    assert rows == [
        {"region": "apac", "total": 2.0, "n": 1},
        {"region": "eu", "total": 15.5, "n": 2},
        {"region": "us", "total": 21.25, "n": 2},
    ]
    table = ok(loaded, "lake", "query", sql).stdout  # a Rich table by default
    assert "region" in table and "15.5" in table and "3 rows" in table
    quoted = 'SELECT count(*) AS n FROM "default".orders'
    as_csv = ok(loaded, "lake", "query", quoted, "-f", "csv").stdout
    assert as_csv.splitlines() == ['"n"', "5"]


def test_query_errors_are_one_line(loaded: CliRunner) -> None:
    unquoted = one_error_line(invoke(loaded, "lake", "query", "SELECT * FROM default.orders"))
    assert '"default".orders' in unquoted  # the hint for the keyword namespace
    copy = one_error_line(invoke(loaded, "lake", "query", "COPY orders TO '/tmp/x.csv'"))
    assert "COPY statement is not allowed" in copy
    too_many = invoke(loaded, "lake", "query", "SELECT * FROM orders", "--limit", "2")
    assert "over the limit of 2 rows" in one_error_line(too_many)


def test_scan_with_filter_and_columns(loaded: CliRunner) -> None:
    rows = scan_json(loaded, TABLE, "--columns", "id, amount", "--filter", "region = 'eu'")
    assert sorted(rows, key=lambda r: r["id"]) == [
        {"id": 1, "amount": 10.5},
        {"id": 3, "amount": 5.0},
    ]
    as_csv = ok(
        loaded, "lake", "scan", "orders", "--columns", "id", "--filter", "id >= 4", "-f", "csv"
    )
    assert sorted(as_csv.stdout.split()) == ['"id"', "4", "5"]
    limited = scan_json(loaded, "orders", "--limit", "2")
    assert len(limited) == 2
    table = ok(loaded, "lake", "scan", "orders", "--filter", "id = 5").stdout
    assert "apac" in table and "1 row" in table
    bad = one_error_line(invoke(loaded, "lake", "scan", "orders", "--filter", "id >"))
    assert "invalid row filter 'id >'" in bad
    unknown = one_error_line(invoke(loaded, "lake", "scan", "orders", "--columns", "nope"))
    assert "'nope'" in unknown and "available columns" in unknown


def test_history_time_travel_and_rollback(loaded: CliRunner) -> None:
    first, second = history(loaded)
    shown = ok(loaded, "lake", "history", "orders").stdout
    assert str(first["snapshot_id"]) in shown and str(second["snapshot_id"]) in shown
    assert "append" in shown and "* = current" in shown
    at_first = scan_json(loaded, "orders", "--snapshot", str(first["snapshot_id"]))
    assert len(at_first) == 3
    as_of = scan_json(loaded, "orders", "--as-of", first["timestamp"])
    assert len(as_of) == 3

    result = ok(loaded, "lake", "rollback", "orders", str(first["snapshot_id"]))
    assert f"default.orders is at snapshot {first['snapshot_id']}" in result.stdout
    assert len(scan_json(loaded, "orders")) == 3
    assert [e["snapshot_id"] for e in history(loaded)][-1] == first["snapshot_id"]
    ok(loaded, "lake", "rollback", "orders", str(second["snapshot_id"]))  # and forward again
    assert len(scan_json(loaded, "orders")) == 5

    missing = one_error_line(invoke(loaded, "lake", "rollback", "orders", "12345"))
    assert "'12345'" in missing and "`datapunk lake history default.orders`" in missing
    bad_time = one_error_line(invoke(loaded, "lake", "scan", "orders", "--as-of", "yesterday"))
    assert "invalid as_of='yesterday'" in bad_time


def test_compact_merges_small_files_and_expires_snapshots(
    loaded: CliRunner, tmp_path: Path
) -> None:
    more = [{"id": 6, "region": "eu", "amount": 3.0, "ts": "2026-01-03T11:00:00"}]
    ok(loaded, "lake", "append", "orders", str(write_jsonl_gz(tmp_path / "c.jsonl.gz", more)))
    result = ok(
        loaded, "lake", "compact", "orders", "--expire-older-than-hours", "0", "--remove-orphans"
    )
    for text in ("maintenance of orders", "rows rewritten", "expired snapshots", "orphan files"):
        assert text in result.stdout
    # One file per day; 2026-01-03 got two appends, so two of its files become one.
    assert re.search(r"data files\s+4 -> 3", result.stdout), result.stdout
    assert len(scan_json(loaded, "orders")) == 6
    [entry] = history(loaded)  # the older snapshots expired
    assert entry["operation"] == "overwrite"  # the compaction's replace commit
    again = ok(loaded, "lake", "compact", "orders").stdout
    assert "none (nothing to do)" in again


def test_drop_asks_unless_yes(loaded: CliRunner) -> None:
    declined = loaded.invoke(app, ["lake", "drop", "orders"], input="n\n")
    assert declined.exit_code == 1
    assert ok(loaded, "lake", "ls").stdout.split() == [TABLE]
    assert "dropped default.orders" not in declined.stdout
    ok(loaded, "lake", "drop", "orders", "--yes")
    assert ok(loaded, "lake", "ls").stdout == ""


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("describe", "nope"),
        ("scan", "nope"),
        ("history", "nope"),
        ("rollback", "nope", "1"),
        ("compact", "nope"),
        ("drop", "nope", "--yes"),
        ("append", "nope", "data.csv"),
    ],
)
def test_unknown_table_is_one_line_naming_it(
    runner: CliRunner, tmp_path: Path, args: tuple[str, ...]
) -> None:
    write_csv(tmp_path / "data.csv", CSV_ROWS)
    line = one_error_line(invoke(runner, "lake", *args))
    assert "table 'default.nope' does not exist" in line
    assert "`datapunk lake ls`" in line


def test_malformed_csv_names_the_file(loaded: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "broken.csv"
    bad.write_text("id,region,amount,ts\n7,eu,1.0,2026-01-01T00:00:00\n8,eu,2.0\n")
    line = one_error_line(invoke(loaded, "lake", "append", "orders", str(bad)))
    assert f"cannot read {str(bad)!r} as csv" in line
    assert "Expected 4 columns, got 3" in line
    assert len(history(loaded)) == 2  # nothing committed


def test_file_problems_are_one_line(loaded: CliRunner, tmp_path: Path) -> None:
    missing = one_error_line(invoke(loaded, "lake", "append", "orders", "no-such.csv"))
    assert "file 'no-such.csv' does not exist" in missing
    (tmp_path / "data.xlsx").write_bytes(b"PK")
    unknown = one_error_line(invoke(loaded, "lake", "append", "orders", "data.xlsx"))
    assert "data.xlsx" in unknown and ".parquet" in unknown
    (tmp_path / "empty.csv").write_text("id,region,amount,ts\n")
    empty = one_error_line(invoke(loaded, "lake", "append", "orders", "empty.csv"))
    assert "empty.csv" in empty and "a file with rows" in empty


def test_a_value_of_the_wrong_type_is_refused_and_nothing_written(
    loaded: CliRunner, tmp_path: Path
) -> None:
    bad = write_csv(tmp_path / "typed.csv", [("seven", "eu", 1.0, "2026-01-01T00:00:00")])
    line = one_error_line(invoke(loaded, "lake", "append", "orders", str(bad)))
    assert "column 'id'" in line and "long" in line and "string" in line
    assert len(scan_json(loaded, "orders")) == 5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("x:nosuchtype", "invalid --column x type='nosuchtype'"),
        ("justaname", "invalid --column='justaname'"),
        ("x:long:sometimes", "invalid --column='x:long:sometimes'"),
    ],
)
def test_bad_column_spec_is_one_line(runner: CliRunner, spec: str, expected: str) -> None:
    line = one_error_line(invoke(runner, "lake", "create", "t", "--column", spec))
    assert line.startswith(f"error: {expected}")
    assert ok(runner, "lake", "ls").stdout == ""


def test_bad_partition_and_table_names_are_one_line(runner: CliRunner) -> None:
    partition = invoke(
        runner, "lake", "create", "t", "--column", "id:long", "--partition-by", "day(id)"
    )
    assert "day cannot apply to id (long)" in one_error_line(partition)
    name = one_error_line(invoke(runner, "lake", "create", "a.b.c", "--column", "id:long"))
    assert "invalid table name='a.b.c'" in name


def test_commands_named_in_lake_error_messages_exist() -> None:
    """Fixes in error messages say `datapunk lake X [Y]`; each must be a real command."""
    package = Path(actors.lake.__file__).parent
    named = {
        match
        for source in package.glob("*.py")
        for match in re.findall(r"`datapunk lake (\w+)(?: (\w+))?", source.read_text())
    }
    assert {first for first, _ in named} >= {"ls", "drop", "history", "namespace"}
    group: Any = get_command(lake_app)
    commands = group.commands
    for first, second in named:
        assert first in commands, first
        if isinstance(commands[first], click.Group):
            assert second in commands[first].commands, (first, second)


def test_namespaces_are_created_and_listed(runner: CliRunner) -> None:
    create = ("lake", "create", "sales.orders", "--column", "id:long")
    missing = one_error_line(invoke(runner, *create))
    assert "namespace 'sales' does not exist" in missing
    assert "`datapunk lake namespace create sales`" in missing
    assert "is ready" in ok(runner, "lake", "namespace", "create", "sales").stdout
    again = one_error_line(invoke(runner, "lake", "namespace", "create", "sales"))
    assert "namespace 'sales' already exists" in again
    ok(runner, "lake", "namespace", "create", "sales", "--exist-ok")
    ok(runner, *create)
    assert ok(runner, "lake", "namespace", "ls").stdout.split() == ["sales"]
    assert ok(runner, "lake", "ls", "sales").stdout.split() == ["sales.orders"]
    unknown = one_error_line(invoke(runner, "lake", "ls", "nowhere"))
    assert "namespace 'nowhere' does not exist" in unknown


def test_progress_output_stays_off_stdout(runner: CliRunner, tmp_path: Path) -> None:
    ok(runner, *CREATE)
    rows = [(i, "eu", float(i), "2026-01-01T00:00:00") for i in range(1, 2001)]
    result = ok(runner, "lake", "append", "orders", str(write_csv(tmp_path / "big.csv", rows)))
    assert result.stdout.splitlines()[-1].startswith("appended 2,000 rows to default.orders")
    sink = io.StringIO(result.stdout)
    assert len(sink.readlines()) == 1
