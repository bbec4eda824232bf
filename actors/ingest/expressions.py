"""DuckDB SQL expressions over one Arrow batch, in a sandbox.

Pipelines derive and filter with DuckDB SQL *expressions* (``amount * 1.2``,
``lower(email)``, ``status <> 'test'``), never Python ``eval``. An expression is vetted
before anything runs and runs on a locked-down connection:

1. **Vet with DuckDB's own parser.** ``SELECT (<expr>) AS __v FROM t`` must parse as
   exactly one SELECT statement (``;`` is refused outright); ``json_serialize_sql`` gives
   its syntax tree, which must hold no subquery, no window function (results would
   depend on how a source is split into batches), no parameter, no table function
   (``read_csv('/etc/passwd')``) and no table but ``t``. The expression sits on its own
   lines, so a ``--`` comment in it cannot swallow the rest of the query.
2. **Run on a locked connection** (as ``actors/lake/sql.py`` does): in memory, only the
   batch registered (as ``t``), extension autoloading and Python replacement scans off,
   then ``enable_external_access = false`` and ``lock_configuration = true``, so no
   file, URL or setting is reachable even by a function the vetting did not know.
3. **Only the expression column comes back.** DuckDB computes ``(<expr>)`` next to a row
   number; Arrow keeps every other column as it was (no type round trip through DuckDB),
   and the row number proves the result lines up with the batch. An aggregate
   (``sum(x)``) fails to bind next to the row number, so it cannot shrink the batch.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.ingest.pipeline_errors import ExpressionError, UnsafeExpressionError

BATCH_TABLE = "t"
_ROW = "__dp_row"
_VALUE = "__dp_value"
_CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
}
_REFUSED_CLASSES = {
    "SUBQUERY": "subqueries are not allowed (an expression sees its own row only)",
    "WINDOW": "window functions are not allowed (their result depends on batch boundaries)",
    "PARAMETER": "query parameters ($1, ?) are not allowed",
}


@functools.lru_cache(maxsize=256)
def check_expression(expr: str) -> None:
    """Refuse ``expr`` unless it is one per-row expression over table ``t``'s columns.

    Raises ``UnsafeExpressionError`` (statements, subqueries, table functions, other
    tables) or ``ExpressionError`` (does not parse). Column names are checked when the
    expression runs, against the batch it runs on. The verdict depends on the text alone,
    so an accepted expression is remembered (a refusal raises again each time): vetting
    opens a DuckDB connection, ~15 ms, which every batch of a derive or filter paid.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise UnsafeExpressionError(expr=str(expr), reason="it is empty")
    if ";" in expr:
        raise UnsafeExpressionError(expr=expr, reason="it contains ';' (one expression only)")
    tree = _syntax_tree(expr)
    problems: list[str] = []
    _vet(tree, problems, tables=[])
    if problems:
        raise UnsafeExpressionError(expr=expr, reason=problems[0])


def evaluate_column(
    batch: pa.Table, expr: str, *, role: str, params: Mapping[str, Any] | None = None
) -> pa.ChunkedArray:
    """The value of ``expr`` for each row of ``batch``, in row order (vetted first)."""
    check_expression(expr)
    return _project(batch, f"(\n{expr}\n)", expr=expr, role=role, params=params)


def evaluate_predicate(batch: pa.Table, expr: str, *, role: str) -> pa.ChunkedArray:
    """``expr`` as a boolean per row; NULL counts as false (SQL ``WHERE`` semantics)."""
    values = evaluate_column(batch, expr, role=role)
    if not pa.types.is_boolean(values.type) and not pa.types.is_null(values.type):
        raise ExpressionError(
            expr=expr,
            role=role,
            reason=f"it gives {values.type}, not a boolean (write a comparison, e.g. x > 0)",
            available=batch.column_names,
        )
    return pc.fill_null(values.cast(pa.bool_()), False)


def hash_column(batch: pa.Table, column: str, *, salt: str, role: str) -> pa.ChunkedArray:
    """Lower-case hex SHA-256 of ``salt`` + the column's text form; nulls stay null."""
    sql = f"sha256($salt || CAST({quote(column)} AS VARCHAR))"
    return _project(batch, sql, expr=sql, role=role, params={"salt": salt})


def quote(identifier: str) -> str:
    """A DuckDB identifier in double quotes (a ``"`` doubled), safe in generated SQL."""
    return '"' + identifier.replace('"', '""') + '"'


