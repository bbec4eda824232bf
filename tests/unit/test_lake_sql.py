"""Lake SQL: read-only DuckDB over Arrow, with row, byte and time limits and typed refusals."""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa
import pytest

from actors.lake.sql import parse_query, referenced_tables, run_sql
from actors.lake.sql_errors import (
    QueryTimeoutError,
    ResultTooLargeError,
    SqlError,
    StatementNotAllowedError,
    UnknownTableError,
)
from cluster.errors import InvalidInputError, NotFoundError

CUSTOMERS = pa.table({"id": [1, 2, 3], "name": ["ada", "bob", "cy"]})
ORDERS = pa.table({"customer_id": [1, 1, 2, 9], "amount": [10.0, 5.5, 7.25, 1.0]})
LIMITS = {"row_limit": 1000, "timeout_s": 10.0, "max_result_bytes": 10_000_000}


def _stream(
    table: pa.Table, calls: list[str] | None = None, name: str = ""
) -> Callable[[], pa.RecordBatchReader]:
    def factory() -> pa.RecordBatchReader:
        if calls is not None:
            calls.append(name)
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))

    return factory


@pytest.fixture
def tables() -> dict[str, Callable[[], pa.Table | pa.RecordBatchReader]]:
    return {"shop.customers": _stream(CUSTOMERS), "shop.orders": lambda: ORDERS}


def test_join_across_two_tables(tables: dict) -> None:
    result = run_sql(
        "SELECT c.name, o.amount FROM shop.customers c JOIN shop.orders o "
        "ON o.customer_id = c.id ORDER BY o.amount",
        tables,
        **LIMITS,
    )
    assert result.to_pylist() == [
        {"name": "ada", "amount": 5.5},
        {"name": "bob", "amount": 7.25},
        {"name": "ada", "amount": 10.0},
    ]


def test_aggregate_with_cte_and_values(tables: dict) -> None:
    result = run_sql(
        "WITH totals AS (SELECT customer_id, sum(amount) AS total FROM shop.orders GROUP BY 1) "
        "SELECT c.name, t.total FROM totals t JOIN shop.customers c ON c.id = t.customer_id "
        "ORDER BY c.name",
        tables,
        **LIMITS,
    )
    assert result.to_pylist() == [{"name": "ada", "total": 15.5}, {"name": "bob", "total": 7.25}]
    assert run_sql("VALUES (1, 'x')", tables, **LIMITS).num_rows == 1
    assert run_sql("FROM shop.customers", tables, **LIMITS).num_rows == 3


def test_only_referenced_tables_are_opened() -> None:
    calls: list[str] = []
    tables = {
        "shop.customers": _stream(CUSTOMERS, calls, "customers"),
        "shop.orders": _stream(ORDERS, calls, "orders"),
    }
    run_sql("SELECT count(*) FROM shop.orders", tables, **LIMITS)
    assert calls == ["orders"]


def test_self_join_of_a_stream_reads_it_as_a_table() -> None:
    calls: list[str] = []
    tables = {"shop.customers": _stream(CUSTOMERS, calls, "c")}
    result = run_sql(
        "SELECT count(*) AS n FROM shop.customers a JOIN shop.customers b ON a.id = b.id",
        tables,
        **LIMITS,
    )
    assert result.to_pylist() == [{"n": 3}]
    assert calls == ["c"]


def test_a_stream_rescanned_by_duckdb_is_run_again_materialised() -> None:
    # A recursive CTE re-evaluates its subquery: the first run finds the stream spent.
    calls: list[str] = []
    tables = {"shop.customers": _stream(CUSTOMERS, calls, "c")}
    result = run_sql(
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r "
        "WHERE n < (SELECT count(*) FROM shop.customers)) SELECT n FROM r ORDER BY n",
        tables,
        **LIMITS,
    )
    assert result.column("n").to_pylist() == [1, 2, 3]
    assert calls == ["c", "c"]


def test_referenced_tables_skips_ctes_and_dedupes_case_insensitively() -> None:
    query = (
        "WITH recent AS (SELECT * FROM shop.orders) SELECT * FROM recent "
        "JOIN SHOP.Orders USING (customer_id) "
        "WHERE customer_id IN (SELECT id FROM shop.customers)"
    )
    assert referenced_tables(query) == ["shop.orders", "shop.customers"]
    assert parse_query(query).references["shop.orders"] == 2
    assert referenced_tables("SELECT * FROM range(3)") == []


def test_table_names_match_case_insensitively(tables: dict) -> None:
    assert run_sql("SELECT count(*) AS n FROM SHOP.CUSTOMERS", tables, **LIMITS).num_rows == 1


