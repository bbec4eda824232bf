"""Plain descriptions of a table and its snapshots (dataclasses; no pyiceberg types leak)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot


@dataclass(frozen=True)
class ColumnInfo:
    """One top-level column of the current schema."""

    name: str
    type: str
    required: bool
    field_id: int
    encrypted: bool = False  # stored sealed; ``type`` is the plaintext's type


@dataclass(frozen=True)
class PartitionFieldInfo:
    """One partition field: ``transform(source)`` stored as ``name``."""

    name: str
    source: str
    transform: str


@dataclass(frozen=True)
class SortFieldInfo:
    """One sort key."""

    source: str
    transform: str
    direction: str
    null_order: str


@dataclass(frozen=True)
class SnapshotInfo:
    """One snapshot: what operation made it, when, and its summary counters."""

    snapshot_id: int
    parent_id: int | None
    timestamp: datetime
    operation: str
    summary: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TableDescription:
    """Everything ``datapunk lake describe`` shows."""

    name: str
    location: str
    format_version: int
    schema: list[ColumnInfo]
    partition_spec: list[PartitionFieldInfo]
    sort_order: list[SortFieldInfo]
    properties: dict[str, str]
    current_snapshot_id: int | None
    snapshots: list[SnapshotInfo]


def from_ms(timestamp_ms: int) -> datetime:
    """An Iceberg millisecond timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC)


def snapshot_info(snapshot: Snapshot) -> SnapshotInfo:
    summary = snapshot.summary
    return SnapshotInfo(
        snapshot_id=snapshot.snapshot_id,
        parent_id=snapshot.parent_snapshot_id,
        timestamp=from_ms(snapshot.timestamp_ms),
        operation=summary.operation.value if summary is not None else "unknown",
        summary=dict(summary.additional_properties) if summary is not None else {},
    )


def describe_table(name: str, table: Table) -> TableDescription:
    """A ``TableDescription`` of ``table`` as currently loaded."""
    schema = table.schema()
    return TableDescription(
        name=name,
        location=table.location(),
        format_version=table.format_version,
        schema=[
            ColumnInfo(f.name, str(f.field_type), f.required, f.field_id) for f in schema.fields
        ],
        partition_spec=[
            PartitionFieldInfo(
                p.name, schema.find_column_name(p.source_id) or "?", str(p.transform)
            )
            for p in table.spec().fields
        ],
        sort_order=[
            SortFieldInfo(
                source=schema.find_column_name(s.source_id) or "?",
                transform=str(s.transform),
                direction=s.direction.value,
                null_order=s.null_order.value,
            )
            for s in table.sort_order().fields
        ],
        properties=dict(table.properties),
        current_snapshot_id=table.metadata.current_snapshot_id,
        snapshots=[snapshot_info(s) for s in table.snapshots()],
    )
