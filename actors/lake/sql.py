"""Read-only SQL over Lake tables: DuckDB on Arrow scans, with row, byte and time limits.

How a query runs:

1. **Parse with DuckDB itself.** ``extract_statements`` must give exactly one statement
   of type SELECT (which covers ``WITH``, ``VALUES``, ``FROM t``, ``DESCRIBE``); anything
   else (COPY, ATTACH, INSTALL/LOAD, PRAGMA, SET, CREATE, EXPLAIN, CALL, ...) is refused
   by its keyword. ``json_serialize_sql`` then gives the syntax tree, and a walk over it
   collects every ``BASE_TABLE`` (minus CTE names) and every table function. Using
   DuckDB's own parser means quoting, comments, subqueries and CTEs are read exactly as
   DuckDB will read them; a regex over SQL text would not be.
2. **Only allow-listed table functions** (``range``, ``generate_series``, ``unnest``):
   ``read_csv('/etc/passwd')``, ``glob``, ``query_table``, ``duckdb_settings()`` are
   refused by name before anything runs.
3. **Register only the referenced tables**, each under its Lake name: an Arrow object
   is registered under a hidden name and ``CREATE SCHEMA ns; CREATE VIEW ns.t AS SELECT
   * FROM hidden`` makes ``ns.t`` resolve with no rewriting of the user's SQL. A table
   referenced once is registered as the caller's stream (a ``RecordBatchReader`` lets
   DuckDB project and filter batch by batch); one referenced twice (self-join) is read
   into a ``pa.Table`` first, because a reader can be scanned once only. Should DuckDB
   still rescan a stream (a CTE inlined twice), it says so and the query is run again
   with every table materialised: factories may therefore be called twice and must
   return the same snapshot.
4. **Lock the connection**: ``enable_external_access=false`` (no files, no network),
   Python replacement scans and extension autoloading off, then ``lock_configuration``.
5. **Stream the result** in batches of at most ``row_limit + 1`` rows, counting rows
   and bytes; the first batch over a limit stops the query with ``ResultTooLargeError``.
6. **Timeout**: a watchdog thread calls ``con.interrupt()`` once ``timeout_s`` has
   passed (and again every 50 ms, since an interrupt that lands between two DuckDB calls
   is lost), turning the interruption into ``QueryTimeoutError``.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from actors.lake.native import ParquetFiles
from actors.lake.sql_errors import (
    QueryTimeoutError,
    ResultTooLargeError,
    SqlError,
    StatementNotAllowedError,
    UnknownTableError,
)
from cluster.errors import InvalidInputError

TableSource = Callable[[], pa.Table | pa.RecordBatchReader | ParquetFiles]
ALLOWED_TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest"})
_MAX_BATCH_ROWS = 131_072
_REINTERRUPT_S = 0.05
_CONSUMED_MARKER = "already been consumed"
_CONNECT_CONFIG = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "python_enable_replacements": False,
}


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """What a query reads: Lake tables (as written, first use first) and table functions."""

    tables: tuple[str, ...]
    references: Mapping[str, int]  # lower-cased table name -> times it appears
    table_functions: tuple[str, ...]
    # Lower-cased identifiers of every column reference: a superset of the columns the
    # query reads; None when it may read columns it does not name (a *, a NATURAL or
    # USING join, a whole-row reference, a construct the walk does not know).
    columns: frozenset[str] | None = None


def referenced_tables(query: str) -> list[str]:
    """The Lake tables ``query`` reads, as written in it, each once, in order of first use.

    Validates the query on the way (one read-only statement, allowed table functions), so
    the Lake actor can resolve snapshot ids for the cache key before running anything.
    """
    return list(parse_query(query).tables)


@functools.lru_cache(maxsize=256)
def parse_query(query: str) -> ParsedQuery:
    """Parse and vet ``query``; raise ``SqlError`` or ``StatementNotAllowedError``.

    Cached (a pure function of the text): ``LakeService.sql`` parses a query to find its
    tables, then ``run_sql`` parses it again to run it.
    """
    tree = _syntax_tree(query)
    tables: list[tuple[str, ...]] = []
    ctes: set[str] = set()
    functions: list[str] = []
    _walk(tree, tables, ctes, functions)
    columns = _columns(tree)
    refused = sorted({f for f in functions if f not in ALLOWED_TABLE_FUNCTIONS})
    if refused:
        raise StatementNotAllowedError(
            statement=f"the table function {refused[0]}()",
            query=query,
            fix="read Lake tables by name (namespace.table); the only table functions "
            f"allowed are {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}",
        )
    names = [".".join(parts) for parts in tables if not _is_cte(parts, ctes)]
    first_spelling: dict[str, str] = {}
    for name in names:  # DuckDB folds identifier case, so NS.T and ns.t are one table
        first_spelling.setdefault(name.lower(), name)
    counts = Counter(name.lower() for name in names)
    return ParsedQuery(tuple(first_spelling.values()), dict(counts), tuple(functions), columns)


def run_sql(
    query: str,
    tables: Mapping[str, TableSource],
    *,
    row_limit: int,
    timeout_s: float,
    max_result_bytes: int,
) -> pa.Table:
    """Run one read-only query over ``tables`` (Lake name -> Arrow factory) and return Arrow.

    Raises ``SqlError`` (bad SQL), ``StatementNotAllowedError`` (not a read-only query),
    ``UnknownTableError`` (a name not in ``tables``), ``ResultTooLargeError`` (over
    ``row_limit`` rows or ``max_result_bytes`` bytes) and ``QueryTimeoutError``.
    """
    _check_limits(row_limit, timeout_s, max_result_bytes)
    parsed = parse_query(query)
    chosen = _resolve(parsed.tables, tables)
    limits = _Limits(row_limit, timeout_s, max_result_bytes)
    try:
        return _execute(query, chosen, parsed.references, limits, materialize_all=False)
    except _StreamRescanned:
        return _execute(query, chosen, parsed.references, limits, materialize_all=True)


# ---------------------------------------------------------------- parsing


_parser_lock = threading.Lock()
_parsers: list[duckdb.DuckDBPyConnection] = []


def _parser_connection() -> duckdb.DuckDBPyConnection:
    """The process's parse-only connection (opening one costs ~13 ms); use under the lock.

    Statements are only split and serialised on it, never run, so it holds no data.
    """
    if not _parsers:
        _parsers.append(duckdb.connect(":memory:", config=dict(_CONNECT_CONFIG)))
    return _parsers[0]


def _syntax_tree(query: str) -> Any:
    if not query.strip():
        raise SqlError(query=query, reason="the query is empty")
    with _parser_lock:
        con = _parser_connection()
        try:
            statements = con.extract_statements(query)
        except duckdb.Error as exc:
            raise SqlError(query=query, reason=_parse_reason(exc)) from None
        _check_statements(query, statements)
        row = con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True, "error_message": "no syntax tree"}
    if tree.get("error"):
        raise SqlError(query=query, reason=str(tree.get("error_message", "cannot parse")))
    return tree


def _check_statements(query: str, statements: list[Any]) -> None:
    if not statements:
        raise SqlError(query=query, reason="the query is empty")
    if len(statements) > 1:
        raise StatementNotAllowedError(
            statement=f"a script of {len(statements)} statements",
            query=query,
            fix="send exactly one query, without ';'-separated extra statements",
        )
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        words = statement.query.strip().split(maxsplit=1)
        keyword = words[0].upper() if words else statement.type.name
        raise StatementNotAllowedError(statement=f"the {keyword} statement", query=query)


def _walk(node: Any, tables: list[tuple[str, ...]], ctes: set[str], functions: list[str]) -> None:
    """Collect table references, CTE names and table functions anywhere in the tree."""
    if isinstance(node, list):
        for item in node:
            _walk(item, tables, ctes, functions)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "BASE_TABLE":
        parts = (node.get("catalog_name"), node.get("schema_name"), node.get("table_name"))
        tables.append(tuple(str(p) for p in parts if p))
    elif kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
        functions.append(str(node["function"].get("function_name", "")).lower())
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict):
        ctes.update(str(item.get("key", "")).lower() for item in cte_map.get("map", []))
    for value in node.values():
        if isinstance(value, dict | list):
            _walk(value, tables, ctes, functions)


# Expression classes whose column needs a walk sees in full; anything else (a *, COLUMNS(),
# a lambda, a parameter) makes the query read every column.
_PRUNABLE_CLASSES = frozenset(
    {"COLUMN_REF", "FUNCTION", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR"}
    | {"CASE", "CAST", "BETWEEN", "WINDOW", "SUBQUERY", "AGGREGATE", "COLLATE"}
)
_ROW_PREFIX = "\0"  # marks a one-part column reference, which may name a whole row


def _columns(tree: Any) -> frozenset[str] | None:
    """Every identifier of every column reference (lower-cased), or None: read all."""
    names: set[str] = set()
    relations: set[str] = set()
    if not _collect_columns(tree, names, relations):
        return None
    if any(_ROW_PREFIX + relation in names for relation in relations):
        return None  # `SELECT t FROM ns.t t` reads the whole row as a struct
    return frozenset(n for n in names if not n.startswith(_ROW_PREFIX))


def _collect_columns(node: Any, names: set[str], relations: set[str]) -> bool:
    """Add ``node``'s column references to ``names``; False if it may read unnamed ones."""
    if isinstance(node, list):
        return all(_collect_columns(item, names, relations) for item in node)
    if not isinstance(node, dict):
        return True
    klass, kind = node.get("class"), node.get("type")
    if klass is not None and klass not in _PRUNABLE_CLASSES:
        return False
    if klass == "COLUMN_REF":
        parts = [str(part).lower() for part in node.get("column_names", [])]
        names.update(parts)
        if len(parts) == 1:
            names.add(_ROW_PREFIX + parts[0])
    elif kind == "JOIN" and (node.get("ref_type") != "REGULAR" or node.get("using_columns")):
        return False  # NATURAL, USING, ASOF, POSITIONAL joins match on columns not named
    elif kind in ("BASE_TABLE", "SUBQUERY", "TABLE_FUNCTION"):
        relations.update(str(node[k]).lower() for k in ("alias", "table_name") if node.get(k))
    return all(
        _collect_columns(value, names, relations)
        for value in node.values()
        if isinstance(value, dict | list)
    )


