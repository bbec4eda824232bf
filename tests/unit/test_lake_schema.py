"""Pure schema reconciliation: plans, casts and refusals, with no catalog and no files."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiceberg.schema import Schema
from pyiceberg.types import (
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    StructType,
    TimestampType,
    TimestamptzType,
)

from actors.lake.errors import SchemaMismatchError
from actors.lake.schema import WritePlan, conform, iceberg_schema, plan_write

T = "default.t"


def table_schema(*fields: tuple[str, object, bool]) -> Schema:
    return Schema(
        *(
            NestedField(i + 1, name, kind, required=required)  # type: ignore[arg-type]
            for i, (name, kind, required) in enumerate(fields)
        )
    )


def plan(schema: Schema, data: pa.Table, evolve: bool = True) -> WritePlan:
    return plan_write(T, schema, data.schema, evolve=evolve)


LONG_ID = table_schema(("id", LongType(), False))


# --- matching and casting -------------------------------------------------------------


def test_matching_schemas_need_no_change() -> None:
    data = pa.table({"id": pa.array([1, 2], pa.int64())})
    result = plan(LONG_ID, data)
    assert not result.changes_schema
    assert conform(data, result).equals(data)


def test_narrower_integers_are_cast_to_the_table_type() -> None:
    data = pa.table({"id": pa.array([1, None], pa.int32())})
    result = plan(LONG_ID, data, evolve=False)
    assert not result.changes_schema
    out = conform(data, result)
    assert out.schema.field("id").type == pa.int64()
    assert out.column("id").to_pylist() == [1, None]


@given(st.lists(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1)), max_size=50))
def test_int32_values_survive_the_cast_to_long(values: list[int | None]) -> None:
    data = pa.table({"id": pa.array(values, pa.int32())})
    assert conform(data, plan(LONG_ID, data)).column("id").to_pylist() == values


def test_float32_is_cast_to_double() -> None:
    schema = table_schema(("x", DoubleType(), False))
    data = pa.table({"x": pa.array([1.5], pa.float32())})
    assert conform(data, plan(schema, data)).schema.field("x").type == pa.float64()


def test_smaller_decimal_precision_is_cast() -> None:
    schema = table_schema(("price", DecimalType(10, 2), False))
    data = pa.table({"price": pa.array([Decimal("1.25")], pa.decimal128(5, 2))})
    out = conform(data, plan(schema, data, evolve=False))
    assert out.schema.field("price").type == pa.decimal128(10, 2)
    assert out.column("price").to_pylist() == [Decimal("1.25")]


def test_dictionary_strings_are_plain_strings() -> None:
    schema = table_schema(("s", StringType(), False))
    data = pa.table({"s": pa.array(["a", "b", "a"]).dictionary_encode()})
    out = conform(data, plan(schema, data, evolve=False))
    assert out.column("s").to_pylist() == ["a", "b", "a"]


# --- widening ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table_type", "arrow_type", "wider"),
    [
        (IntegerType(), pa.int64(), LongType()),
        (FloatType(), pa.float64(), DoubleType()),
        (DecimalType(10, 2), pa.decimal128(12, 2), DecimalType(12, 2)),
    ],
)
def test_wider_data_widens_the_column_when_evolving(
    table_type: object, arrow_type: pa.DataType, wider: object
) -> None:
    schema = table_schema(("c", table_type, False))
    data = pa.table({"c": pa.nulls(1, arrow_type)})
    assert plan(schema, data).widen == (("c", wider),)
    with pytest.raises(SchemaMismatchError, match=r"evolve=True to widen"):
        plan(schema, data, evolve=False)


def test_a_decimal_of_another_scale_is_refused() -> None:
    schema = table_schema(("p", DecimalType(10, 2), False))
    data = pa.table({"p": pa.array([Decimal("1.250")], pa.decimal128(10, 3))})
    with pytest.raises(SchemaMismatchError, match=r"decimal\(10, 2\).*decimal\(10, 3\)"):
        plan(schema, data)


# --- refusals ---------------------------------------------------------------------------


def test_a_string_into_a_long_column_names_the_column_and_both_types() -> None:
    data = pa.table({"id": ["7"]})
    with pytest.raises(SchemaMismatchError) as info:
        plan(LONG_ID, data)
    assert info.value.fields == {
        "table": T,
        "column": "id",
        "table_type": "long",
        "incoming_type": "string",
    }
    assert "cast it to long" in info.value.message


def test_a_new_column_is_added_only_when_evolving() -> None:
    data = pa.table({"id": pa.array([1], pa.int64()), "note": ["n"]})
    assert plan(LONG_ID, data).add == (("note", StringType()),)
    with pytest.raises(SchemaMismatchError, match=r"'note'.*absent.*evolve=True"):
        plan(LONG_ID, data, evolve=False)


def test_a_missing_optional_column_is_written_as_nulls() -> None:
    schema = table_schema(("id", LongType(), False), ("note", StringType(), False))
    data = pa.table({"id": pa.array([1, 2], pa.int64())})
    out = conform(data, plan(schema, data))
    assert out.column("note").to_pylist() == [None, None]


def test_a_missing_required_column_is_refused() -> None:
    schema = table_schema(("id", LongType(), True), ("note", StringType(), False))
    with pytest.raises(SchemaMismatchError, match=r"'id'.*required.*no such column"):
        plan(schema, pa.table({"note": ["n"]}))


def test_a_required_column_accepts_nullable_data_without_nulls_only() -> None:
    schema = table_schema(("id", LongType(), True))
    clean = pa.table({"id": pa.array([1], pa.int64())})
    assert not conform(clean, plan(schema, clean)).schema.field("id").nullable
    dirty = pa.table({"id": pa.array([1, None, None], pa.int64())})
    with pytest.raises(SchemaMismatchError, match=r"'id'.*long \(required\).*2 null"):
        conform(dirty, plan(schema, dirty))


def test_duplicate_column_names_are_refused() -> None:
    data = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["id", "id"])
    with pytest.raises(SchemaMismatchError, match="twice"):
        plan(LONG_ID, data)


@pytest.mark.parametrize(
    ("arrow_type", "hint"), [(pa.uint64(), "int64 for uint64"), (pa.null(), "all null")]
)
def test_types_iceberg_lacks_are_refused_with_a_fix(arrow_type: pa.DataType, hint: str) -> None:
    data = pa.table({"x": pa.array([None], arrow_type)})
    with pytest.raises(SchemaMismatchError, match=hint):
        plan(LONG_ID, data)


# --- timestamps -------------------------------------------------------------------------

NAIVE = table_schema(("ts", TimestampType(), False))
AWARE = table_schema(("ts", TimestamptzType(), False))


def test_nanosecond_timestamps_are_truncated_to_microseconds() -> None:
    data = pa.table({"ts": pa.array([1_000_001_999], pa.timestamp("ns"))})
    out = conform(data, plan(NAIVE, data, evolve=False))
    assert out.schema.field("ts").type == pa.timestamp("us")
    assert out.column("ts").cast(pa.int64()).to_pylist() == [1_000_001]


def test_any_time_zone_becomes_utc_for_a_timestamptz_column() -> None:
    moment = datetime(2026, 5, 1, 12, tzinfo=UTC)
    data = pa.table({"ts": pa.array([moment], pa.timestamp("ms", tz="Europe/Zurich"))})
    out = conform(data, plan(AWARE, data, evolve=False))
    assert out.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert out.column("ts").to_pylist() == [moment]


@pytest.mark.parametrize(
    ("schema", "arrow_type", "fix"),
    [
        (NAIVE, pa.timestamp("us", tz="UTC"), "drop the time zone"),
        (AWARE, pa.timestamp("us"), "give the timestamps a time zone"),
    ],
)
def test_a_time_zone_mismatch_is_refused_not_guessed(
    schema: Schema, arrow_type: pa.DataType, fix: str
) -> None:
    data = pa.table({"ts": pa.array([0], pa.int64()).cast(arrow_type)})
    with pytest.raises(SchemaMismatchError, match=fix):
        plan(schema, data)


# --- nested types and new-table schemas -------------------------------------------------


def test_nested_columns_of_the_same_shape_are_accepted() -> None:
    schema = table_schema(
        ("tags", ListType(10, StringType()), False),
        (
            "pos",
            StructType(NestedField(11, "x", DoubleType()), NestedField(12, "y", DoubleType())),
            False,
        ),
    )
    data = pa.table(
        {
            "tags": pa.array([["a", "b"]], pa.list_(pa.string())),
            "pos": pa.array([{"x": 1.0, "y": 2.0}]),
        }
    )
    result = plan(schema, data, evolve=False)
    assert not result.changes_schema
    assert conform(data, result).to_pylist() == data.to_pylist()


def test_a_new_table_schema_gets_fresh_ids_and_requiredness() -> None:
    arrow = pa.schema([pa.field("id", pa.int64(), nullable=False), ("ts", pa.timestamp("ns"))])
    schema = iceberg_schema(T, arrow)
    assert [(f.field_id, f.name, str(f.field_type), f.required) for f in schema.fields] == [
        (1, "id", "long", True),
        (2, "ts", "timestamp", False),
    ]


@given(st.permutations(["a", "b", "c", "d"]), st.integers(1, 4))
def test_any_order_and_subset_of_optional_columns_conforms(order: list[str], keep: int) -> None:
    schema = table_schema(*((name, LongType(), False) for name in "abcd"))
    present = order[:keep]
    data = pa.table({name: pa.array([ord(name)], pa.int64()) for name in present})
    result = plan(schema, data, evolve=False)
    assert not result.changes_schema
    out = conform(data, result)
    assert sorted(out.column_names) == ["a", "b", "c", "d"]
    assert {n: out.column(n)[0].as_py() for n in "abcd"} == {
        n: (ord(n) if n in present else None) for n in "abcd"
    }