# ---------------------------------------------------------------- vetting


def _syntax_tree(expr: str) -> Any:
    # Parsed, never run: the tree is vetted before the expression goes near data.
    query = f"SELECT (\n{expr}\n) AS __v FROM {BATCH_TABLE}"  # noqa: S608
    con = duckdb.connect(":memory:", config=dict(_CONNECT_CONFIG))
    try:
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as exc:
            raise ExpressionError(expr=expr, role="expression", reason=_first_line(exc)) from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise UnsafeExpressionError(expr=expr, reason="it is not a single expression")
        row = con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
    finally:
        con.close()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        reason = str(tree.get("error_message", "it does not parse"))
        raise ExpressionError(expr=expr, role="expression", reason=reason)
    return tree


def _vet(node: Any, problems: list[str], tables: list[str]) -> None:
    """Collect refusals anywhere in the tree; the outer ``FROM t`` is the one table."""
    if isinstance(node, list):
        for item in node:
            _vet(item, problems, tables)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class") or node.get("type")
    if kind in _REFUSED_CLASSES:
        problems.append(_REFUSED_CLASSES[kind])
    elif kind == "FUNCTION" and str(node.get("function_name", "")).lower() in _table_functions():
        name = node.get("function_name")
        problems.append(f"{name}() is a table function; expressions may not read files or tables")
    elif node.get("type") in ("BASE_TABLE", "TABLE_FUNCTION"):
        name = str(node.get("table_name") or node.get("type"))
        tables.append(name)
        if name != BATCH_TABLE or len(tables) > 1 or node.get("schema_name"):
            problems.append(f"it references table {name!r}; only the batch's columns are allowed")
    for value in node.values():
        if isinstance(value, dict | list):
            _vet(value, problems, tables)


@functools.cache
def _table_functions() -> frozenset[str]:
    con = duckdb.connect(":memory:", config=dict(_CONNECT_CONFIG))
    try:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type IN ('table', 'table_macro', 'pragma')"
        ).fetchall()
    finally:
        con.close()
    return frozenset(str(r[0]) for r in rows)


# ---------------------------------------------------------------- running


def _project(
    batch: pa.Table, sql: str, *, expr: str, role: str, params: Mapping[str, Any] | None
) -> pa.ChunkedArray:
    if _ROW in batch.column_names:
        raise ExpressionError(expr=expr, role=role, reason=f"column name {_ROW!r} is reserved")
    numbered = batch.append_column(_ROW, pa.array(np.arange(batch.num_rows, dtype=np.int64)))
    con = duckdb.connect(":memory:", config=dict(_CONNECT_CONFIG))
    try:
        con.register(BATCH_TABLE, numbered)
        _lock(con)
        query = f"SELECT {quote(_ROW)}, {sql}\n AS {quote(_VALUE)} FROM {BATCH_TABLE}"  # noqa: S608
        result = con.sql(query, params=dict(params) if params else None).to_arrow_table()
    except duckdb.Error as exc:
        raise ExpressionError(
            expr=expr, role=role, reason=_reason(exc), available=batch.column_names
        ) from None
    finally:
        con.close()
    return _aligned(result, batch.num_rows, expr=expr, role=role)


def _aligned(result: pa.Table, rows: int, *, expr: str, role: str) -> pa.ChunkedArray:
    if result.num_rows != rows:
        reason = f"it gave {result.num_rows} rows for {rows}; it must give one value per row"
        raise ExpressionError(expr=expr, role=role, reason=reason)
    numbers = result.column(0)
    expected = pa.array(np.arange(rows, dtype=np.int64))
    if rows and not pc.all(pc.equal(numbers, expected)).as_py():
        # DuckDB preserves insertion order by default; this is the belt to that braces.
        result = result.take(pc.sort_indices(numbers))
    return result.column(1)


def _lock(con: duckdb.DuckDBPyConnection) -> None:
    # The batch is registered: from here on no file, URL or extension is reachable, and
    # the expression cannot turn that back on. UTC makes now() and casts deterministic.
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _reason(exc: BaseException) -> str:
    reason = _first_line(exc)
    if "GROUP BY" in reason:
        return "it aggregates rows (sum, count, ...); derive and filter work one row at a time"
    if isinstance(exc, duckdb.PermissionException):
        return "it reaches for files, URLs or settings, which expressions may not"
    return reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
