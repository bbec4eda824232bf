"""Each expectation rule as a vectorised check: a violation mask per row, or a verdict.

Row rules give a boolean array, true where the row violates the rule, never null:
``not_null`` (null), ``unique`` (every row of a key seen more than once; rows with a
null key column are not judged), ``range`` / ``regex`` / ``allowed_values`` (a present
value outside; nulls pass, pair them with ``not_null``) and ``sql`` (the predicate is
not true: false or NULL). Table rules (``row_count``, ``freshness``) give a problem
text or None.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.ingest.expressions import evaluate_predicate
from actors.ingest.pipeline_errors import ExpectationConfigError
from actors.ingest.spec import (
    AllowedValuesRule,
    Expectation,
    FreshnessRule,
    NotNullRule,
    RangeRule,
    RegexRule,
    RowCountRule,
    SqlRule,
    UniqueRule,
)
from actors.ingest.transforms import require_columns

_INDEX = "__dp_index"
_SHOWN_VALUES = 5
CAST_FIRST = "cast the column first (op: cast) or change the rule"


def columns_of(rule: Expectation) -> list[str]:
    """The columns a rule reads (none for ``sql`` and ``row_count``)."""
    if isinstance(rule, UniqueRule):
        return list(rule.columns)
    column = getattr(rule, "column", None)
    return [column] if column else []


def violations(table: pa.Table, rule: Expectation) -> pa.Array:
    """True where a row violates a row rule; never null."""
    require_columns(table, columns_of(rule), f"expectation {rule.label!r}")
    match rule:
        case NotNullRule():
            mask = pc.is_null(table.column(rule.column))
        case UniqueRule():
            mask = _duplicated(table, rule.columns)
        case RangeRule():
            mask = _outside(table.column(rule.column), rule)
        case RegexRule():
            text = _as_text(table.column(rule.column), rule)
            mask = pc.invert(pc.match_substring_regex(text, pattern=rule.pattern))
        case AllowedValuesRule():
            column = table.column(rule.column)
            outside = pc.invert(pc.is_in(column, value_set=_value_set(column.type, rule)))
            mask = pc.and_(pc.is_valid(column), outside)  # is_in says false, not null, for null
        case SqlRule():
            role = f"expectation {rule.label!r}"
            mask = pc.invert(evaluate_predicate(table, rule.predicate, role=role))
        case _:
            raise TypeError(f"{rule.rule} is a table rule")
    return _flat(pc.fill_null(mask, False))


def reason(rule: Expectation) -> str:
    """What a violating row did, as ``_dq_reason`` words it."""
    match rule:
        case NotNullRule():
            return f"{rule.column} is null"
        case UniqueRule():
            return f"({', '.join(rule.columns)}) repeats within the batch"
        case RangeRule():
            low = "-inf" if rule.min is None else rule.min
            high = "+inf" if rule.max is None else rule.max
            return f"{rule.column} outside [{low}, {high}]"
        case RegexRule():
            return f"{rule.column} does not match /{rule.pattern}/"
        case AllowedValuesRule():
            shown = ", ".join(map(str, rule.values[:_SHOWN_VALUES]))
            more = ", ..." if len(rule.values) > _SHOWN_VALUES else ""
            return f"{rule.column} not in [{shown}{more}]"
        case SqlRule():
            return f"{' '.join(rule.predicate.split())} is not true"
    return rule.rule


def table_problem(table: pa.Table, rule: Expectation, now: datetime) -> str | None:
    """Why a table rule is violated, or None when it holds."""
    match rule:
        case RowCountRule():
            rows = table.num_rows
            if rule.min is not None and rows < rule.min:
                return f"{rows} rows, fewer than min {rule.min}"
            if rule.max is not None and rows > rule.max:
                return f"{rows} rows, more than max {rule.max}"
            return None
        case FreshnessRule():
            return _stale(table, rule, now)
    raise TypeError(f"{rule.rule} is a row rule")


# ---------------------------------------------------------------- row rules


def _duplicated(table: pa.Table, columns: list[str]) -> pa.Array:
    positions = pa.array(np.arange(table.num_rows, dtype=np.int64))
    keyed = table.select(columns).append_column(_INDEX, positions)
    complete = pc.is_valid(keyed.column(columns[0]))
    for column in columns[1:]:
        complete = pc.and_(complete, pc.is_valid(keyed.column(column)))
    keyed = keyed.filter(complete)
    grouped = keyed.group_by(columns, use_threads=False).aggregate(
        [(_INDEX, "count"), (_INDEX, "list")]
    )
    repeated = grouped.filter(pc.greater(grouped.column(f"{_INDEX}_count"), 1))
    flagged = pc.list_flatten(repeated.column(f"{_INDEX}_list"))
    return pc.is_in(positions, value_set=_flat(flagged))


def _outside(column: pa.ChunkedArray, rule: RangeRule) -> pa.ChunkedArray:
    masks = []
    try:
        if rule.min is not None:
            masks.append(pc.less(column, _bound(rule.min, column.type, rule)))
        if rule.max is not None:
            masks.append(pc.greater(column, _bound(rule.max, column.type, rule)))
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise ExpectationConfigError(
            rule=rule.label,
            reason=f"column {rule.column} ({column.type}) cannot be compared with the bounds "
            f"({_first_line(exc)})",
            fix=CAST_FIRST,
        ) from None
    return masks[0] if len(masks) == 1 else pc.or_(masks[0], masks[1])


def _bound(value: Any, dtype: pa.DataType, rule: RangeRule) -> pa.Scalar:
    """A range bound typed for ``dtype``: text and dates become timestamps, naive = UTC."""
    try:
        if pa.types.is_timestamp(dtype):
            moment = _as_datetime(value)
            if dtype.tz is None:
                moment = moment.astimezone(UTC).replace(tzinfo=None)
            return pa.scalar(moment, type=dtype)
        if pa.types.is_date(dtype):
            day = date.fromisoformat(value) if isinstance(value, str) else value
            return pa.scalar(day.date() if isinstance(day, datetime) else day, type=dtype)
        numeric = pa.types.is_integer(dtype) or pa.types.is_floating(dtype)
        if isinstance(value, str) and (numeric or pa.types.is_decimal(dtype)):
            return pa.scalar(value).cast(dtype)
        return pa.scalar(value)
    except (ValueError, TypeError, AttributeError, pa.ArrowException):
        raise ExpectationConfigError(
            rule=rule.label,
            reason=f"bound {value!r} does not fit column {rule.column} ({dtype})",
            fix="write the bound in the column's type (e.g. 2024-01-01T00:00:00Z for times)",
        ) from None


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise TypeError(f"{value!r} is not a time")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _as_text(column: pa.ChunkedArray, rule: RegexRule) -> pa.ChunkedArray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        raise ExpectationConfigError(
            rule=rule.label,
            reason=f"column {rule.column} is {column.type}, which has no text form",
            fix=CAST_FIRST,
        ) from None


def _value_set(dtype: pa.DataType, rule: AllowedValuesRule) -> pa.Array:
    try:
        return pa.array(rule.values).cast(dtype)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise ExpectationConfigError(
            rule=rule.label,
            reason=f"values {rule.values[:_SHOWN_VALUES]} do not fit column {rule.column} "
            f"({dtype}): {_first_line(exc)}",
            fix=f"list values of type {dtype}, or {CAST_FIRST}",
        ) from None


# ---------------------------------------------------------------- table rules


def _stale(table: pa.Table, rule: FreshnessRule, now: datetime) -> str | None:
    require_columns(table, [rule.column], f"expectation {rule.label!r}")
    column = table.column(rule.column)
    if not (pa.types.is_timestamp(column.type) or pa.types.is_date(column.type)):
        raise ExpectationConfigError(
            rule=rule.label,
            reason=f"column {rule.column} is {column.type}, not a timestamp or date",
            fix=CAST_FIRST,
        )
    newest = pc.max(column).as_py()
    if newest is None:
        return f"{rule.column} has no values, so the newest is unknown"
    newest = _as_datetime(newest)
    age = _as_datetime(now) - newest
    if age > timedelta(seconds=rule.max_age_s):
        return (
            f"newest {rule.column} is {newest.isoformat()}, {age.total_seconds():.0f} s old "
            f"(limit {rule.max_age_s:g} s)"
        )
    return None


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
