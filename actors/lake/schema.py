"""Reconciling incoming Arrow data with an Iceberg table schema, before anything is written.

``plan_write`` compares schemas and returns a ``WritePlan``: columns to add and columns to
widen (both only when evolution is allowed) and the Arrow schema the data is cast to.
``conform`` checks the data itself (nulls in required columns) and casts it. Both raise
``SchemaMismatchError`` naming the column and both types; the caller runs them before it
opens a transaction, so a refused write leaves the table untouched.

Rules, column by column (top-level columns; nested types must match in shape):

* same Iceberg type: kept (Arrow units normalised: timestamps to microseconds, any time
  zone to UTC, small integers to int32);
* incoming narrower than the table (int -> long, float -> double, decimal(p1, s) ->
  decimal(p2, s) with p1 < p2): cast to the table's type;
* incoming wider than the table: the table column is widened when ``evolve``, else refused;
* timestamp with a zone vs one without: refused, never guessed;
* a column the table lacks: added as an optional column when ``evolve``, else refused;
* a required table column: must be present and hold no nulls; an optional one the data
  lacks is written as nulls.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import _ConvertToIcebergWithoutIDs, schema_to_pyarrow, visit_pyarrow
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    FixedType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    PrimitiveType,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
    TimeType,
)

from actors.lake.errors import SchemaMismatchError

UTC = "UTC"


@dataclass(frozen=True)
class WritePlan:
    """What a write must do to fit the table: schema changes, then a cast of the data."""

    table: str
    add: tuple[tuple[str, IcebergType], ...]
    widen: tuple[tuple[str, PrimitiveType], ...]
    target: pa.Schema
    required: tuple[str, ...]

    @property
    def changes_schema(self) -> bool:
        return bool(self.add or self.widen)


def plan_write(table: str, table_schema: Schema, incoming: pa.Schema, *, evolve: bool) -> WritePlan:
    """Decide how ``incoming`` fits ``table_schema``; refuse with ``SchemaMismatchError``."""
    _refuse_duplicates(table, incoming)
    add: list[tuple[str, IcebergType]] = []
    widen: list[tuple[str, PrimitiveType]] = []
    target: list[pa.Field] = []
    for field in incoming:
        incoming_type = iceberg_type(table, field.name, field.type)
        try:
            existing = table_schema.find_field(field.name)
        except ValueError:
            if not evolve:
                raise _mismatch(
                    table,
                    field,
                    "absent from the table",
                    incoming_type,
                    "pass evolve=True to add the column, or drop it from the data",
                ) from None
            add.append((field.name, incoming_type))
            target.append(pa.field(field.name, arrow_type(incoming_type, field.type)))
            continue
        write_type = _reconcile(table, field, existing, incoming_type, evolve)
        if write_type != existing.field_type:
            widen.append((field.name, write_type))  # type: ignore[arg-type]
        nullable = not existing.required
        target.append(pa.field(field.name, arrow_type(write_type, field.type), nullable))
    _refuse_missing_required(table, table_schema, incoming)
    target.extend(_absent_columns(table_schema, incoming))
    required = tuple(f.name for f in table_schema.fields if f.required)
    return WritePlan(table, tuple(add), tuple(widen), pa.schema(target), required)


def conform(data: pa.Table, plan: WritePlan) -> pa.Table:
    """Check required columns for nulls and cast ``data`` to ``plan.target``."""
    for name in plan.required:
        nulls = data.column(name).null_count
        if nulls:
            field = plan.target.field(name)
            raise SchemaMismatchError(
                table=plan.table,
                column=name,
                table_type=f"{iceberg_type(plan.table, name, field.type)} (required)",
                incoming_type=f"{nulls} null value(s)",
                fix="fill or drop the rows whose value is null",
            )
    columns = [
        _cast(plan.table, field.name, data.column(field.name), field.type)
        if field.name in data.column_names
        else pa.nulls(data.num_rows, field.type)
        for field in plan.target
    ]
    return pa.Table.from_arrays(columns, schema=plan.target)


def iceberg_schema(table: str, arrow_schema: pa.Schema) -> Schema:
    """A new table's Iceberg schema from an Arrow schema, with fresh field ids from 1."""
    _refuse_duplicates(table, arrow_schema)
    fields = [
        NestedField(-1, f.name, iceberg_type(table, f.name, f.type), required=not f.nullable)
        for f in arrow_schema
    ]
    return assign_fresh_schema_ids(Schema(*fields))


