"""Decoding queue messages to Arrow, without a broker."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest

from actors.ingest.sources.base import InputRef
from actors.ingest.sources.errors import UndecodableMessageError
from actors.ingest.sources.messages import decode_body, decode_messages, message_id_of
from actors.lake.formats import encode


def ref(message_id: str, body: bytes, content_type: str | None = None) -> InputRef:
    return InputRef(kind="message", id=message_id, body=body, content_type=content_type)


def test_the_message_id_is_the_property_else_a_body_digest() -> None:
    assert message_id_of("abc", b"x") == "abc"
    assert message_id_of(None, b"x") == "sha256:" + hashlib.sha256(b"x").hexdigest()
    assert message_id_of("", b"x") == message_id_of(None, b"x")


def test_objects_arrays_and_arrow_streams_decode() -> None:
    assert decode_body(b'{"a": 1}', None, "m", "q").to_pylist() == [{"a": 1}]
    assert decode_body(b'[{"a": 1}, {"a": 2}]', None, "m", "q").num_rows == 2
    payload, media_type = encode(pa.table({"a": [1, 2, 3]}), "arrow")
    assert decode_body(payload, media_type, "m", "q").num_rows == 3
    assert decode_body(payload, None, "m", "q").num_rows == 3  # recognised by its marker


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"not json", None, "not JSON"),
        (b"\xff\xfe{}", None, "not UTF-8"),
        (b"[1, 2]", None, "not an object or an array of objects"),
        (b'"text"', None, "JSON str is not an object"),
        (b"garbage", "application/vnd.apache.arrow.stream", "not an Arrow IPC stream"),
        (b'[{"a": 1}, {"a": "x"}]', None, "one type per key"),
    ],
)
def test_undecodable_bodies_carry_the_body_and_id(
    body: bytes, content_type: str | None, problem: str
) -> None:
    with pytest.raises(UndecodableMessageError, match=problem) as caught:
        decode_body(body, content_type, "m-1", "orders")
    assert caught.value.body == body and caught.value.message_id == "m-1"
    assert "'orders'" in caught.value.message


def test_messages_batch_together_while_their_schemas_unify() -> None:
    refs = [
        ref("a", json.dumps({"x": 1}).encode()),
        ref("b", json.dumps({"x": 2.5, "y": "new"}).encode()),  # int widens, column added
        ref("c", json.dumps({"x": "text"}).encode()),  # cannot unify: next batch
    ]
    batches = list(decode_messages(refs, "q", rows_per_batch=100, report=False))
    assert [b.refs.to_pylist() for b in batches] == [["a", "b"], ["c"]]
    assert batches[0].table.column("x").to_pylist() == [1.0, 2.5]
    assert batches[0].table.column("y").to_pylist() == [None, "new"]


def test_batches_stop_at_the_row_bound_and_report_errors() -> None:
    refs = [ref(f"m{i}", b'[{"x": 1}, {"x": 2}]') for i in range(3)]
    refs.insert(1, ref("bad", b"nope"))
    batches = list(decode_messages(refs, "q", rows_per_batch=4, report=True))
    assert [b.table.num_rows for b in batches] == [0, 4, 2]  # the error comes at once
    [error] = [e for b in batches for e in b.errors]
    assert isinstance(error, UndecodableMessageError) and error.message_id == "bad"
    with pytest.raises(UndecodableMessageError):
        list(decode_messages(refs, "q", rows_per_batch=4, report=False))
