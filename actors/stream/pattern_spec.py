"""A small, safe condition language for pattern detection, compiled to Arrow compute.

A condition is a tree of ``Cond`` leaves (``column op value``) combined with
``AllOf`` / ``AnyOf``. It is data (pydantic, loadable from YAML/JSON), never Python
source: nothing is ``eval``-ed. ``evaluate`` turns it into one boolean mask per record
batch with ``pyarrow.compute``, so the hot path never loops over events in Python.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from cluster.errors import InvalidInputError

Op = Literal["=", "!=", "<", "<=", ">", ">=", "in"]

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "=": pc.equal,
    "!=": pc.not_equal,
    "<": pc.less,
    "<=": pc.less_equal,
    ">": pc.greater,
    ">=": pc.greater_equal,
}

_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


class Cond(BaseModel):
    """One comparison of a column with a literal; ``in`` takes a list of literals."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["cond"] = "cond"
    column: str = Field(description="Column of the event batch to compare.")
    op: Op = Field(description="Comparison operator.")
    value: Any = Field(description="Literal to compare with (a list for `in`).")


class AllOf(BaseModel):
    """True where every child condition is true."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["all"] = "all"
    all: list[Condition] = Field(min_length=1, description="Conditions that must all hold.")


class AnyOf(BaseModel):
    """True where at least one child condition is true."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["any"] = "any"
    any: list[Condition] = Field(min_length=1, description="Conditions of which one must hold.")


def _condition_kind(value: Any) -> str:
    """The node's ``kind``; when YAML leaves it out, ``all``/``any`` keys name it."""
    if isinstance(value, BaseModel):
        return str(getattr(value, "kind", "cond"))
    if isinstance(value, dict):
        if "kind" in value:
            return str(value["kind"])
        return "all" if "all" in value else "any" if "any" in value else "cond"
    return "cond"


Condition = Annotated[
    Annotated[Cond, Tag("cond")] | Annotated[AllOf, Tag("all")] | Annotated[AnyOf, Tag("any")],
    Discriminator(_condition_kind),
]
AllOf.model_rebuild()
AnyOf.model_rebuild()


def evaluate(condition: Cond | AllOf | AnyOf, table: pa.Table) -> np.ndarray:
    """Boolean mask (numpy, one entry per row) of where ``condition`` holds; null is false."""
    mask = _evaluate(condition, table)
    filled = pc.fill_null(mask, False)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=bool)


def _evaluate(condition: Cond | AllOf | AnyOf, table: pa.Table) -> Any:
    if isinstance(condition, AllOf):
        parts = [_evaluate(child, table) for child in condition.all]
        return _fold(pc.and_kleene, parts)
    if isinstance(condition, AnyOf):
        parts = [_evaluate(child, table) for child in condition.any]
        return _fold(pc.or_kleene, parts)
    if condition.column not in table.column_names:
        raise InvalidInputError(
            field="condition.column",
            value=condition.column,
            allowed=f"a column of the batch: {sorted(table.column_names)}",
        )
    column = table[condition.column]
    if condition.op == "in":
        if not isinstance(condition.value, list):
            raise InvalidInputError(
                field=f"condition[{condition.column} in]",
                value=condition.value,
                allowed="a list of literals, e.g. value: [1, 2]",
            )
        values = pa.array(condition.value).cast(column.type)
        return pc.is_in(column, value_set=values)
    return _COMPARE[condition.op](column, pa.scalar(condition.value).cast(column.type))


def _fold(function: Callable[[Any, Any], Any], parts: list[Any]) -> Any:
    result = parts[0]
    for part in parts[1:]:
        result = function(result, part)
    return result


def time_seconds(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Event times as float seconds: numeric columns are seconds, timestamps any unit."""
    if pa.types.is_timestamp(column.type):
        unit = _UNIT_PER_SECOND[column.type.unit]
        raw = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(raw, dtype=np.float64) / unit
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    raise InvalidInputError(
        field="time_column type",
        value=str(column.type),
        allowed="a timestamp or numeric (seconds) column; cast it before the detector",
    )