def _is_cte(parts: tuple[str, ...], ctes: set[str]) -> bool:
    return len(parts) == 1 and parts[0].lower() in ctes


def _parse_reason(exc: BaseException) -> str:
    reason = _first_line(exc)
    if 'near "default"' in reason.lower():
        # Tables land in namespace `default`, which is also an SQL keyword.
        reason += (
            '; DEFAULT is an SQL keyword: quote the namespace ("default".orders) '
            "or name the table alone (orders)"
        )
    return reason


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------- resolution


def _check_limits(row_limit: int, timeout_s: float, max_result_bytes: int) -> None:
    if isinstance(row_limit, bool) or not isinstance(row_limit, int) or row_limit < 1:
        raise InvalidInputError(field="row_limit", value=row_limit, allowed="an int >= 1")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float):
        raise InvalidInputError(field="timeout_s", value=timeout_s, allowed="seconds > 0")
    if not 0 < timeout_s < float("inf"):
        raise InvalidInputError(field="timeout_s", value=timeout_s, allowed="seconds > 0")
    if isinstance(max_result_bytes, bool) or not isinstance(max_result_bytes, int):
        raise InvalidInputError(field="max_result_bytes", value=max_result_bytes, allowed="int")
    if max_result_bytes < 1:
        raise InvalidInputError(field="max_result_bytes", value=max_result_bytes, allowed=">= 1")


