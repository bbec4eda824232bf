"""Transforms over Arrow batches, and the sandbox their SQL expressions run in."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from pydantic import TypeAdapter, ValidationError

from actors.ingest.expressions import check_expression, evaluate_column
from actors.ingest.pipeline_errors import (
    CastFailedError,
    ColumnNotFoundError,
    ExpressionError,
    LookupTableError,
    MissingSaltError,
    UnsafeExpressionError,
)
from actors.ingest.spec import Transform
from actors.ingest.transforms import (
    REDACTED,
    TransformResult,
    apply_transforms,
    arrow_type,
    resolve_salts,
)
from cluster.errors import InvalidInputError

_STEPS = TypeAdapter(list[Transform])


def run(batch: pa.Table, *steps: dict[str, Any], **kwargs: Any) -> TransformResult:
    result = apply_transforms(batch, _STEPS.validate_python(list(steps)), **kwargs)
    assert result.rows_filtered == batch.num_rows - result.table.num_rows
    assert len(result.row_ids) == result.table.num_rows
    return result


@pytest.fixture
def orders() -> pa.Table:
    return pa.table(
        {
            "id": [1, 2, 2, 3, None],
            "email": ["a@x.io", "b@x.io", None, "c@x.io", "d@x.io"],
            "qty": ["1", "2", "3", "4", None],
            "price": [1.5, 2.0, 2.5, 3.0, 4.0],
            "status": ["ok", "test", "ok", None, "ok"],
        }
    )


# ---------------------------------------------------------------- column ops


def test_select_keeps_listed_columns_in_order(orders: pa.Table) -> None:
    result = run(orders, {"op": "select", "columns": ["price", "id"]})
    assert result.table.column_names == ["price", "id"]
    assert result.rows_filtered == 0 and result.row_ids.to_pylist() == [0, 1, 2, 3, 4]


def test_unknown_column_is_named_with_the_available_ones(orders: pa.Table) -> None:
    with pytest.raises(ColumnNotFoundError) as info:
        run(orders, {"op": "select", "columns": ["id", "nope"]})
    message = info.value.message
    assert "transforms[0] (select)" in message and "'nope'" in message
    assert "available columns: id, email, qty, price, status" in message
    assert info.value.code == "unknown_column"


def test_rename_all_at_once_and_refuses_collisions(orders: pa.Table) -> None:
    swapped = run(orders, {"op": "rename", "mapping": {"id": "price", "price": "id"}})
    assert swapped.table.column_names == ["price", "email", "qty", "id", "status"]
    assert swapped.table.column("id").to_pylist()[0] == 1.5
    with pytest.raises(InvalidInputError, match="already has a column 'price'"):
        run(orders, {"op": "rename", "mapping": {"id": "price"}})


def test_cast_to_lake_types(orders: pa.Table) -> None:
    batch = orders.append_column("ts", pa.array(["2026-01-02 03:04:05"] * 5))
    batch = batch.append_column("amount", pa.array(["1.25", "2", "3.10", None, "0"]))
    result = run(
        batch,
        {
            "op": "cast",
            "columns": {"qty": "long", "ts": "timestamptz", "amount": "decimal(10, 2)"},
        },
    )
    table = result.table
    assert table.schema.field("qty").type == pa.int64()
    assert table.column("qty").to_pylist() == [1, 2, 3, 4, None]
    assert table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert table.column("ts")[0].as_py() == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert table.column("amount")[0].as_py() == Decimal("1.25")
    assert table.column_names == batch.column_names  # cast in place


def test_cast_failure_names_column_example_and_type(orders: pa.Table) -> None:
    batch = orders.set_column(2, "qty", pa.array(["1", "2", "3", "x4", "5"]))
    with pytest.raises(CastFailedError) as info:
        run(batch, {"op": "cast", "columns": {"qty": "int"}})
    message = info.value.message
    assert "transforms[0] (cast)" in message
    assert "column 'qty'" in message and "'x4'" in message and "int" in message
    assert info.value.fields["example"] == "x4"


def test_arrow_types_of_lake_type_names() -> None:
    assert arrow_type("string") == pa.string()
    assert arrow_type("bigint") == pa.int64()
    assert arrow_type("decimal(12, 2)") == pa.decimal128(12, 2)
    assert arrow_type("timestamptz") == pa.timestamp("us", tz="UTC")


def test_derive_adds_or_replaces_a_column(orders: pa.Table) -> None:
    result = run(
        orders,
        {"op": "derive", "column": "total", "expr": "CAST(qty AS INTEGER) * price"},
        {"op": "derive", "column": "email", "expr": "upper(email)"},
    )
    assert result.table.column("total").to_pylist() == [1.5, 4.0, 7.5, 12.0, None]
    assert result.table.column("email").to_pylist()[0] == "A@X.IO"
    assert result.table.column_names == [*orders.column_names, "total"]


def test_derive_keeps_other_columns_types(orders: pa.Table) -> None:
    batch = orders.set_column(1, "email", orders.column("email").cast(pa.large_string()))
    result = run(batch, {"op": "derive", "column": "n", "expr": "id + 1"})
    assert result.table.schema.field("email").type == pa.large_string()


def test_derive_with_unknown_column_lists_available(orders: pa.Table) -> None:
    with pytest.raises(ExpressionError) as info:
        run(orders, {"op": "derive", "column": "x", "expr": "nope * 2"})
    assert "transforms[0] (derive)" in info.value.message
    assert "nope" in info.value.message and "id, email, qty, price, status" in info.value.message


def test_mask_hash_is_sha256_of_salt_and_value(orders: pa.Table) -> None:
    plain = run(orders, {"op": "mask", "columns": ["email"]}).table.column("email")
    assert plain[0].as_py() == hashlib.sha256(b"a@x.io").hexdigest()
    assert plain[2].as_py() is None  # null stays null
    salted = run(
        orders,
        {"op": "mask", "columns": ["email"], "salt_env": "EMAIL_SALT"},
        salts={"EMAIL_SALT": "pepper"},
    ).table.column("email")
    assert salted[0].as_py() == hashlib.sha256(b"peppera@x.io").hexdigest()


def test_mask_hash_of_a_number_hashes_its_text(orders: pa.Table) -> None:
    masked = run(orders, {"op": "mask", "columns": ["id"]}).table.column("id")
    assert masked.type == pa.string()
    assert masked[0].as_py() == hashlib.sha256(b"1").hexdigest()


def test_mask_redact(orders: pa.Table) -> None:
    masked = run(orders, {"op": "mask", "columns": ["email", "id"], "method": "redact"}).table
    assert masked.column("email").to_pylist() == [REDACTED, REDACTED, None, REDACTED, REDACTED]
    assert masked.column("id").to_pylist() == [REDACTED] * 4 + [None]


def test_salts_come_from_the_environment_given(orders: pa.Table) -> None:
    steps = _STEPS.validate_python([{"op": "mask", "columns": ["email"], "salt_env": "S1"}])
    assert resolve_salts(steps, {"S1": "x", "OTHER": "y"}) == {"S1": "x"}
    with pytest.raises(MissingSaltError, match="S1"):
        resolve_salts(steps, {})
    with pytest.raises(MissingSaltError, match="transforms\\[0\\] \\(mask\\)"):
        apply_transforms(orders, steps)


# ---------------------------------------------------------------- row ops


def test_filter_counts_dropped_rows_and_null_drops(orders: pa.Table) -> None:
    result = run(orders, {"op": "filter", "expr": "status <> 'test'"})
    assert result.table.column("id").to_pylist() == [1, 2, None]  # NULL status dropped too
    assert result.rows_filtered == 2
    assert result.row_ids.to_pylist() == [0, 2, 4]


def test_filter_needs_a_boolean(orders: pa.Table) -> None:
    with pytest.raises(ExpressionError, match="not a boolean"):
        run(orders, {"op": "filter", "expr": "price * 2"})


@pytest.mark.parametrize(("keep", "kept"), [("first", [0, 1, 3, 4]), ("last", [0, 2, 3, 4])])
def test_dedupe_counts_dropped_duplicates(orders: pa.Table, keep: str, kept: list[int]) -> None:
    result = run(orders, {"op": "dedupe", "keys": ["id"], "keep": keep})
    assert result.rows_filtered == 1
    assert result.row_ids.to_pylist() == kept
    assert result.table.column("price").to_pylist() == [
        orders.column("price")[i].as_py() for i in kept
    ]


def test_dedupe_on_several_keys_treats_nulls_as_one_key() -> None:
    batch = pa.table({"a": [1, 1, None, None], "b": ["x", "x", None, None]})
    result = run(batch, {"op": "dedupe", "keys": ["a", "b"]})
    assert result.row_ids.to_pylist() == [0, 2] and result.rows_filtered == 2


def test_row_ids_follow_rows_through_several_steps(orders: pa.Table) -> None:
    result = run(
        orders,
        {"op": "filter", "expr": "price >= 2"},
        {"op": "dedupe", "keys": ["id"], "keep": "last"},
        {"op": "select", "columns": ["price"]},
    )
    assert result.row_ids.to_pylist() == [2, 3, 4]
    assert result.table.column("price").to_pylist() == [2.5, 3.0, 4.0]
    assert result.rows_filtered == 2


# ---------------------------------------------------------------- lookup


@pytest.fixture
def customers() -> pa.Table:
    return pa.table({"id": pa.array([3, 1], pa.int32()), "segment": ["gold", "retail"]})


def test_lookup_left_keeps_order_and_unmatched_rows(orders: pa.Table, customers: pa.Table) -> None:
    asked: list[str] = []

    def reader(name: str) -> pa.Table:
        asked.append(name)
        return customers

    step = {"op": "lookup", "table": "ref.customers", "on": ["id"], "columns": ["segment"]}
    result = run(orders, step, lookup=reader)
    assert asked == ["ref.customers"]
    assert result.table.column("segment").to_pylist() == ["retail", None, None, "gold", None]
    assert result.table.column("id").to_pylist() == orders.column("id").to_pylist()
    assert result.rows_filtered == 0


def test_lookup_inner_drops_unmatched_rows(orders: pa.Table, customers: pa.Table) -> None:
    step = {"op": "lookup", "table": "ref.c", "on": ["id"], "columns": ["segment"], "how": "inner"}
    result = run(orders, step, lookup=lambda _name: customers)
    assert result.row_ids.to_pylist() == [0, 3]
    assert result.table.column("segment").to_pylist() == ["retail", "gold"]
    assert result.rows_filtered == 3


def test_lookup_refuses_a_table_with_repeated_keys(orders: pa.Table) -> None:
    dupes = pa.table({"id": [1, 1], "segment": ["a", "b"]})
    step = {"op": "lookup", "table": "ref.c", "on": ["id"], "columns": ["segment"]}
    with pytest.raises(LookupTableError, match=r"1 keys with several rows \(e.g. \{'id': 1\}\)"):
        run(orders, step, lookup=lambda _name: dupes)


def test_lookup_errors_name_what_is_wrong(orders: pa.Table, customers: pa.Table) -> None:
    step = {"op": "lookup", "table": "ref.c", "on": ["id"], "columns": ["tier"]}
    with pytest.raises(ColumnNotFoundError, match=r"'tier'.*available columns: id, segment"):
        run(orders, step, lookup=lambda _name: customers)
    with pytest.raises(LookupTableError, match="no lookup reader"):
        run(orders, {**step, "columns": ["segment"]})
    clash = {**step, "columns": ["segment"]}
    with pytest.raises(InvalidInputError, match="already has these columns"):
        run(orders.append_column("segment", pa.nulls(5)), clash, lookup=lambda _n: customers)


# ---------------------------------------------------------------- the sandbox


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("read_csv('/etc/passwd')", "table function"),
        ("(SELECT 1 FROM other)", "subqueries"),
        ("id IN (SELECT id FROM t)", "subqueries"),
        ("1; DROP TABLE t", "';'"),
        ("1;", "';'"),
        ("sum(price) OVER ()", "window"),
        ("$1 + 1", "parameters"),
        ("", "empty"),
    ],
)
def test_sandbox_refuses_escapes(expr: str, words: str) -> None:
    with pytest.raises(UnsafeExpressionError, match="not allowed") as info:
        check_expression(expr)
    assert words in info.value.message


def test_sandbox_refuses_at_load_and_at_run(orders: pa.Table) -> None:
    with pytest.raises(ValidationError, match="table function"):
        _STEPS.validate_python([{"op": "derive", "column": "x", "expr": "read_csv('/etc/passwd')"}])
    with pytest.raises(UnsafeExpressionError):
        evaluate_column(orders, "(SELECT 1 FROM other)", role="test")


def test_sandbox_refuses_what_breaks_out_of_the_parentheses(orders: pa.Table) -> None:
    with pytest.raises(ExpressionError, match="syntax error"):
        check_expression("1) AS v FROM other --")
    assert evaluate_column(orders, "id -- a comment", role="t").to_pylist()[0] == 1


def test_aggregates_cannot_shrink_the_batch(orders: pa.Table) -> None:
    with pytest.raises(ExpressionError, match="aggregates rows"):
        run(orders, {"op": "derive", "column": "x", "expr": "sum(price)"})


def test_the_connection_is_locked_down(orders: pa.Table) -> None:
    access = evaluate_column(orders, "current_setting('enable_external_access')", role="t")
    locked = evaluate_column(orders, "current_setting('lock_configuration')", role="t")
    assert set(access.to_pylist()) == {False} and set(locked.to_pylist()) == {True}


def test_expressions_see_one_row_and_keep_order() -> None:
    batch = pa.table({"n": list(range(10_000))})
    doubled = evaluate_column(batch, "n * 2", role="t")
    assert doubled.to_pylist() == [n * 2 for n in range(10_000)]


def test_empty_batch_passes_through(orders: pa.Table) -> None:
    empty = orders.slice(0, 0)
    result = run(
        empty,
        {"op": "derive", "column": "t", "expr": "price * 2"},
        {"op": "filter", "expr": "price > 1"},
        {"op": "dedupe", "keys": ["id"]},
        {"op": "mask", "columns": ["email"]},
    )
    assert result.table.num_rows == 0 and result.rows_filtered == 0
    assert "t" in result.table.column_names