def iceberg_type(table: str, column: str, arrow: pa.DataType) -> IcebergType:
    """The Iceberg type that stores Arrow type ``arrow``; refuse types Iceberg lacks."""
    if pa.types.is_dictionary(arrow):
        arrow = arrow.value_type
    primitive = _primitive(arrow)
    if primitive is not None:
        return primitive
    if pa.types.is_nested(arrow):
        try:
            converted = visit_pyarrow(
                arrow, _ConvertToIcebergWithoutIDs(downcast_ns_timestamp_to_us=True)
            )
        except (TypeError, ValueError) as exc:
            reason = str(exc).splitlines()[0]
            raise _unsupported(table, column, arrow, reason) from None
        if isinstance(converted, IcebergType):
            return converted
    raise _unsupported(table, column, arrow, "Iceberg has no such type")


def arrow_type(ice: IcebergType, incoming: pa.DataType) -> pa.DataType:
    """The Arrow type written for ``ice``; string, binary and nested keep ``incoming``'s."""
    fixed: dict[type[IcebergType], pa.DataType] = {
        BooleanType: pa.bool_(),
        IntegerType: pa.int32(),
        LongType: pa.int64(),
        FloatType: pa.float32(),
        DoubleType: pa.float64(),
        DateType: pa.date32(),
        TimeType: pa.time64("us"),
        TimestampType: pa.timestamp("us"),
        TimestamptzType: pa.timestamp("us", tz=UTC),
    }
    if type(ice) in fixed:
        return fixed[type(ice)]
    if isinstance(ice, DecimalType):
        return pa.decimal128(ice.precision, ice.scale)
    if pa.types.is_dictionary(incoming):
        return incoming.value_type
    return incoming


def _primitive(arrow: pa.DataType) -> IcebergType | None:
    if pa.types.is_boolean(arrow):
        return BooleanType()
    if pa.types.is_integer(arrow):
        return _integer(arrow)
    if pa.types.is_floating(arrow):
        return DoubleType() if arrow.bit_width == 64 else FloatType()
    if pa.types.is_decimal128(arrow):
        return DecimalType(arrow.precision, arrow.scale)
    if pa.types.is_string(arrow) or pa.types.is_large_string(arrow) or _is_view(arrow, "string"):
        return StringType()
    if pa.types.is_binary(arrow) or pa.types.is_large_binary(arrow) or _is_view(arrow, "binary"):
        return BinaryType()
    if pa.types.is_fixed_size_binary(arrow):
        return FixedType(arrow.byte_width)
    if pa.types.is_date(arrow):
        return DateType()
    if pa.types.is_time(arrow):
        return TimeType()
    if pa.types.is_timestamp(arrow):
        return TimestampType() if arrow.tz is None else TimestamptzType()
    return None


def _integer(arrow: pa.DataType) -> IcebergType | None:
    signed = pa.types.is_signed_integer(arrow)
    if arrow.bit_width < 32 or (signed and arrow.bit_width == 32):
        return IntegerType()
    if arrow.bit_width == 64 and not signed:
        return None  # uint64 has values no Iceberg type holds
    return LongType()  # int64, and uint32 whose values exceed int32


def _is_view(arrow: pa.DataType, kind: str) -> bool:
    check = getattr(pa.types, f"is_{kind}_view", None)
    return bool(check and check(arrow))


def _reconcile(
    table: str, field: pa.Field, existing: NestedField, incoming: IcebergType, evolve: bool
) -> IcebergType:
    """The type the column is written as: the table's, or the incoming one when widening."""
    current = existing.field_type
    if incoming == current or _same_shape(incoming, current):
        return current
    if promotes(incoming, current):
        return current
    if promotes(current, incoming):
        if evolve:
            return incoming
        raise _mismatch(
            table,
            field,
            current,
            incoming,
            f"cast the column to {current}, or pass evolve=True to widen it to {incoming}",
        )
    if isinstance(current, TimestampType | TimestamptzType) and isinstance(
        incoming, TimestampType | TimestamptzType
    ):
        raise _mismatch(table, field, current, incoming, _zone_fix(current))
    raise _mismatch(
        table, field, current, incoming, f"cast it to {current}, or write it under a new name"
    )


