"""Arrow in and out of files and HTTP bodies: result encoding and streaming file readers.

``encode`` turns a result table into the bytes a client asked for (Arrow IPC stream,
JSON, CSV or Parquet). ``iter_batches_from_file`` reads CSV, JSON Lines, Parquet and
Arrow IPC files (gzip-compressed by a ``.gz`` suffix) batch by batch, and turns every
malformed input into ``MalformedFileError`` naming the file and the problem.

JSON has no types beyond numbers, strings and booleans, so values are written the way
most JSON APIs do: timestamps, dates and times as ISO 8601, durations as ISO 8601
durations (``PT1.5S``), bytes as base64, decimals as strings (exact), NaN and the
infinities as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``, maps with
string keys as objects and other maps as lists of ``{"key", "value"}``.
"""

from __future__ import annotations

import base64
import io
import json
import math
import threading
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from queue import Empty, Full, Queue
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pyarrow.types as pat

from actors.lake.sql_errors import MalformedFileError, UnsupportedEncodingError
from cluster.errors import InvalidInputError, NotFoundError

ResultFormat = Literal["arrow", "json", "csv", "parquet"]
FileFormat = Literal["csv", "jsonl", "parquet", "arrow"]
MEDIA_TYPES: dict[str, str] = {
    "arrow": "application/vnd.apache.arrow.stream",
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
}
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".arrow": "arrow",
    ".arrows": "arrow",
    ".ipc": "arrow",
    ".feather": "arrow",
}
_FIXES: dict[str, str] = {
    "csv": "send UTF-8 CSV with a header row, balanced quotes and the header's number of "
    "columns on every row (or give the column types)",
    "jsonl": "send UTF-8 JSON Lines: one JSON object per line, not a JSON array, with one "
    "type per key (or give the schema)",
    "parquet": "send a complete, uncorrupted Parquet file",
    "arrow": "send a complete Arrow IPC stream or file",
}
_ARROW_FILE_MAGIC = b"ARROW1"
_JSON_BLOCK_BYTES = 1 << 20


# ---------------------------------------------------------------- encoding


def encode(table: pa.Table, fmt: ResultFormat) -> tuple[bytes, str]:
    """``table`` as the bytes of ``fmt`` and the media type to send them with."""
    if fmt not in MEDIA_TYPES:
        raise InvalidInputError(
            field="format", value=fmt, allowed=", ".join(get_args(ResultFormat))
        )
    encoder = {"arrow": _to_ipc, "json": _to_json, "csv": _to_csv, "parquet": _to_parquet}[fmt]
    return encoder(table), MEDIA_TYPES[fmt]


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def _to_parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return bytes(sink.getvalue().to_pybytes())


def _to_json(table: pa.Table) -> bytes:
    names = table.column_names
    _refuse_duplicate_names(table)
    converters = [_json_converter(field.type) for field in table.schema]
    out = io.StringIO()
    out.write("[")
    first = True
    for batch in table.to_batches():
        columns = [
            [convert(v) for v in column.to_pylist()]
            for convert, column in zip(converters, batch.columns, strict=True)
        ]
        for values in zip(*columns, strict=True):
            out.write("" if first else ",")
            first = False
            row = dict(zip(names, values, strict=True))
            out.write(json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False))
    out.write("]")
    return out.getvalue().encode("utf-8")


def _refuse_duplicate_names(table: pa.Table) -> None:
    """A JSON object holds a key once; a join's two ``id`` columns would silently merge."""
    seen: set[str] = set()
    for field in table.schema:
        if field.name in seen:
            raise UnsupportedEncodingError(
                fmt="json",
                column=field.name,
                arrow_type=str(field.type),
                fix="give each result column a distinct name, e.g. SELECT a.id AS a_id, b.id",
            )
        seen.add(field.name)


Converter = Callable[[Any], Any]


def _json_converter(arrow_type: pa.DataType) -> Converter:
    """A function from one ``to_pylist`` value of ``arrow_type`` to a JSON-ready value."""
    if pat.is_dictionary(arrow_type):
        return _json_converter(arrow_type.value_type)
    if pat.is_map(arrow_type):
        return _map_converter(arrow_type)
    if _is_list(arrow_type):
        return _nullable(_list_converter(_json_converter(arrow_type.value_type)))
    if pat.is_struct(arrow_type):
        fields = [(f.name, _json_converter(f.type)) for f in arrow_type]
        return _nullable(lambda v: {name: conv(v.get(name)) for name, conv in fields})
    return _scalar_converter(arrow_type)


def _scalar_converter(arrow_type: pa.DataType) -> Converter:
    if pat.is_floating(arrow_type):
        return _nullable(_float)
    if pat.is_decimal(arrow_type):
        return _nullable(lambda v: str(v) if isinstance(v, Decimal) else v)
    if pat.is_duration(arrow_type):
        return _nullable(_iso_duration)
    if pat.is_timestamp(arrow_type) or pat.is_date(arrow_type) or pat.is_time(arrow_type):
        return _nullable(lambda v: v.isoformat())
    if isinstance(arrow_type, pa.BaseExtensionType):
        return _nullable(lambda v: str(v) if not isinstance(v, bytes) else _b64(v))
    if _is_binary(arrow_type):
        return _nullable(_b64)
    return _identity