def test_unknown_table_lists_the_known_ones(tables: dict) -> None:
    with pytest.raises(UnknownTableError) as info:
        run_sql("SELECT * FROM shop.nope", tables, **LIMITS)
    assert isinstance(info.value, NotFoundError)
    assert "shop.nope" in info.value.message
    assert "shop.customers, shop.orders" in info.value.message


def test_row_limit(tables: dict) -> None:
    assert run_sql("SELECT * FROM range(5)", tables, **{**LIMITS, "row_limit": 5}).num_rows == 5
    with pytest.raises(ResultTooLargeError) as info:
        run_sql("SELECT * FROM range(1000000000)", tables, **{**LIMITS, "row_limit": 5})
    assert "5 rows" in info.value.message
    assert "add LIMIT or aggregate" in info.value.message
    assert info.value.http_status == 422


def test_byte_limit(tables: dict) -> None:
    with pytest.raises(ResultTooLargeError) as info:
        run_sql(
            "SELECT repeat('x', 1000) AS s FROM range(1000)",
            tables,
            **{**LIMITS, "max_result_bytes": 100_000},
        )
    assert "100000 bytes" in info.value.message
    assert "fewer columns" in info.value.message


def test_timeout_interrupts_a_slow_query(tables: dict) -> None:
    started = time.perf_counter()
    with pytest.raises(QueryTimeoutError) as info:
        run_sql(
            "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b",
            tables,
            **{**LIMITS, "timeout_s": 0.3},
        )
    assert time.perf_counter() - started < 5
    assert "0.3 s" in info.value.message
    assert info.value.code == "query_timeout"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("COPY shop.orders TO '/tmp/out.csv'", "COPY"),
        ("ATTACH '/tmp/other.db' AS other", "ATTACH"),
        ("INSTALL httpfs", "INSTALL"),
        ("LOAD httpfs", "LOAD"),
        ("PRAGMA version", "PRAGMA"),
        ("SET threads = 1", "SET"),
        ("CREATE TABLE x AS SELECT 1", "CREATE"),
        ("INSERT INTO shop.orders VALUES (1, 2.0)", "INSERT"),
        ("DROP TABLE shop.orders", "DROP"),
        ("EXPLAIN SELECT 1", "EXPLAIN"),
        ("CALL pragma_version()", "CALL"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv"),
        ("SELECT * FROM read_parquet('/tmp/*.parquet')", "read_parquet"),
        ("SELECT * FROM glob('/etc/*')", "glob"),
        (
            "SELECT * FROM shop.orders "
            "WHERE customer_id IN (SELECT 1 FROM read_text('/etc/passwd'))",
            "read_text",
        ),
        ("SELECT 1; SELECT 2", "2 statements"),
    ],
)
def test_refused_statements_name_what_was_refused(tables: dict, query: str, named: str) -> None:
    with pytest.raises(StatementNotAllowedError) as info:
        run_sql(query, tables, **LIMITS)
    assert named in info.value.message
    assert "not allowed" in info.value.message


def test_a_file_path_as_a_table_is_an_unknown_table(tables: dict) -> None:
    with pytest.raises(UnknownTableError, match="/etc/passwd"):
        run_sql("SELECT * FROM '/etc/passwd'", tables, **LIMITS)


def test_bad_sql_names_duckdbs_reason_and_the_query(tables: dict) -> None:
    with pytest.raises(SqlError) as info:
        run_sql("SELEC * FROM shop.orders", tables, **LIMITS)
    assert "syntax error" in info.value.message
    assert "SELEC * FROM shop.orders" in info.value.message
    assert "\n" not in info.value.message
    with pytest.raises(SqlError, match="nope"):
        run_sql("SELECT nope FROM shop.orders", tables, **LIMITS)
    with pytest.raises(SqlError, match="empty"):
        run_sql("   ", tables, **LIMITS)


def test_runtime_errors_are_sql_errors(tables: dict) -> None:
    with pytest.raises(SqlError, match="boom"):
        run_sql(
            "SELECT CASE WHEN range > 500000 THEN error('boom') ELSE range END FROM range(1000000)",
            tables,
            **{**LIMITS, "row_limit": 2_000_000},
        )


def test_limits_are_validated(tables: dict) -> None:
    with pytest.raises(InvalidInputError, match="row_limit"):
        run_sql("SELECT 1", tables, **{**LIMITS, "row_limit": 0})
    with pytest.raises(InvalidInputError, match="timeout_s"):
        run_sql("SELECT 1", tables, **{**LIMITS, "timeout_s": 0})


def test_result_keeps_arrow_types(tables: dict) -> None:
    result = run_sql("SELECT * FROM shop.customers ORDER BY id", tables, **LIMITS)
    assert result.schema.field("id").type == pa.int64()
    assert result.column("name").to_pylist() == ["ada", "bob", "cy"]
