"""What every pipeline section shares: strict models and the small validators they reuse.

Validators raise ``ValueError`` whose text states the value and, where it is not plain,
``fix: ...``; ``actors/ingest/yaml_lines.py`` turns them into one-line errors that name
the file, line and key path.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from actors.ingest.expressions import check_expression
from actors.lake.specs import parse_table_name
from cluster.errors import DatapunkError

DQ_PREFIX = "_dq_"


class Spec(BaseModel):
    """A pipeline section: a misspelt key is an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def table_name(value: str) -> str:
    """``value`` if it is a Lake table name (``namespace.table`` or ``table``)."""
    try:
        parse_table_name(value)
    except DatapunkError:
        raise ValueError(
            f"{value!r} is not a Lake table name; fix: write namespace.table or table, each "
            "part letters, digits and _ and not starting with a digit (e.g. sales.orders)"
        ) from None
    return value


def distinct(values: list[str], what: str) -> list[str]:
    """``values`` if none repeats; else name the repeats."""
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{what} {', '.join(map(repr, dupes))} listed twice; fix: list each once")
    return values


def not_reserved(name: str) -> str:
    """``name`` unless it takes the prefix the quarantine columns use."""
    if name.startswith(DQ_PREFIX):
        raise ValueError(
            f"column name {name!r} starts with {DQ_PREFIX}, which is reserved for quarantine "
            "columns; fix: pick another name"
        )
    return name


def expression(expr: str) -> str:
    """``expr`` if the expression sandbox accepts it (vetted once, at load time)."""
    try:
        check_expression(expr)
    except DatapunkError as exc:
        raise ValueError(exc.message) from None
    return expr


LakeTable = Annotated[str, AfterValidator(table_name)]
NewColumn = Annotated[str, Field(min_length=1), AfterValidator(not_reserved)]
SqlExpression = Annotated[str, AfterValidator(expression)]
