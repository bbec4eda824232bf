"""A table or query on any SQLAlchemy URL, read in chunks into Arrow.

Incremental by ``incremental_column``: a plan reads the rows with
``stored high-water mark < column <= max(column) at plan time``, ordered by the column,
and the plan's position is that maximum, so the range is fixed when the run starts and
the next run continues exactly where this one ended. Without an incremental column
every run reads everything (a full refresh; the runner overwrites or dedupes).

Caveats of high-water marks, as in every HWM extractor: rows whose column is NULL are
never read; the column must grow in commit order (a transaction that commits a *lower*
id or timestamp after a run has passed it is missed: use a commit timestamp, or read a
little behind with a query such as ``WHERE updated_at < now() - interval '1 minute'``).
Passwords never appear in errors (``redact_url``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from actors.ingest.sources.base import (
    InputRef,
    NoDeliveries,
    Position,
    SourceBatch,
    SourceKind,
    SourcePlan,
    StateView,
    check_split_count,
    decode_position,
    encode_position,
    row_refs,
)
from actors.ingest.sources.errors import SqlSourceError
from actors.ingest.sources.rows import ArrowRows, TypeConflictError
from cluster.db.diagnose import is_unavailable
from cluster.errors import InvalidInputError, ServiceUnavailableError
from cluster.settings import redact_url

# Async drivers a platform URL may name; a source reads with the sync driver beside it.
_SYNC_DRIVERS = {
    "postgresql+asyncpg": "postgresql+psycopg2",
    "sqlite+aiosqlite": "sqlite",
    "mysql+aiomysql": "mysql+pymysql",
    "mysql+asyncmy": "mysql+pymysql",
}
_MAX_REASON = 300


def sync_url(url: str) -> str:
    """``url`` with an async driver swapped for its sync counterpart."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInputError(
            field="url", value=redact_url(url), allowed="a SQLAlchemy URL, dialect+driver://…"
        ) from None
    driver = _SYNC_DRIVERS.get(parsed.drivername)
    if parsed.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None:
        driver = "postgresql+psycopg2"  # SQLAlchemy 2.1's default driver is psycopg 3
    if driver is None:
        return url
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


