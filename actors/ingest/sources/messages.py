"""Queue message bodies to Arrow: a JSON object, a JSON array of objects, or Arrow IPC.

Pure functions (no broker), so decoding is tested without RabbitMQ. A message's id is
its ``message_id`` property, else ``sha256:<hex>`` of its body: a body published twice
without an id is then one input, which is what dedupe after redelivery needs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pyarrow.ipc as pa_ipc

from actors.ingest.sources.base import InputRef, SourceBatch, repeated_ref
from actors.ingest.sources.errors import UndecodableMessageError

ARROW_STREAM = "application/vnd.apache.arrow.stream"
_IPC_CONTINUATION = b"\xff\xff\xff\xff"
_PROBLEM_CHARS = 200


def message_id_of(message_id: str | None, body: bytes) -> str:
    """The publisher's message id, else a digest of the body."""
    if message_id:
        return message_id
    return "sha256:" + hashlib.sha256(body).hexdigest()


def decode_body(body: bytes, content_type: str | None, message_id: str, queue: str) -> pa.Table:
    """The rows of one message; ``UndecodableMessageError`` (with the body) otherwise."""

    def bad(problem: str) -> UndecodableMessageError:
        short = problem if len(problem) <= _PROBLEM_CHARS else problem[:_PROBLEM_CHARS] + "…"
        return UndecodableMessageError(queue=queue, message_id=message_id, problem=short, body=body)

    if (content_type or "").split(";")[0].strip() == ARROW_STREAM or body.startswith(
        _IPC_CONTINUATION
    ):
        try:
            return pa_ipc.open_stream(pa.py_buffer(body)).read_all()
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise bad(f"not an Arrow IPC stream ({exc})") from None
    try:
        document = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise bad(f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    rows = [document] if isinstance(document, dict) else document
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise bad(f"JSON {type(document).__name__} is not an object or an array of objects")
    try:
        return pa.Table.from_pylist(rows)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        raise bad(f"values do not fit one type per key ({exc})") from None


def decode_messages(
    refs: Iterable[InputRef], queue: str, *, rows_per_batch: int, report: bool
) -> Iterator[SourceBatch]:
    """Batches of decoded messages; a message's rows all carry its id as their ref.

    Consecutive messages share a batch while their schemas unify (up to
    ``rows_per_batch`` rows); one that does not starts the next batch. An undecodable
    message raises, or with ``report`` comes as a rowless batch carrying the error.
    """
    tables: list[pa.Table] = []
    ids: list[pa.Array] = []
    schema: pa.Schema | None = None
    rows = 0
    for ref in refs:
        try:
            table = decode_body(ref.body or b"", ref.content_type, ref.id, queue)
        except UndecodableMessageError as error:
            if not report:
                raise
            yield SourceBatch(pa.table({}), pa.array([], pa.string()), errors=(error,))
            continue
        unified = None if schema is None else _unify(schema, table.schema)
        if tables and (unified is None or rows + table.num_rows > rows_per_batch):
            yield _batch(tables, ids)
            tables, ids, rows, unified = [], [], 0, None
        schema = unified or table.schema
        tables.append(table)
        ids.append(repeated_ref(ref.id, table.num_rows))
        rows += table.num_rows
    if tables:
        yield _batch(tables, ids)


def _unify(schema: pa.Schema, other: pa.Schema) -> pa.Schema | None:
    try:
        return pa.unify_schemas([schema, other], promote_options="permissive")
    except (pa.ArrowException, TypeError):
        return None


def _batch(tables: list[pa.Table], ids: list[pa.Array]) -> SourceBatch:
    table = pa.concat_tables(tables, promote_options="permissive").combine_chunks()
    return SourceBatch(table, pa.concat_arrays(ids))
