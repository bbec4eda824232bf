"""Result encoding (Arrow, JSON, CSV, Parquet) and streaming file readers with typed errors."""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest

from actors.lake.formats import MEDIA_TYPES, encode, format_from_path, iter_batches_from_file
from actors.lake.sql_errors import MalformedFileError, UnsupportedEncodingError
from cluster.errors import InvalidInputError, NotFoundError

FLAT = pa.table(
    {
        "id": pa.array([1, 2, None], pa.int64()),
        "name": ["ada", "bøb", None],
        "score": [1.5, float("nan"), float("inf")],
        "at": pa.array(
            [datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), None, None],
            pa.timestamp("us", tz="UTC"),
        ),
        "day": pa.array([date(2024, 1, 2), None, None]),
        "price": pa.array([Decimal("12.30"), None, Decimal("-0.01")], pa.decimal128(6, 2)),
        "blob": pa.array([b"\x00\xff", None, b""]),
        "took": pa.array([timedelta(seconds=90, microseconds=5), None, None]),
        "key": pa.array([uuid.UUID(int=7).bytes, None, None], pa.uuid()),
    }
)
# NaN never equals itself, so round trips compare a table without it.
ROUND_TRIP = FLAT.set_column(2, "score", pa.array([1.5, -2.0, float("inf")]))
NESTED = pa.table(
    {
        "tags": [["a", "b"], None],
        "point": [{"x": 1, "y": None}, None],
        "attrs": pa.array([[("k", 1)], None], pa.map_(pa.string(), pa.int64())),
        "by_id": pa.array([[(3, "c")], []], pa.map_(pa.int32(), pa.string())),
    }
)


def _batches(path: Path, fmt: str | None = None) -> pa.Table:
    batches = list(iter_batches_from_file(path, fmt))  # type: ignore[arg-type]
    return pa.Table.from_batches(batches)


# ---------------------------------------------------------------- encode


def test_arrow_is_an_ipc_stream_that_round_trips() -> None:
    body, media = encode(ROUND_TRIP, "arrow")
    assert media == "application/vnd.apache.arrow.stream"
    assert pa_ipc.open_stream(body).read_all().equals(ROUND_TRIP)


def test_parquet_round_trips() -> None:
    body, media = encode(ROUND_TRIP, "parquet")
    assert media == MEDIA_TYPES["parquet"]
    assert pq.read_table(io.BytesIO(body)).equals(ROUND_TRIP)


def test_json_rows_with_iso_times_base64_bytes_and_string_decimals() -> None:
    body, media = encode(FLAT, "json")
    assert media == "application/json"
    rows = json.loads(body)
    assert rows[0] == {
        "id": 1,
        "name": "ada",
        "score": 1.5,
        "at": "2024-05-06T07:08:09.123456+00:00",
        "day": "2024-01-02",
        "price": "12.30",
        "blob": base64.b64encode(b"\x00\xff").decode(),
        "took": "PT90.000005S",
        "key": str(uuid.UUID(int=7)),
    }
    assert rows[1]["score"] == "NaN"
    assert rows[2]["score"] == "Infinity"
    assert rows[2]["name"] is None and rows[2]["price"] == "-0.01"
    assert "bøb" in body.decode("utf-8")


def test_json_nested_values() -> None:
    rows = json.loads(encode(NESTED, "json")[0])
    assert rows[0] == {
        "tags": ["a", "b"],
        "point": {"x": 1, "y": None},
        "attrs": {"k": 1},
        "by_id": [{"key": 3, "value": "c"}],
    }
    assert rows[1] == {"tags": None, "point": None, "attrs": None, "by_id": []}


def test_json_refuses_duplicate_column_names() -> None:
    joined = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["id", "id"])
    with pytest.raises(UnsupportedEncodingError, match="distinct name"):
        encode(joined, "json")
    assert encode(joined, "csv")[0].startswith(b'"id","id"')


def test_json_of_an_empty_table_is_an_empty_list() -> None:
    assert json.loads(encode(FLAT.slice(0, 0), "json")[0]) == []


def test_csv_round_trips_scalars() -> None:
    body, media = encode(FLAT, "csv")
    assert media.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode("utf-8"))))
    assert rows[0]["name"] == "ada"
    assert rows[0]["blob"] == base64.b64encode(b"\x00\xff").decode()
    assert rows[0]["price"] == "12.30"
    assert rows[0]["key"] == str(uuid.UUID(int=7))
    back = pa_csv.read_csv(io.BytesIO(body))
    assert back.column("id").to_pylist() == [1, 2, None]


def test_csv_refuses_nested_columns_naming_the_column() -> None:
    with pytest.raises(UnsupportedEncodingError) as info:
        encode(NESTED, "csv")
    assert "'tags'" in info.value.message
    assert "json, arrow or parquet" in info.value.message


def test_unknown_result_format() -> None:
    with pytest.raises(InvalidInputError, match="xml"):
        encode(FLAT, "xml")  # type: ignore[arg-type]


# ---------------------------------------------------------------- reading files


