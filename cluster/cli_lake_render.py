"""What ``datapunk lake`` shows a person: Rich tables and the file reader's progress bar.

Kept apart from ``cluster/cli_lake.py`` so the commands read as what they do; nothing
here talks to the Lake, it only renders what the Lake returned (plain dicts and Arrow).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.types as pat
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from actors.lake.formats import format_from_path, iter_batches_from_file
from cluster.errors import InvalidInputError

NULL = "[dim]null[/]"
_COUNT_CHUNK = 1 << 20


# ---------------------------------------------------------------- reading files


def read_file(path: Path, console: Console) -> pa.Table:
    """Read a CSV/JSON Lines/Parquet/Arrow file (``.gz`` too) whole, with a progress bar.

    The bar advances as batches are consumed, in bytes of the file: the share of its rows
    read so far, when the row count is cheap to know (a Parquet footer, the lines of an
    uncompressed text file). Otherwise it counts rows only. Malformed input raises
    ``MalformedFileError`` naming the file.
    """
    batches = iter_batches_from_file(path)  # checks the path and extension at once
    size = path.stat().st_size
    total_rows = _row_total(path)
    columns: list[ProgressColumn | str] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if total_rows:
        columns += [DownloadColumn(), TimeRemainingColumn()]
    columns += [TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn()]
    collected: list[pa.RecordBatch] = []
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(
            f"reading {escape(path.name)}", total=size if total_rows else None, rows=0
        )
        for rows, batch in _counted(batches):
            collected.append(batch)
            done = size * min(rows, total_rows) // total_rows if total_rows else 0
            progress.update(task, completed=done, rows=rows)
        progress.update(task, completed=size)
    if not collected:
        raise InvalidInputError(field="file", value=str(path), allowed="a file with rows")
    return pa.Table.from_batches(collected)


def _counted(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    rows = 0
    for batch in batches:
        rows += batch.num_rows
        yield rows, batch


def _row_total(path: Path) -> int | None:
    """Rows in ``path`` if knowable without parsing it; ``None`` otherwise (gzip, Arrow)."""
    fmt, gzipped = format_from_path(path)
    if gzipped:
        return None
    if fmt == "parquet":
        try:
            return int(pq.read_metadata(path).num_rows) or None
        except (pa.ArrowException, OSError):
            return None  # the reader itself reports what is wrong with the file
    if fmt in ("csv", "jsonl"):
        lines = _count_lines(path)
        return max(lines - 1, 1) if fmt == "csv" else max(lines, 1)  # csv: a header line
    return None


def _count_lines(path: Path) -> int:
    """Newline-terminated lines plus an unterminated last one (an upper bound of rows)."""
    lines, last = 0, b"\n"
    with path.open("rb") as file:
        while chunk := file.read(_COUNT_CHUNK):
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    return lines + (last != b"\n")


# ---------------------------------------------------------------- rows


def rows_table(table: pa.Table, title: str | None = None) -> Table:
    """An Arrow table as a Rich table; numbers right-aligned, nulls dimmed."""
    out = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD)
    for field in table.schema:
        numeric = pat.is_integer(field.type) or pat.is_floating(field.type)
        out.add_column(escape(field.name), justify="right" if numeric else "left")
    for row in table.to_pylist():
        out.add_row(*(_cell(value) for value in row.values()))
    out.caption = f"{table.num_rows:,} row{'s' if table.num_rows != 1 else ''}"
    return out


def _cell(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, dict | list):
        return escape(json.dumps(value, default=str, ensure_ascii=False))
    if isinstance(value, bytes):
        return escape(value.hex())
    return escape(str(value))


# ---------------------------------------------------------------- tables and snapshots


def description_tables(desc: dict[str, Any]) -> list[Table]:
    """``describe``: overview, columns, partition spec, sort order and snapshots."""
    overview = _key_values(
        desc["name"],
        {
            "location": desc["location"],
            "format version": str(desc["format_version"]),
            "current snapshot": str(desc["current_snapshot_id"] or "none (empty table)"),
            **{f"property {k}": v for k, v in sorted(desc["properties"].items())},
        },
    )
    columns = _table("columns", ["id", "name", "type", "required"])
    for column in desc["schema"]:
        required = "[bold]yes[/]" if column["required"] else "no"
        kind = (
            f"{column['type']} [yellow](encrypted)[/]"
            if column.get("encrypted")
            else column["type"]
        )
        columns.add_row(str(column["field_id"]), escape(column["name"]), kind, required)
    partitions = _table("partition spec", ["field", "transform", "source"])
    for field in desc["partition_spec"]:
        partitions.add_row(escape(field["name"]), field["transform"], escape(field["source"]))
    if not desc["partition_spec"]:
        partitions.caption = "unpartitioned"
    order = _table("sort order", ["source", "transform", "direction", "nulls"])
    for key in desc["sort_order"]:
        order.add_row(escape(key["source"]), key["transform"], key["direction"], key["null_order"])
    if not desc["sort_order"]:
        order.caption = "unsorted"
    snapshots = snapshots_table("snapshots", desc["snapshots"], desc["current_snapshot_id"])
    return [overview, columns, partitions, order, snapshots]


def snapshots_table(title: str, entries: list[dict[str, Any]], current: int | None) -> Table:
    """Snapshots oldest first; the current one marked with ``*``. Ids are never cut short:
    they are what ``rollback`` and ``scan --snapshot`` take."""
    out = _table(title, ["", "snapshot", "time (UTC)", "operation", "added", "deleted", "rows"])
    out.columns[1].no_wrap = True
    out.columns[1].min_width = 19
    for entry in entries:
        summary = entry.get("summary", {})
        out.add_row(
            "[green]*[/]" if entry["snapshot_id"] == current else "",
            str(entry["snapshot_id"]),
            entry["timestamp"][:19].replace("T", " "),
            entry["operation"],
            summary.get("added-records", "0"),
            summary.get("deleted-records", "0"),
            summary.get("total-records", "?"),
        )
    out.caption = "* = current" if entries else "no snapshots yet: append data first"
    return out


def maintenance_table(report: dict[str, Any]) -> Table:
    """``compact``: what each maintenance step did."""
    rows: dict[str, str] = {}
    compaction = report.get("compaction")
    if compaction is not None:
        rows["data files"] = f"{compaction['files_before']} -> {compaction['files_after']}"
        rows["rows rewritten"] = f"{compaction['rows']:,}"
        rows["compaction snapshot"] = str(compaction["snapshot_id"] or "none (nothing to do)")
    if "expired_snapshots" in report:
        rows["expired snapshots"] = str(len(report["expired_snapshots"]))
    if "orphan_files" in report:
        rows["orphan files removed"] = str(len(report["orphan_files"]))
    return _key_values(f"maintenance of {report['table']}", rows)


def _key_values(title: str, rows: dict[str, str]) -> Table:
    out = Table(title=escape(title), show_header=False, box=box.SIMPLE)
    out.add_column(style="bold", no_wrap=True)
    out.add_column(overflow="fold")
    for key, value in rows.items():
        out.add_row(escape(key), escape(value))
    return out


def _table(title: str, headers: list[str]) -> Table:
    out = Table(
        title=escape(title),
        header_style="bold",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for header in headers:
        out.add_column(header)
    return out
