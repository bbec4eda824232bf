"""Deliveries to one event batch in the topology's schema, poison messages set aside.

A message is JSON (one object or an array of objects) or an Arrow IPC stream. Every
message is checked whole: it is *poison* when it does not decode, lacks the time or a
key column, or holds a value its column's type cannot take; poison messages become
``dead_letters`` rows (message id, reason, body) and the rest of the batch goes on.

Fast path: single-object JSON messages are parsed together by Arrow's JSON reader
(newline-delimited, with the declared schema), not one by one in Python; when that
fails, the messages are decoded one at a time to find the poison ones.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from actors.ingest.sources.errors import UndecodableMessageError
from actors.ingest.sources.messages import ARROW_STREAM, decode_body
from actors.stream.ports import Delivery

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("message_id", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("content_type", pa.string()),
        pa.field("body", pa.binary()),
    ]
)
_REASON_CHARS = 300


@dataclass(frozen=True)
class Decoded:
    """One fetch, decoded: the events, and the poison deliveries with their reasons."""

    events: pa.Table
    dead: list[tuple[Delivery, str]]

    def dead_letters(self) -> pa.Table:
        return dead_letter_table(self.dead)


def dead_letter_table(dead: Sequence[tuple[Delivery, str]]) -> pa.Table:
    return pa.table(
        {
            "message_id": [d.message_id for d, _ in dead],
            "reason": [r[:_REASON_CHARS] for _, r in dead],
            "content_type": [d.content_type for d, _ in dead],
            "body": pa.array([d.body for d, _ in dead], pa.binary()),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def decode(
    deliveries: Sequence[Delivery], schema: pa.Schema | None, required: Sequence[str], queue: str
) -> Decoded:
    """The deliveries' events conformed to ``schema`` (None: as they come)."""
    if not deliveries:
        empty = schema.empty_table() if schema is not None else pa.table({})
        return Decoded(empty, [])
    if schema is not None and all(_single_json(d) for d in deliveries):
        fast = _json_lines(deliveries, schema, required)
        if fast is not None:
            return Decoded(fast, [])
    tables: list[pa.Table] = []
    dead: list[tuple[Delivery, str]] = []
    for delivery in deliveries:
        try:
            table = decode_body(delivery.body, delivery.content_type, delivery.message_id, queue)
            tables.append(conform(table, schema, required))
        except UndecodableMessageError as exc:
            dead.append((delivery, str(exc.fields.get("problem", exc))))
        except SchemaViolation as exc:
            dead.append((delivery, str(exc)))
    if not tables:
        empty = schema.empty_table() if schema is not None else pa.table({})
        return Decoded(empty, dead)
    return Decoded(pa.concat_tables(tables, promote_options="permissive"), dead)


class SchemaViolation(ValueError):
    """A message whose rows do not fit the topology's schema (the message says how)."""


def conform(table: pa.Table, schema: pa.Schema | None, required: Sequence[str]) -> pa.Table:
    """``table`` with exactly ``schema``'s columns and types; ``SchemaViolation`` otherwise."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SchemaViolation(f"missing required columns {missing}; has {table.column_names}")
    if schema is None:
        return table
    columns = []
    for f in schema:
        if f.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table[f.name]
        if column.type == f.type:
            columns.append(column)
            continue
        try:
            columns.append(pc.cast(column, f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise SchemaViolation(
                f"column {f.name!r} ({column.type}) does not fit {f.type}: {exc}"
            ) from None
    return pa.Table.from_arrays(columns, schema=schema)


def _single_json(delivery: Delivery) -> bool:
    kind = (delivery.content_type or "").split(";")[0].strip()
    return kind != ARROW_STREAM and delivery.body[:1] == b"{"


def _json_lines(
    deliveries: Sequence[Delivery], schema: pa.Schema, required: Sequence[str]
) -> pa.Table | None:
    """All single-object JSON bodies in one Arrow JSON read, or None to go one by one.

    Raw newlines in valid JSON are whitespace (newlines in strings are escaped), so each
    body becomes exactly one line. A row count other than one per message, a missing
    required value or any parse error sends the batch down the slow path.
    """
    lines = b"\n".join(d.body.replace(b"\n", b" ").replace(b"\r", b" ") for d in deliveries)
    try:
        table = pa_json.read_json(
            io.BytesIO(lines),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(deliveries):
        return None
    for name in required:
        if table[name].null_count:
            return None
    return table.select(schema.names).cast(schema)