@pytest.fixture
def table() -> pa.Table:
    return pa.table({"id": list(range(250)), "name": [f"n{i}" for i in range(250)]})


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _csv_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pa_csv.write_csv(table, sink)
    return sink.getvalue()


def _jsonl_bytes(table: pa.Table) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in table.to_pylist()).encode()


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _ipc_stream_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa_ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100)
    return sink.getvalue()


def _ipc_file_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa_ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=100)
    return sink.getvalue()


WRITERS = {
    "data.csv": _csv_bytes,
    "data.csv.gz": _csv_bytes,
    "data.jsonl": _jsonl_bytes,
    "data.ndjson.gz": _jsonl_bytes,
    "data.parquet": _parquet_bytes,
    "data.parquet.gz": _parquet_bytes,
    "data.arrows": _ipc_stream_bytes,
    "data.arrow": _ipc_file_bytes,
    "data.arrow.gz": _ipc_file_bytes,
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_each_format_round_trips(tmp_path: Path, table: pa.Table, name: str) -> None:
    path = _write(tmp_path / name, WRITERS[name](table))
    assert _batches(path).to_pylist() == table.to_pylist()


def test_batches_are_at_most_batch_rows(tmp_path: Path, table: pa.Table) -> None:
    path = _write(tmp_path / "data.csv", _csv_bytes(table))
    sizes = [b.num_rows for b in iter_batches_from_file(path, batch_rows=100)]
    assert sizes == [100, 100, 50]


def test_explicit_format_and_schema(tmp_path: Path) -> None:
    path = _write(tmp_path / "upload.bin", b"id,code\n1,007\n2,010\n")
    schema = pa.schema([("id", pa.int32()), ("code", pa.string())])
    batches = list(iter_batches_from_file(path, "csv", schema=schema))
    assert batches[0].schema == schema
    assert batches[0].column(1).to_pylist() == ["007", "010"]


def test_latin1_csv_with_its_encoding(tmp_path: Path) -> None:
    path = _write(tmp_path / "data.csv", "name\nJosé\n".encode("latin-1"))
    rows = pa.Table.from_batches(list(iter_batches_from_file(path, encoding="latin-1")))
    assert rows.to_pylist() == [{"name": "José"}]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"a,b\n1,2\n3,4,5\n", "Expected 2 columns, got 3"),
        (b'a,b\n"1,2\n3,4\n', "Expected 2 columns"),
        (b"a,b\n\xff\xfe,2\n", "not valid utf8 text"),
        (b"a,\xe9\n1,2\n", "header row is not valid utf8 text"),
        (b"", "Empty CSV file"),
    ],
)
def test_malformed_csv_names_the_file_and_problem(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(MalformedFileError) as info:
        list(iter_batches_from_file(path))
    assert str(path) in info.value.message
    assert problem in info.value.message
    assert "as csv" in info.value.message


def test_bad_utf8_in_a_later_csv_block(tmp_path: Path) -> None:
    content = b"name\n" + b"plain\n" * 300_000 + b"\xff\xfe\n"
    path = _write(tmp_path / "late.csv", content)
    with pytest.raises(MalformedFileError, match="UTF8"):
        list(iter_batches_from_file(path))


def test_type_change_in_a_later_csv_block(tmp_path: Path) -> None:
    content = b"n\n" + b"1\n" * 600_000 + b"x\n"
    path = _write(tmp_path / "types.csv", content)
    with pytest.raises(MalformedFileError, match="invalid value 'x'"):
        list(iter_batches_from_file(path))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"a": 1}\n{"a": \n', "JSON parse error"),
        (b'[{"a": 1}]\n', "JSON parse error"),
        (b'{"a": "\xff"}\n', "UTF8"),
        (b'{"a": 1}\n{"a": "x"}\n', "changed from number to string"),
    ],
)
def test_malformed_json_lines(tmp_path: Path, content: bytes, problem: str) -> None:
    path = _write(tmp_path / "bad.jsonl", content)
    with pytest.raises(MalformedFileError) as info:
        list(iter_batches_from_file(path))
    assert str(path) in info.value.message and problem in info.value.message


@pytest.mark.parametrize("name", ["bad.parquet", "bad.arrow", "bad.arrows", "bad.csv.gz"])
def test_garbage_in_binary_formats_and_gzip(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"this is not what the name says" * 10)
    with pytest.raises(MalformedFileError) as info:
        list(iter_batches_from_file(path))
    assert str(path) in info.value.message


def test_truncated_parquet(tmp_path: Path, table: pa.Table) -> None:
    path = _write(tmp_path / "cut.parquet", _parquet_bytes(table)[:-20])
    with pytest.raises(MalformedFileError, match=r"cut\.parquet"):
        list(iter_batches_from_file(path))


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.csv"):
        iter_batches_from_file(tmp_path / "nope.csv")
    with pytest.raises(InvalidInputError, match=r"data\.xlsx"):
        iter_batches_from_file(tmp_path / "data.xlsx")


def test_format_from_path() -> None:
    assert format_from_path("x/Data.CSV.gz") == ("csv", True)
    assert format_from_path("x.ndjson") == ("jsonl", False)
    assert format_from_path("x.arrows") == ("arrow", False)