def promotes(narrow: IcebergType, wide: IcebergType) -> bool:
    """Iceberg's lossless type promotions (the ones ``update_schema`` accepts)."""
    if isinstance(narrow, IntegerType) and isinstance(wide, LongType):
        return True
    if isinstance(narrow, FloatType) and isinstance(wide, DoubleType):
        return True
    return (
        isinstance(narrow, DecimalType)
        and isinstance(wide, DecimalType)
        and narrow.scale == wide.scale
        and narrow.precision < wide.precision
    )


def _same_shape(left: IcebergType, right: IcebergType) -> bool:
    """Nested types equal up to field ids and element nullability."""
    if isinstance(left, StructType) and isinstance(right, StructType):
        return len(left.fields) == len(right.fields) and all(
            a.name == b.name and _same_shape(a.field_type, b.field_type)
            for a, b in zip(left.fields, right.fields, strict=True)
        )
    if isinstance(left, ListType) and isinstance(right, ListType):
        return _same_shape(left.element_type, right.element_type)
    if isinstance(left, MapType) and isinstance(right, MapType):
        return _same_shape(left.key_type, right.key_type) and _same_shape(
            left.value_type, right.value_type
        )
    return left == right


def _zone_fix(current: IcebergType) -> str:
    if isinstance(current, TimestamptzType):
        return "give the timestamps a time zone (e.g. pc.assume_timezone(col, 'UTC'))"
    return "drop the time zone (convert to UTC, then cast to timestamp without tz)"


def _cast(table: str, name: str, column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    if column.type == target:
        return column
    # Iceberg v2 stores microseconds: nanosecond timestamps are truncated, not refused.
    options = pc.CastOptions(target, allow_time_truncate=True)
    try:
        return pc.cast(column, options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise SchemaMismatchError(
            table=table,
            column=name,
            table_type=str(target),
            incoming_type=f"{column.type} values that do not fit ({exc})",
            fix="cast or clean the values first",
        ) from None


def _absent_columns(table_schema: Schema, incoming: pa.Schema) -> list[pa.Field]:
    """Optional table columns the data lacks, written as nulls.

    pyiceberg 0.12 needs every partition source column in the data it writes, and readers
    see nulls for these columns either way.
    """
    absent = [f for f in table_schema.fields if f.name not in incoming.names]
    if not absent:
        return []
    arrow = schema_to_pyarrow(Schema(*absent), include_field_ids=False)
    return [pa.field(f.name, f.type, nullable=True) for f in arrow]


def _refuse_duplicates(table: str, schema: pa.Schema) -> None:
    seen: set[str] = set()
    for name in schema.names:
        if name in seen:
            raise SchemaMismatchError(
                table=table,
                column=name,
                table_type="one column",
                incoming_type="the name twice",
                fix="rename or drop one of the columns",
            )
        seen.add(name)


def _refuse_missing_required(table: str, table_schema: Schema, incoming: pa.Schema) -> None:
    for field in table_schema.fields:
        if field.required and field.name not in incoming.names:
            raise SchemaMismatchError(
                table=table,
                column=field.name,
                table_type=f"{field.field_type} (required)",
                incoming_type="no such column",
                fix="add the column to the data",
            )


def _mismatch(
    table: str, field: pa.Field, current: IcebergType | str, incoming: IcebergType, fix: str
) -> SchemaMismatchError:
    shown = f"{incoming} (Arrow {field.type})" if str(incoming) != str(field.type) else incoming
    return SchemaMismatchError(
        table=table, column=field.name, table_type=str(current), incoming_type=str(shown), fix=fix
    )


def _unsupported(table: str, column: str, arrow: pa.DataType, reason: str) -> SchemaMismatchError:
    fix = (
        "give the column a concrete type (it is all null)"
        if pa.types.is_null(arrow)
        else "cast it to a type Iceberg stores (int64 for uint64, decimal128 for decimal256)"
    )
    return SchemaMismatchError(
        table=table,
        column=column,
        table_type="any Iceberg type",
        incoming_type=f"Arrow {arrow} ({reason})",
        fix=fix,
    )