def _resolve(names: tuple[str, ...], tables: Mapping[str, TableSource]) -> dict[str, TableSource]:
    """Map each referenced name to its factory: exact match first, then case-insensitive."""
    folded: dict[str, list[str]] = {}
    for key in tables:
        folded.setdefault(key.lower(), []).append(key)
    chosen: dict[str, TableSource] = {}
    for name in names:
        keys = [name] if name in tables else folded.get(name.lower(), [])
        if len(keys) != 1:
            raise UnknownTableError(name=name, known=list(tables))
        if len(keys[0].split(".")) > 2:
            raise InvalidInputError(
                field="table name",
                value=keys[0],
                allowed="at most two parts, namespace.table, for Lake SQL",
            )
        chosen[keys[0]] = tables[keys[0]]
    return chosen


# ---------------------------------------------------------------- execution


@dataclass(frozen=True, slots=True)
class _Limits:
    rows: int
    timeout_s: float
    bytes: int


class _StreamRescanned(Exception):
    """DuckDB scanned a one-shot reader twice; run again with tables materialised."""


class _Watchdog:
    """Interrupts a DuckDB connection once ``timeout_s`` has passed, until stopped."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timeout_s: float) -> None:
        self._con = con
        self._timeout_s = timeout_s
        self._done = threading.Event()
        self.fired = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lake-sql-watchdog", daemon=True)

    def _run(self) -> None:
        if self._done.wait(self._timeout_s):
            return
        self.fired.set()
        while not self._done.is_set():
            self._con.interrupt()
            self._done.wait(_REINTERRUPT_S)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()


def _execute(
    query: str,
    chosen: Mapping[str, TableSource],
    references: Mapping[str, int],
    limits: _Limits,
    *,
    materialize_all: bool,
) -> pa.Table:
    con = duckdb.connect(":memory:", config=dict(_CONNECT_CONFIG))
    try:
        with _Watchdog(con, limits.timeout_s) as watchdog:
            try:
                allowed: list[str] = []
                for index, (name, factory) in enumerate(chosen.items()):
                    many = materialize_all or references.get(name.lower(), 0) > 1
                    source = factory()
                    if isinstance(source, ParquetFiles):
                        _register_files(con, name, source)
                        allowed.extend(source.paths)
                    else:
                        _register(con, index, name, source, materialize=many)
                _lock(con, allowed)
                reader = con.sql(query).to_arrow_reader(min(limits.rows + 1, _MAX_BATCH_ROWS))
                return _collect(reader, limits, watchdog, query)
            except (duckdb.Error, OSError, pa.ArrowException) as exc:
                raise _translate(exc, query, limits, watchdog) from None
    finally:
        con.close()


def _register(
    con: duckdb.DuckDBPyConnection,
    index: int,
    name: str,
    source: pa.Table | pa.RecordBatchReader,
    *,
    materialize: bool,
) -> None:
    if materialize and isinstance(source, pa.RecordBatchReader):
        source = source.read_all()
    hidden = f"__lake_source_{index}"
    con.register(hidden, source)
    parts = name.split(".")
    if len(parts) == 2:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(parts[0])}")
    target = ".".join(_quote(p) for p in parts)
    # Identifiers are quoted (a '"' doubled), so a table name cannot end the statement.
    con.execute(f"CREATE VIEW {target} AS SELECT * FROM {_quote(hidden)}")  # noqa: S608


def _register_files(con: duckdb.DuckDBPyConnection, name: str, files: ParquetFiles) -> None:
    """``name`` as a view over DuckDB's own reader of ``files``, columns by field id."""
    paths = ", ".join(_literal(p) for p in files.paths)
    columns = ", ".join(
        f"{fid}: {{name: {_literal(col)}, type: {_literal(duck)}, default_value: NULL}}"
        for fid, col, duck in files.columns
    )
    parts = name.split(".")
    if len(parts) == 2:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(parts[0])}")
    target = ".".join(_quote(p) for p in parts)
    con.execute(
        f"CREATE VIEW {target} AS SELECT * FROM read_parquet([{paths}], "  # noqa: S608
        f"schema = MAP {{{columns}}})"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _lock(con: duckdb.DuckDBPyConnection, allowed_paths: Sequence[str] = ()) -> None:
    # Registration is done: from here on no file, URL or extension is reachable (but the
    # data files of the tables registered natively), and the query cannot turn that back on.
    if allowed_paths:
        con.execute(f"SET allowed_paths = [{', '.join(_literal(p) for p in allowed_paths)}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _collect(
    reader: pa.RecordBatchReader, limits: _Limits, watchdog: _Watchdog, query: str
) -> pa.Table:
    batches: list[pa.RecordBatch] = []
    rows = nbytes = 0
    for batch in reader:
        if watchdog.fired.is_set():
            raise QueryTimeoutError(timeout_s=limits.timeout_s, query=query)
        rows += batch.num_rows
        nbytes += batch.nbytes
        if rows > limits.rows:
            raise ResultTooLargeError(
                limit_name="rows",
                limit=limits.rows,
                fix="add LIMIT or aggregate (GROUP BY) so fewer rows come back",
            )
        if nbytes > limits.bytes:
            raise ResultTooLargeError(
                limit_name="bytes",
                limit=limits.bytes,
                fix="select fewer columns, add LIMIT or aggregate so less data comes back",
            )
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=reader.schema)


def _translate(exc: BaseException, query: str, limits: _Limits, watchdog: _Watchdog) -> Exception:
    if watchdog.fired.is_set():
        return QueryTimeoutError(timeout_s=limits.timeout_s, query=query)
    if _CONSUMED_MARKER in str(exc):
        return _StreamRescanned()
    if isinstance(exc, duckdb.PermissionException):
        return StatementNotAllowedError(
            statement="access to files, URLs or settings",
            query=query,
            fix="read Lake tables by name (namespace.table) only",
        )
    return SqlError(query=query, reason=_first_line(exc))
