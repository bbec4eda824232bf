"""GraphQL object types shared by the resolvers: tables, snapshots, rows, models.

Built from the same plain records the REST routes return (``LakeService.describe``,
``ModelRegistry.model``, ...); fields that the REST records keep as free-form mappings
(summaries, metrics, lineage) are ``JSON``. Snapshot ids are 64-bit, beyond GraphQL's
32-bit ``Int``, so they travel as ``ID`` (decimal strings).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa
import strawberry
from strawberry.scalars import JSON

from actors.lake.formats import encode
from serve_apps.gateway.graphql.context import MAX_LIST, bounded


def snapshot_ref(value: strawberry.ID | None) -> int | None:
    """An ``ID`` argument as the snapshot id it names (decimal digits)."""
    from cluster.errors import InvalidInputError

    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise InvalidInputError(field="snapshotId", value=value, allowed="a decimal snapshot id")
    return int(text)


def _id(value: Any) -> strawberry.ID | None:
    return None if value is None else strawberry.ID(str(value))


@strawberry.type(description="One column of a table's current schema.")
class Column:
    name: str
    type: str
    required: bool


@strawberry.type(description="A table snapshot: what made it, when, its summary counters.")
class Snapshot:
    snapshot_id: strawberry.ID
    parent_id: strawberry.ID | None
    timestamp: datetime
    operation: str
    summary: JSON

    @classmethod
    def of(cls, record: dict[str, Any]) -> Snapshot:
        return cls(
            snapshot_id=strawberry.ID(str(record["snapshot_id"])),
            parent_id=_id(record.get("parent_id")),
            timestamp=datetime.fromisoformat(str(record["timestamp"])),
            operation=str(record["operation"]),
            summary=JSON(record.get("summary") or {}),
        )


@strawberry.type(description="A Lake table as `datapunk lake describe` shows it.")
class Table:
    name: str
    location: str
    format_version: int
    columns: list[Column]
    partition_spec: JSON
    sort_order: JSON
    properties: JSON
    current_snapshot_id: strawberry.ID | None
    all_snapshots: strawberry.Private[list[dict[str, Any]]]

    @strawberry.field(description="The newest `limit` snapshots, oldest first.")
    def snapshots(self, limit: int = 50) -> list[Snapshot]:
        count = bounded(limit, MAX_LIST)
        return [Snapshot.of(s) for s in self.all_snapshots[-count:]]

    @classmethod
    def of(cls, record: dict[str, Any]) -> Table:
        return cls(
            name=record["name"],
            location=record["location"],
            format_version=int(record["format_version"]),
            columns=[
                Column(name=c["name"], type=c["type"], required=bool(c["required"]))
                for c in record["schema"]
            ],
            partition_spec=JSON(record["partition_spec"]),
            sort_order=JSON(record["sort_order"]),
            properties=JSON(record["properties"]),
            current_snapshot_id=_id(record.get("current_snapshot_id")),
            all_snapshots=list(record.get("snapshots") or []),
        )


@strawberry.type(description="Rows as JSON objects, in the REST query's JSON encoding.")
class Rows:
    columns: list[str]
    row_count: int
    rows: JSON

    @classmethod
    def of(cls, table: pa.Table) -> Rows:
        body, _ = encode(table, "json")
        return cls(
            columns=list(table.column_names), row_count=table.num_rows, rows=JSON(json.loads(body))
        )


@strawberry.type(description="A registered model with its latest version and aliases.")
class ModelSummary:
    name: str
    latest_version: int | None
    version_count: int | None
    aliases: JSON

    @classmethod
    def of(cls, record: dict[str, Any]) -> ModelSummary:
        return cls(
            name=record["name"],
            latest_version=record.get("latest_version"),
            version_count=record.get("version_count"),
            aliases=JSON(record.get("aliases") or {}),
        )


@strawberry.type(description="One model version: signature, metrics, lineage (no file paths).")
class ModelVersion:
    name: str
    version: int
    sha256: str
    format: str
    size: int | None
    signature: JSON | None
    metrics: JSON
    params: JSON
    tags: JSON
    lineage: JSON
    aliases: list[str]
    created_at: str
    created_by: str | None

    @classmethod
    def of(cls, record: dict[str, Any]) -> ModelVersion:
        return cls(
            name=record["name"],
            version=int(record["version"]),
            sha256=record["sha256"],
            format=record["format"],
            size=record.get("size"),
            signature=JSON(record.get("signature")),
            metrics=JSON(record.get("metrics") or {}),
            params=JSON(record.get("params") or {}),
            tags=JSON(record.get("tags") or {}),
            lineage=JSON(record.get("lineage") or {}),
            aliases=list(record.get("aliases") or []),
            created_at=str(record["created_at"]),
            created_by=record.get("created_by"),
        )


@strawberry.type(description="A canary: a share of an alias's traffic sent to another version.")
class Canary:
    name: str
    alias: str
    version: int
    percent: float
    sticky_key: str | None
    created_at: str
    created_by: str | None

    @classmethod
    def of(cls, record: dict[str, Any]) -> Canary:
        return cls(
            name=record["name"],
            alias=record["alias"],
            version=int(record["version"]),
            percent=float(record["percent"]),
            sticky_key=record.get("sticky_key"),
            created_at=str(record["created_at"]),
            created_by=record.get("created_by"),
        )
