"""Reading a table: scans with pushed-down projection and filters, time travel, history."""

from __future__ import annotations

from datetime import datetime

import pyarrow as pa
from pyiceberg.schema import Schema
from pyiceberg.table import Table

from actors.lake.describe import SnapshotInfo, from_ms, snapshot_info
from actors.lake.errors import SnapshotNotFoundError, invalid
from actors.lake.filters import check_columns, parse_filter
from actors.lake.sql_errors import ResultTooLargeError


def scan(
    table: Table,
    name: str,
    *,
    columns: list[str] | None = None,
    filter: str | None = None,
    snapshot_id: int | None = None,
    as_of: datetime | None = None,
    limit: int | None = None,
    max_bytes: int,
) -> pa.Table:
    """Rows of ``table`` (at a snapshot or time), projected and filtered inside pyiceberg.

    Partition and file statistics prune files before any is opened; the result stops
    growing at ``max_bytes`` with ``ResultTooLargeError`` rather than exhausting memory.
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise invalid("limit", limit, "a whole number of rows, 0 or more")
    # Time travel reads with the schema of its snapshot; a current read with the current
    # schema, which may be newer than the current snapshot (a rename, an added column).
    travel = snapshot_id is not None or as_of is not None
    resolved = resolve_snapshot(table, name, snapshot_id=snapshot_id, as_of=as_of)
    schema = schema_at(table, resolved) if travel else table.schema()
    check_columns(columns, schema, name, role="columns")
    expression = parse_filter(filter, schema, name)
    reader = table.scan(
        row_filter=expression,
        selected_fields=tuple(columns) if columns else ("*",),
        snapshot_id=resolved if travel else None,
        limit=limit,
    ).to_arrow_batch_reader()
    return _collect(reader, name, max_bytes)


def resolve_snapshot(
    table: Table, name: str, *, snapshot_id: int | None = None, as_of: datetime | None = None
) -> int | None:
    """The snapshot a read sees: the given id, the one current at ``as_of``, or the current.

    ``None`` means the table has no snapshot yet (it is empty). Cheap: metadata only.
    """
    if snapshot_id is not None and as_of is not None:
        raise invalid("as_of", as_of, "give a snapshot id or a time, not both")
    if snapshot_id is not None:
        if table.snapshot_by_id(snapshot_id) is None:
            raise SnapshotNotFoundError(
                table=name, snapshot=str(snapshot_id), fix=_history_fix(table, name)
            )
        return snapshot_id
    if as_of is not None:
        return _as_of(table, name, as_of)
    return table.metadata.current_snapshot_id


def history(table: Table) -> list[SnapshotInfo]:
    """The snapshot log, oldest first: each time the current snapshot changed.

    A rollback appears as a new entry naming the older snapshot; an expired snapshot's
    entries are left out (its metadata is gone).
    """
    entries = []
    for entry in table.history():
        snapshot = table.snapshot_by_id(entry.snapshot_id)
        if snapshot is None:
            continue
        info = snapshot_info(snapshot)
        entries.append(
            SnapshotInfo(
                snapshot_id=info.snapshot_id,
                parent_id=info.parent_id,
                timestamp=from_ms(entry.timestamp_ms),
                operation=info.operation,
                summary=info.summary,
            )
        )
    return entries


def schema_at(table: Table, snapshot_id: int | None) -> Schema:
    """The schema a scan of ``snapshot_id`` reads with (the one the snapshot was written in)."""
    snapshot = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
    if snapshot is not None and snapshot.schema_id is not None:
        schema = table.schemas().get(snapshot.schema_id)
        if schema is not None:
            return schema
    return table.schema()


def _collect(reader: pa.RecordBatchReader, name: str, max_bytes: int) -> pa.Table:
    batches, size = [], 0
    for batch in reader:
        size += batch.nbytes
        if size > max_bytes:
            raise ResultTooLargeError(
                limit_name="bytes (lake.max_result_bytes)",
                limit=max_bytes,
                fix=f"scan fewer columns or rows of {name!r}: pass columns, a filter or a limit",
            )
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=reader.schema)


def _as_of(table: Table, name: str, as_of: datetime) -> int:
    if as_of.tzinfo is None or as_of.utcoffset() is None:
        raise invalid(
            "as_of",
            as_of.isoformat(),
            "give a time zone (e.g. 2026-01-02T03:04:05+00:00); a naive time is ambiguous",
        )
    timestamp_ms = int(as_of.timestamp() * 1000)
    snapshot = table.snapshot_as_of_timestamp(timestamp_ms)
    if snapshot is None:
        raise SnapshotNotFoundError(
            table=name, snapshot=f"as of {as_of.isoformat()}", fix=_history_fix(table, name)
        )
    return snapshot.snapshot_id


def _history_fix(table: Table, name: str) -> str:
    log = table.history()
    if not log:
        return f"table {name!r} has no snapshots yet; append data first"
    earliest = from_ms(log[0].timestamp_ms).isoformat()
    return (
        f"the earliest available time is {earliest}; see the snapshots with "
        f"`datapunk lake history {name}`"
    )
