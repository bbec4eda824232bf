"""Arrow IPC encoding of ``SequenceDetector`` state (partials and per-key counters).

One table, one row per partial match (``next_step >= 0``) or per-key match counter
(``next_step == -1``, ``seq`` holding the counter). The event schema travels as the
``events`` field's type, so a restored detector keeps its exact column types.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from cluster.errors import InvalidInputError

_VERSION = "1"


def encode(
    schema: pa.Schema | None,
    key_columns: Sequence[str],
    max_seen: float | None,
    rows: list[dict[str, Any]],
) -> bytes:
    """Serialise detector state to Arrow IPC stream bytes."""
    event_fields = list(schema) if schema is not None else []
    key_fields = [schema.field(name) for name in key_columns] if schema is not None else []
    meta = {
        "version": _VERSION,
        "max_seen": json.dumps(max_seen),
        "has_schema": json.dumps(schema is not None),
    }
    state_schema = pa.schema(
        [
            pa.field("key", pa.struct(key_fields)),
            pa.field("seq", pa.int64()),
            pa.field("next_step", pa.int64()),
            pa.field("start", pa.float64()),
            pa.field("last", pa.float64()),
            pa.field("events", pa.list_(pa.struct(event_fields))),
        ],
        metadata=meta,
    )
    table = pa.Table.from_pylist(rows, schema=state_schema)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, state_schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def decode(
    data: bytes, key_columns: Sequence[str]
) -> tuple[pa.Schema | None, float | None, list[dict[str, Any]]]:
    """Inverse of ``encode``: (event schema, max_seen, state rows)."""
    table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    if meta.get("version") != _VERSION:
        raise InvalidInputError(
            field="snapshot version",
            value=meta.get("version"),
            allowed=f"a snapshot written by SequenceDetector.snapshot() version {_VERSION}",
        )
    has_schema = json.loads(meta["has_schema"])
    key_names = [f.name for f in table.schema.field("key").type]
    if has_schema and key_names != list(key_columns):
        raise InvalidInputError(
            field="snapshot key columns",
            value=key_names,
            allowed=f"the detector's key_columns {list(key_columns)}; restore into a "
            "detector configured like the one that took the snapshot",
        )
    schema = None
    if has_schema:
        schema = pa.schema(list(table.schema.field("events").type.value_type))
    return schema, json.loads(meta["max_seen"]), table.to_pylist()
