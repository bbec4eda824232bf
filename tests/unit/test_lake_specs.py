"""The Lake's small languages and its retry loop, as pure functions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection
from pyiceberg.transforms import BucketTransform, DayTransform, IdentityTransform, TruncateTransform
from pyiceberg.types import DecimalType, LongType, NestedField, StringType, TimestampType

from actors.lake.commits import RetryPolicy, backoff_s, run_with_retries
from actors.lake.errors import CommitConflictError, InvalidFilterError, UnknownColumnError
from actors.lake.filters import parse_filter, referenced_columns
from actors.lake.specs import (
    TableName,
    parse_partition_spec,
    parse_sort_order,
    parse_table_name,
    parse_type,
)
from cluster.errors import InvalidInputError

T = "default.t"
SCHEMA = Schema(
    NestedField(1, "id", LongType()),
    NestedField(2, "ts", TimestampType()),
    NestedField(3, "name", StringType()),
)


# --- names and types --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("events", TableName("default", "events")), ("sales.orders", TableName("sales", "orders"))],
)
def test_table_names(text: str, parsed: TableName) -> None:
    assert parse_table_name(text) == parsed
    assert parse_table_name(text).full == f"{parsed.namespace}.{parsed.table}"


@pytest.mark.parametrize("bad", ["", "a.b.c", "1abc", "a..b", "sales.", "drop table;", "a/b"])
def test_bad_table_names_are_refused_with_the_form(bad: str) -> None:
    with pytest.raises(InvalidInputError, match=r"namespace\.table"):
        parse_table_name(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("long", LongType()), ("BIGINT", LongType()), ("int64", LongType()), ("str", StringType())],
)
def test_type_names_and_aliases(text: str, expected: object) -> None:
    assert parse_type(text) == expected


def test_decimal_type_and_unknown_type() -> None:
    assert parse_type("decimal(12, 2)") == DecimalType(12, 2)
    with pytest.raises(InvalidInputError, match=r"'varchar'.*long"):
        parse_type("varchar")


# --- partitions and sort orders ---------------------------------------------------------


def test_partition_tokens() -> None:
    spec = parse_partition_spec(
        ["day(ts)", "bucket(16, id)", "name", "truncate(4, name)"], SCHEMA, T
    )
    assert [(f.name, f.source_id, f.field_id) for f in spec.fields] == [
        ("ts_day", 2, 1000),
        ("id_bucket", 1, 1001),
        ("name", 3, 1002),
        ("name_trunc", 3, 1003),
    ]
    assert [f.transform for f in spec.fields] == [
        DayTransform(),
        BucketTransform(16),
        IdentityTransform(),
        TruncateTransform(4),
    ]


@pytest.mark.parametrize("bad", ["daily(ts)", "bucket(id)", "bucket(0, id)", "day(1, ts)", "ts)"])
def test_a_bad_partition_token_is_named_with_the_forms(bad: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_partition_spec([bad], SCHEMA, T)
    assert repr(bad) in info.value.message and "bucket(N, column)" in info.value.message


def test_a_transform_that_cannot_apply_to_the_column_is_refused() -> None:
    with pytest.raises(InvalidInputError, match=r"day\(id\).*long"):
        parse_partition_spec(["day(id)"], SCHEMA, T)


def test_a_partition_on_an_unknown_column_lists_the_columns() -> None:
    with pytest.raises(UnknownColumnError, match=r"'region'.*id, name, ts"):
        parse_partition_spec(["region"], SCHEMA, T)


def test_sort_tokens_default_null_order_like_iceberg() -> None:
    order = parse_sort_order(
        ["ts", "id desc", "name asc nulls last", "day(ts) desc nulls first"], SCHEMA, T
    )
    assert [(f.source_id, f.direction, f.null_order) for f in order.fields] == [
        (2, SortDirection.ASC, NullOrder.NULLS_FIRST),
        (1, SortDirection.DESC, NullOrder.NULLS_LAST),
        (3, SortDirection.ASC, NullOrder.NULLS_LAST),
        (2, SortDirection.DESC, NullOrder.NULLS_FIRST),
    ]
    assert parse_sort_order([], SCHEMA, T).is_unsorted


@pytest.mark.parametrize("bad", ["id downwards", "id desc nulls", "id nulls middle"])
def test_a_bad_sort_token_is_named(bad: str) -> None:
    with pytest.raises(InvalidInputError, match=repr(bad).replace("(", r"\(")):
        parse_sort_order([bad], SCHEMA, T)


# --- filters ----------------------------------------------------------------------------


def test_referenced_columns_walks_the_whole_expression() -> None:
    expression = parse_filter(
        "id > 1 and (name = 'x' or not ts is null) or id in (1, 2)", SCHEMA, T
    )
    assert list(referenced_columns(expression)) == ["id", "name", "ts", "id"]


def test_a_blank_filter_is_every_row() -> None:
    assert str(parse_filter("  ", SCHEMA, T)) == "AlwaysTrue()"


def test_an_unparseable_filter_says_where() -> None:
    with pytest.raises(InvalidFilterError, match=r"'id >>> 1'.*column 1") as info:
        parse_filter("id >>> 1", SCHEMA, T)
    assert len(info.value.message) < 300


def test_a_literal_of_the_wrong_type_is_an_invalid_filter() -> None:
    with pytest.raises(InvalidFilterError, match="Invalid timestamp"):
        parse_filter("ts > 'yesterday'", SCHEMA, T)


# --- retries ----------------------------------------------------------------------------


@given(st.integers(1, 30), st.integers(0, 2**32))
def test_backoff_is_jittered_within_half_to_full_of_the_capped_exponential(
    attempt: int, seed: int
) -> None:
    policy = RetryPolicy(retries=50, base_s=0.05, max_s=2.0)
    cap = min(2.0, 0.05 * 2 ** (attempt - 1))
    assert cap / 2 <= backoff_s(attempt, policy, random.Random(seed)) <= cap


def test_lost_commits_are_retried_with_growing_waits() -> None:
    waits: list[float] = []
    failures = iter([True, True, False])

    def operation() -> str:
        if next(failures):
            raise CommitFailedException("branch main has changed")
        return "done"

    result = run_with_retries(
        T, operation, RetryPolicy(5), sleep=waits.append, rng=random.Random(1)
    )
    assert result == ("done", 3)
    assert len(waits) == 2 and waits[0] < waits[1]


def test_exhausted_retries_name_the_table_and_the_attempts() -> None:
    def operation() -> None:
        raise CommitFailedException("branch main has changed")

    with pytest.raises(CommitConflictError) as info:
        run_with_retries(T, operation, RetryPolicy(2), sleep=lambda _s: None, rng=random.Random())
    assert info.value.fields == {"table": T, "attempts": 3}
    assert "branch main has changed" in info.value.message


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def operation() -> None:
        calls.append(1)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run_with_retries(T, operation, RetryPolicy(5), sleep=lambda _s: None, rng=random.Random())
    assert calls == [1]