class SqlSource(NoDeliveries):
    """Rows of ``table`` (optionally in ``db_schema``) or of ``query`` on ``url``."""

    kind: SourceKind = "sql"

    def __init__(
        self,
        url: str,
        *,
        table: str | None = None,
        query: str | None = None,
        db_schema: str | None = None,
        incremental_column: str | None = None,
        name: str = "sql",
        chunk_rows: int = 10_000,
        connect_timeout_s: float = 10.0,
    ) -> None:
        if (table is None) == (query is None):
            raise InvalidInputError(
                field="table/query",
                value={"table": table, "query": query},
                allowed="exactly one of table (a table name) or query (one SELECT)",
            )
        if chunk_rows < 1:
            raise InvalidInputError(field="chunk_rows", value=chunk_rows, allowed="1 or more")
        if table is not None and db_schema is None and "." in table:
            db_schema, table = table.split(".", 1)  # "schema.table" as one name
        self.url = url
        self.name = name
        self.table = table
        self.query = None if query is None else query.strip().rstrip(";").strip()
        self.db_schema = db_schema
        self.incremental_column = incremental_column
        self.chunk_rows = chunk_rows
        self.connect_timeout_s = connect_timeout_s
        self._engine: Engine | None = None

    @property
    def identity(self) -> str:
        """``table:<schema.name>`` or ``query:<digest>``: the input id of this source."""
        if self.table is not None:
            qualified = f"{self.db_schema}.{self.table}" if self.db_schema else self.table
            return f"table:{qualified}"
        digest = hashlib.sha256((self.query or "").encode()).hexdigest()[:16]
        return f"query:{digest}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            url = sync_url(self.url)
            args: dict[str, Any] = {}
            if make_url(url).get_backend_name() == "postgresql":
                args = {"connect_timeout": max(1, int(self.connect_timeout_s))}
            try:
                self._engine = sa.create_engine(url, pool_pre_ping=True, connect_args=args)
            except (ArgumentError, NoSuchModuleError, ImportError) as exc:
                raise InvalidInputError(
                    field="url",
                    value=redact_url(self.url),
                    allowed=f"a URL whose dialect and driver are installed ({exc})",
                ) from None
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # --- statements ------------------------------------------------------------------

    def _from(self) -> sa.FromClause:
        if self.table is not None:
            return sa.table(self.table, schema=self.db_schema)
        return sa.text(self.query or "").columns().subquery("datapunk_source")

    def _column(self) -> sa.ColumnClause[Any]:
        return sa.column(self.incremental_column or "")

    def _range(self, stmt: Any, after: Position | None, upto: Position | None) -> Any:
        column = self._column()
        if after is not None:
            stmt = stmt.where(column > after)
        if upto is not None:
            stmt = stmt.where(column <= upto)
        return stmt

    # --- plan ------------------------------------------------------------------------

    def plan(self, state: StateView) -> SourcePlan:
        """The rows above the stored high-water mark up to today's maximum (or all rows)."""
        if self.incremental_column is None:
            ref = InputRef(kind="rows", id=self.identity)
            return SourcePlan(source=self.name, kind=self.kind, refs=(ref,))
        stored = state.position(self.name)
        after = decode_position(stored)
        column = self._column()
        stmt = sa.select(sa.func.max(column), sa.func.count(column)).select_from(self._from())
        upto, count = self._one(self._range(stmt, after, None), "plan")
        if upto is None or not count:
            return SourcePlan(source=self.name, kind=self.kind)
        position = encode_position(upto)
        ref = InputRef(
            kind="rows",
            id=self.identity,
            fingerprint=f"({stored or ''}, {position}]",
            size=int(count),
            after=stored,
            upto=position,
        )
        return SourcePlan(source=self.name, kind=self.kind, refs=(ref,), position=position)

    # --- read ------------------------------------------------------------------------

    def read(self, plan: SourcePlan) -> Iterator[SourceBatch]:
        """The planned range, ordered by the incremental column, ``chunk_rows`` at a time."""
        for ref in plan.refs:
            yield from self._read_ref(ref)

    def _read_ref(self, ref: InputRef) -> Iterator[SourceBatch]:
        stmt: Any = sa.select(sa.literal_column("*")).select_from(self._from())
        if self.incremental_column is not None:
            after, upto = decode_position(ref.after), decode_position(ref.upto)
            stmt = self._range(stmt, after, upto).order_by(self._column())
        row = 1
        try:
            with self._connect() as connection:
                result = connection.execution_options(yield_per=self.chunk_rows).execute(stmt)
                builder = ArrowRows(list(result.keys()))
                for rows in result.partitions():
                    table = builder.table(rows)
                    yield SourceBatch(table, row_refs(f"{self.identity}:", row, table.num_rows))
                    row += table.num_rows
        except TypeConflictError as exc:
            raise SqlSourceError(
                target=self._target(),
                what=f"column {exc.column!r}",
                reason=f"values of type {exc.found} do not fit its type {exc.expected}",
                fix=f"CAST {exc.column} to one type in a query source",
            ) from None
        except SQLAlchemyError as exc:
            raise self._error(exc, "read") from None

    # --- splits ----------------------------------------------------------------------

    def splits(self, plan: SourcePlan, n: int) -> list[SourcePlan]:
        """Ranges of the incremental column of about equal width (numbers, dates, times).

        Without an incremental column, or over text, the plan stays whole.
        """
        check_split_count(n)
        if n == 1 or self.incremental_column is None or len(plan.refs) != 1:
            return [plan]
        [ref] = plan.refs
        after, upto = decode_position(ref.after), decode_position(ref.upto)
        stmt = sa.select(sa.func.min(self._column())).select_from(self._from())
        (low,) = self._one(self._range(stmt, after, upto), "split")
        bounds = _boundaries(low, upto, n)
        if low is None or bounds is None:
            return [plan]
        edges = [ref.after, *(encode_position(b) for b in bounds), ref.upto]
        pieces = [
            replace(ref, after=start, upto=end, size=None, fingerprint=f"({start or ''}, {end}]")
            for start, end in itertools.pairwise(edges)
        ]
        return [replace(plan, refs=(piece,)) for piece in pieces]

    # --- plumbing --------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        """A connection; failing to get one at all is ``ServiceUnavailableError``."""
        try:
            connection = self.engine.connect()
        except SQLAlchemyError as exc:
            raise self._unavailable(exc) from None
        with connection:
            yield connection

    def _one(self, stmt: Any, what: str) -> tuple[Any, ...]:
        try:
            with self._connect() as connection:
                row = connection.execute(stmt).one()
        except SQLAlchemyError as exc:
            raise self._error(exc, what) from None
        return tuple(row)

    def _target(self) -> str:
        return redact_url(self.url)

    def _unavailable(self, exc: SQLAlchemyError) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            service=f"SQL source {self.name!r}",
            target=self._target(),
            reason=_reason(exc, self.url),
            fix="check host, port, database name and credentials in the source's url",
        )

    def _error(self, exc: SQLAlchemyError, step: str) -> Exception:
        reason = _reason(exc, self.url)
        if is_unavailable(exc):
            return self._unavailable(exc)
        what = f"table {self.table!r}" if self.table is not None else "query"
        column = f" and that column {self.incremental_column!r} exists" * bool(
            self.incremental_column
        )
        return SqlSourceError(
            target=self._target(),
            what=f"{what} ({step})",
            reason=reason,
            fix=f"check the {'table name' if self.table else 'query'}{column}",
        )


def _reason(exc: BaseException, url: str) -> str:
    """The driver's first line, without SQLAlchemy's footer and never the password."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().split("\n", 1)[0] or type(exc).__name__
    password = make_url(sync_url(url)).password if "://" in url else None
    if password:
        text = text.replace(str(password), "***")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _boundaries(low: Any, high: Any, n: int) -> list[Any] | None:
    """``n - 1`` inner boundaries between ``low`` and ``high``; ``None`` if not divisible."""
    if low is None or high is None or type(low) is not type(high) or isinstance(low, str):
        return None
    if isinstance(low, bool):
        return None
    if isinstance(low, int):
        points = [low + (high - low) * k // n for k in range(1, n)]
    elif isinstance(low, float | Decimal | datetime):
        points = [low + (high - low) * k / n for k in range(1, n)]
    elif isinstance(low, date):
        points = [low + (high - low) * k // n for k in range(1, n)]
    else:
        return None
    inner = sorted({p for p in points if low <= p < high})
    return inner or None