def _map_converter(arrow_type: pa.MapType) -> Converter:
    key = _json_converter(arrow_type.key_type)
    item = _json_converter(arrow_type.item_type)
    if pat.is_string(arrow_type.key_type) or pat.is_large_string(arrow_type.key_type):
        return _nullable(lambda v: {k: item(x) for k, x in v})
    return _nullable(lambda v: [{"key": key(k), "value": item(x)} for k, x in v])


def _list_converter(child: Converter) -> Converter:
    return lambda v: [child(x) for x in v]


def _nullable(convert: Converter) -> Converter:
    return lambda v: None if v is None else convert(v)


def _identity(value: Any) -> Any:
    return value


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _iso_duration(value: timedelta) -> str:
    """ISO 8601 duration in seconds (``PT90S``, ``-PT0.5S``); days are not calendar days."""
    micros = value // timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    seconds = Decimal(abs(micros)) / Decimal(1_000_000)
    text = format(seconds.normalize(), "f")
    return f"{sign}PT{text}S"


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _is_list(arrow_type: pa.DataType) -> bool:
    return bool(
        pat.is_list(arrow_type)
        or pat.is_large_list(arrow_type)
        or pat.is_fixed_size_list(arrow_type)
        or pat.is_list_view(arrow_type)
        or pat.is_large_list_view(arrow_type)
    )


def _is_binary(arrow_type: pa.DataType) -> bool:
    return bool(
        pat.is_binary(arrow_type)
        or pat.is_large_binary(arrow_type)
        or pat.is_fixed_size_binary(arrow_type)
        or pat.is_binary_view(arrow_type)
    )


def _to_csv(table: pa.Table) -> bytes:
    columns = [_csv_column(field, table.column(i)) for i, field in enumerate(table.schema)]
    ready = pa.Table.from_arrays(columns, names=table.column_names)
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(ready, sink)
    return bytes(sink.getvalue().to_pybytes())


def _csv_column(field: pa.Field, column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """The column as CSV can hold it: bytes as base64 (as in JSON), views as plain strings."""
    kind = field.type
    if pat.is_nested(kind):
        raise UnsupportedEncodingError(
            fmt="csv",
            column=field.name,
            arrow_type=str(kind),
            fix="ask for json, arrow or parquet, or select scalar columns only",
        )
    if isinstance(kind, pa.BaseExtensionType) or _is_binary(kind):
        convert = _json_converter(kind)
        return pa.array([convert(v) for v in column.to_pylist()], type=pa.string())
    if pat.is_string_view(kind):
        return column.cast(pa.string())
    return column


# ---------------------------------------------------------------- reading files


def format_from_path(path: str | Path) -> tuple[FileFormat, bool]:
    """The file format its name says, and whether it is gzip-compressed (``.gz``)."""
    name = Path(path).name.lower()
    gzipped = name.endswith(".gz")
    stem = name.removesuffix(".gz")
    fmt = _EXTENSIONS.get(Path(stem).suffix)
    if fmt is None:
        raise InvalidInputError(
            field="file name",
            value=str(path),
            allowed="an extension of " + ", ".join(sorted(_EXTENSIONS)) + " (optionally + .gz)",
        )
    return fmt, gzipped


def iter_batches_from_file(
    path: str | Path,
    fmt: FileFormat | None = None,
    *,
    schema: pa.Schema | None = None,
    batch_rows: int = 65_536,
    encoding: str = "utf8",
    delimiter: str | None = None,
    header: bool = True,
) -> Iterator[pa.RecordBatch]:
    """Stream ``path`` as record batches; ``fmt`` defaults to what the extension says.

    ``schema`` fixes column types of CSV and JSON Lines instead of inferring them (Parquet
    and Arrow carry their own). ``encoding``, ``delimiter`` (default: tab for .tsv, else
    comma) and ``header`` (False: columns are named f0, f1, ...) apply to CSV. A ``.gz``
    suffix means gzip. Malformed input raises ``MalformedFileError`` while iterating.
    """
    file = Path(path)
    detected, gzipped = format_from_path(file) if fmt is None else (fmt, file.suffix == ".gz")
    if detected not in _FIXES:
        raise InvalidInputError(field="format", value=detected, allowed=", ".join(_FIXES))
    if not file.is_file():
        raise NotFoundError(kind="file", name=str(file), fix="check the path and that it is a file")
    if batch_rows < 1:
        raise InvalidInputError(field="batch_rows", value=batch_rows, allowed="an int >= 1")
    options = _Options(gzipped, schema, batch_rows, encoding, delimiter, header)
    return _guarded(file, detected, options)


@dataclass(frozen=True, slots=True)
class _Options:
    gzipped: bool
    schema: pa.Schema | None
    rows: int
    encoding: str
    delimiter: str | None = None
    header: bool = True


def _guarded(file: Path, fmt: FileFormat, options: _Options) -> Iterator[pa.RecordBatch]:
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "parquet": _read_parquet, "arrow": _read_ipc}
    try:
        yield from readers[fmt](file, options)
    except MalformedFileError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError, zlib.error, LookupError) as exc:
        # ArrowInvalid is a ValueError, ArrowIOError and gzip errors are OSErrors,
        # LookupError is an unknown CSV encoding name.
        raise MalformedFileError(
            path=str(file), fmt=fmt, problem=_problem(exc), fix=_FIXES[fmt]
        ) from None


