"""Row filters and projections, checked against a table schema before a scan or a write.

Filters are Iceberg's expression language, parsed by ``pyiceberg.expressions.parser``
(``"id > 10 and region = 'eu'"``, ``"ts >= '2026-01-01T00:00:00'"``, ``"name is null"``),
so they are pushed down to manifest and Parquet row-group pruning unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    Not,
    Or,
    Reference,
    UnboundPredicate,
)
from pyiceberg.expressions.parser import parse
from pyiceberg.expressions.visitors import bind
from pyiceberg.schema import Schema
from pyparsing import ParseException

from actors.lake.errors import InvalidFilterError, UnknownColumnError


def parse_filter(text: str | None, schema: Schema, table: str) -> BooleanExpression:
    """Parse and check ``text``; ``None`` or blank means every row."""
    if text is None or not text.strip():
        return AlwaysTrue()
    try:
        expression = parse(text)
    except ParseException as exc:
        near = text[exc.loc : exc.loc + 20] or "the end"
        raise InvalidFilterError(
            filter_text=text, reason=f"cannot parse at column {exc.col} near {near!r}"
        ) from None
    except (ValueError, TypeError) as exc:
        raise InvalidFilterError(filter_text=text, reason=_first_line(exc)) from None
    for name in referenced_columns(expression):
        check_column(name, schema, table, role=f"filter {text!r}")
    try:
        bind(schema, expression, case_sensitive=True)
    except (ValueError, TypeError) as exc:  # a literal that does not fit the column's type
        raise InvalidFilterError(filter_text=text, reason=_first_line(exc)) from None
    return expression


def referenced_columns(expression: BooleanExpression) -> Iterator[str]:
    """Names of the columns an unbound expression mentions, in order of appearance."""
    if isinstance(expression, And | Or):
        yield from referenced_columns(expression.left)
        yield from referenced_columns(expression.right)
    elif isinstance(expression, Not):
        yield from referenced_columns(expression.child)
    elif isinstance(expression, UnboundPredicate) and isinstance(expression.term, Reference):
        yield expression.term.name


def check_columns(columns: list[str] | None, schema: Schema, table: str, *, role: str) -> None:
    """Refuse a projection (or key list) naming a column ``schema`` lacks."""
    for name in columns or []:
        check_column(name, schema, table, role=role)


def check_column(name: str, schema: Schema, table: str, *, role: str) -> None:
    try:
        schema.find_field(name)
    except ValueError:
        top_level = [field.name for field in schema.fields]
        raise UnknownColumnError(table=table, column=name, available=top_level, role=role) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
