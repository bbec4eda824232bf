"""Python rows (from a database cursor) to Arrow tables whose column types stay put.

Each chunk's types are inferred by pyarrow, then kept: later chunks are built with the
types the first non-null values fixed, so one source yields one schema (a column that
was all NULL so far is typed when its first value arrives). Normalised on the way:
aware timestamps become UTC, decimals widen to 38 digits at their scale (later chunks
with bigger values still fit), JSON objects and arrays become JSON text (their shapes
vary row to row), and other driver types (UUID, network addresses) become text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.types as pat

_NATIVE = (bool, int, float, Decimal, str, bytes, datetime, date, time, timedelta)
_MAX_DECIMAL128 = 38


class TypeConflictError(Exception):
    """A column's values do not fit the type its earlier values fixed (internal)."""

    def __init__(self, column: str, found: str, expected: str | None) -> None:
        super().__init__(column, found, expected)
        self.column = column
        self.found = found
        self.expected = expected


class ArrowRows:
    """Builds tables from row chunks with one stable schema per column."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.types: list[pa.DataType | None] = [None] * len(self.names)

    def table(self, rows: Sequence[Sequence[Any]]) -> pa.Table:
        """One chunk of rows as a table; ``TypeConflictError`` on a value that won't fit."""
        columns: list[Sequence[Any]] = (
            list(zip(*rows, strict=True)) if rows else [() for _ in self.names]
        )
        arrays = [self._column(i, values) for i, values in enumerate(columns)]
        return pa.Table.from_arrays(arrays, names=self.names)

    def _column(self, index: int, values: Sequence[Any]) -> pa.Array:
        plain = _plain_values(values)
        known = self.types[index]
        try:
            if known is not None:
                return pa.array(plain, type=known)
            array = _normalise(pa.array(plain))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            found = _first_type(plain)
            raise TypeConflictError(
                self.names[index], found, None if known is None else str(known)
            ) from exc
        if not pat.is_null(array.type):
            self.types[index] = array.type
        return array


def _first_type(values: Sequence[Any]) -> str:
    kinds = sorted({type(v).__name__ for v in values if v is not None})
    return ", ".join(kinds) or "null"


def _plain_values(values: Sequence[Any]) -> Sequence[Any]:
    """Values pyarrow infers consistently: JSON documents as text, driver types as text."""
    sample = next((v for v in values if v is not None), None)
    convert: Callable[[Any], Any] | None
    if sample is None or isinstance(sample, _NATIVE):
        convert = _convert_mixed if _is_mixed(values) else None
    elif isinstance(sample, dict | list | tuple):
        convert = _json_text
    elif isinstance(sample, memoryview | bytearray):
        convert = bytes
    else:
        convert = str
    if convert is None:
        return values
    return [None if v is None else convert(v) for v in values]


def _is_mixed(values: Sequence[Any]) -> bool:
    return any(v is not None and not isinstance(v, _NATIVE) for v in values)


def _convert_mixed(value: Any) -> Any:
    if isinstance(value, _NATIVE):
        return value
    return _json_text(value) if isinstance(value, dict | list | tuple) else str(value)


def _json_text(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


def _normalise(array: pa.Array) -> pa.Array:
    kind = array.type
    if pat.is_timestamp(kind) and kind.tz is not None and kind.tz != "UTC":
        return array.cast(pa.timestamp(kind.unit, tz="UTC"))
    if pat.is_decimal128(kind) and kind.precision < _MAX_DECIMAL128:
        return array.cast(pa.decimal128(_MAX_DECIMAL128, kind.scale))
    return array