def _problem(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "…" if len(text) > 300 else text) or type(exc).__name__


def _text_stream(file: Path, options: _Options) -> pa.NativeFile:
    return pa.input_stream(str(file), compression="gzip" if options.gzipped else None)


def _read_csv(file: Path, options: _Options) -> Iterator[pa.RecordBatch]:
    read = pa_csv.ReadOptions(
        encoding=options.encoding, block_size=1 << 20, autogenerate_column_names=not options.header
    )
    convert = pa_csv.ConvertOptions(column_types=options.schema)
    tab_separated = Path(file.name.lower().removesuffix(".gz")).suffix == ".tsv"
    parse = pa_csv.ParseOptions(delimiter=options.delimiter or ("\t" if tab_separated else ","))
    with _text_stream(file, options) as stream:
        reader = pa_csv.open_csv(
            stream, read_options=read, parse_options=parse, convert_options=convert
        )
        _check_header(reader.schema, file, options.encoding)
        for field in reader.schema:
            if pat.is_binary(field.type):  # inference falls back to binary on invalid UTF-8
                raise MalformedFileError(
                    path=str(file),
                    fmt="csv",
                    problem=f"column {field.name!r} is not valid {options.encoding} text",
                    fix="re-encode the file as UTF-8 or give its encoding",
                )
        yield from _rebatch(_read_ahead(reader), options.rows)


def _check_header(schema: pa.Schema, file: Path, encoding: str) -> None:
    """pyarrow keeps header bytes undecoded: a bad name would raise a bare
    ``UnicodeDecodeError`` wherever it is first read, outside ``_guarded``."""
    try:
        schema.names  # noqa: B018 - decoding the names is the check
    except UnicodeDecodeError as exc:
        raise MalformedFileError(
            path=str(file),
            fmt="csv",
            problem=f"the header row is not valid {encoding} text "
            f"(byte {exc.start} of a column name: {exc.reason})",
            fix="re-encode the file as UTF-8 or give its encoding",
        ) from None


def _read_jsonl(file: Path, options: _Options) -> Iterator[pa.RecordBatch]:
    read = pa_json.ReadOptions(block_size=_JSON_BLOCK_BYTES)
    parse = pa_json.ParseOptions(explicit_schema=options.schema)
    with _text_stream(file, options) as stream:
        reader = pa_json.open_json(stream, read_options=read, parse_options=parse)
        for batch in _rebatch(reader, options.rows):
            batch.validate(full=True)  # the JSON reader does not check UTF-8 itself
            yield batch


def _read_parquet(file: Path, options: _Options) -> Iterator[pa.RecordBatch]:
    source: Any = _whole_file(file) if options.gzipped else str(file)
    with pq.ParquetFile(source) as parquet:
        yield from parquet.iter_batches(batch_size=options.rows)


def _read_ipc(file: Path, options: _Options) -> Iterator[pa.RecordBatch]:
    source = _whole_file(file) if options.gzipped else pa.memory_map(str(file))
    with source:
        is_file_format = source.read(len(_ARROW_FILE_MAGIC)) == _ARROW_FILE_MAGIC
        source.seek(0)
        if is_file_format:
            ipc_file = pa_ipc.open_file(source)
            batches = (ipc_file.get_batch(i) for i in range(ipc_file.num_record_batches))
            yield from _rebatch(batches, options.rows)
        else:
            yield from _rebatch(pa_ipc.open_stream(source), options.rows)


def _whole_file(file: Path) -> pa.BufferReader:
    """A gzip file decompressed into memory: Parquet and Arrow files need random access."""
    with pa.input_stream(str(file), compression="gzip") as stream:
        return pa.BufferReader(stream.read_buffer())


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of at most ``rows`` rows, whatever block size the reader used."""
    for batch in batches:
        for offset in range(0, batch.num_rows, rows):
            yield batch.slice(offset, rows)


_END = object()


def _read_ahead(batches: Iterable[pa.RecordBatch], depth: int = 2) -> Iterator[pa.RecordBatch]:
    """``batches`` parsed by a helper thread up to ``depth`` ahead of the caller.

    pyarrow parses a CSV block without the GIL, so the next block is parsed while the
    caller checks and transforms this one. An error in the thread is raised here; closing
    the iterator early stops the thread before the caller closes the file.
    """
    queue: Queue[object] = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.05)
                return True
            except Full:
                continue
        return False

    def pump() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
        except BaseException as exc:  # handed to the caller, who raises it
            put(exc)
            return
        put(_END)

    thread = threading.Thread(target=pump, name="datapunk-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = queue.get(timeout=0.05)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    raise RuntimeError("read-ahead thread ended without a result") from None
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
