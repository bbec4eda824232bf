"""Pipeline transforms over one Arrow batch: vectorised, in order, counting dropped rows.

Column work is ``pyarrow.compute``; expressions (``derive``, ``filter``) and ``hash``
masking run in the DuckDB sandbox of ``actors/ingest/expressions.py``. No transform
adds rows, so ``rows_filtered = rows in - rows out`` (``filter``, ``dedupe`` and
``lookup`` with ``how: inner`` drop rows). ``row_ids`` gives, for each output row, its
position in the input batch, so the runner can carry source references (file:row,
message id) to the quarantine table.

``dedupe`` acts within the batch it is given; ``lookup`` reads its table through the
``lookup`` callable on every call (the runner should cache it and pin its snapshot).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow

from actors.ingest.expressions import evaluate_column, evaluate_predicate, hash_column
from actors.ingest.pipeline_errors import (
    CastFailedError,
    ColumnNotFoundError,
    LookupTableError,
    MissingSaltError,
)
from actors.ingest.spec import (
    CastOp,
    DedupeOp,
    DeriveOp,
    FilterOp,
    LookupOp,
    MaskOp,
    RenameOp,
    SelectOp,
    Transform,
)
from actors.lake.specs import parse_type
from cluster.errors import InvalidInputError

LookupReader = Callable[[str], pa.Table]
REDACTED = "***"
_INDEX = "__dp_index"
_WIDE_TO_PLAIN = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}


@dataclass(frozen=True)
class TransformResult:
    """The transformed batch, how many input rows it dropped, and where each row came from."""

    table: pa.Table
    rows_filtered: int
    row_ids: pa.Int64Array  # output row i came from input row row_ids[i]


@dataclass(frozen=True)
class _Context:
    lookup: LookupReader | None
    salts: Mapping[str, str]


def apply_transforms(
    batch: pa.Table,
    transforms: Sequence[Transform],
    *,
    lookup: LookupReader | None = None,
    salts: Mapping[str, str] | None = None,
) -> TransformResult:
    """Apply ``transforms`` to ``batch`` in order.

    ``lookup`` reads a Lake table by name (needed by ``op: lookup``); ``salts`` maps
    salt environment variable names to values (``resolve_salts``; needed by ``mask``
    with ``salt_env``). Errors name the step as ``transforms[i] (op)``.
    """
    context = _Context(lookup, salts or {})
    table = batch
    row_ids = _positions(batch.num_rows)
    for index, step in enumerate(transforms):
        table, kept = _apply(step, table, f"transforms[{index}] ({step.op})", context)
        if kept is not None:
            row_ids = row_ids.take(kept)
    return TransformResult(table, batch.num_rows - table.num_rows, row_ids)


def resolve_salts(transforms: Iterable[Transform], env: Mapping[str, str]) -> dict[str, str]:
    """The salts that ``mask`` steps name, read from ``env`` at the composition root."""
    salts: dict[str, str] = {}
    for index, step in enumerate(transforms):
        if isinstance(step, MaskOp) and step.salt_env is not None:
            if step.salt_env not in env:
                raise MissingSaltError(role=f"transforms[{index}] (mask)", env=step.salt_env)
            salts[step.salt_env] = env[step.salt_env]
    return salts


def arrow_type(type_name: str) -> pa.DataType:
    """The Arrow type of a Lake type name (``long``, ``decimal(10, 2)``, ``timestamptz``)."""
    arrow = schema_to_pyarrow(parse_type(type_name))
    return _WIDE_TO_PLAIN.get(arrow, arrow)


def require_columns(table: pa.Table | pa.Schema, columns: Iterable[str], role: str) -> None:
    """Raise ``ColumnNotFoundError`` for the first of ``columns`` the data lacks."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    for column in columns:
        if column not in names:
            raise ColumnNotFoundError(column=column, available=names, role=role)


def _apply(
    step: Transform, table: pa.Table, role: str, context: _Context
) -> tuple[pa.Table, pa.Array | None]:
    """One step: the new table and, when rows were dropped, the input positions kept."""
    match step:
        case SelectOp():
            require_columns(table, step.columns, role)
            return table.select(step.columns), None
        case RenameOp():
            return _rename(table, step, role), None
        case CastOp():
            return _cast(table, step, role), None
        case DeriveOp():
            values = evaluate_column(table, step.expr, role=role)
            return _put(table, step.column, values), None
        case FilterOp():
            kept = pc.indices_nonzero(evaluate_predicate(table, step.expr, role=role))
            return table.take(kept), kept
        case DedupeOp():
            kept = _dedupe(table, step, role)
            return table.take(kept), kept
        case LookupOp():
            return _lookup(table, step, role, context.lookup)
        case MaskOp():
            return _mask(table, step, role, context.salts), None
    raise InvalidInputError(field=role, value=step, allowed="a known transform op")


# ---------------------------------------------------------------- column steps


def _rename(table: pa.Table, step: RenameOp, role: str) -> pa.Table:
    require_columns(table, step.mapping, role)
    names = [step.mapping.get(name, name) for name in table.column_names]
    for old, new in step.mapping.items():
        if names.count(new) > 1:
            raise InvalidInputError(
                field=f"{role} mapping",
                value=f"{old} -> {new}",
                allowed=f"the data already has a column {new!r}; rename or drop it first",
            )
    return table.rename_columns(names)


def _cast(table: pa.Table, step: CastOp, role: str) -> pa.Table:
    require_columns(table, step.columns, role)
    for column, type_name in step.columns.items():
        target = arrow_type(type_name)
        current = table.column(column)
        try:
            cast = _cast_values(current, target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise CastFailedError(
                role=role,
                column=column,
                example=_first_uncastable(current, target),
                source=str(current.type),
                target=type_name,
            ) from None
        table = _put(table, column, cast)
    return table


def _cast_values(values: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    try:
        return values.cast(target)
    except pa.ArrowInvalid:
        textual = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        if not (pa.types.is_timestamp(target) and target.tz and textual):
            raise
    # Text without a zone offset, cast to timestamptz: read it as UTC, as the Lake does.
    naive = values.cast(pa.timestamp(target.unit))
    return pc.assume_timezone(naive, timezone=target.tz)


def _first_uncastable(values: pa.ChunkedArray, target: pa.DataType) -> object:
    """The first value that does not cast, found by halving (a few casts, not one per row)."""
    candidates = values.combine_chunks().drop_null()
    if _casts(candidates, target):
        return None
    while len(candidates) > 1:
        head = candidates.slice(0, len(candidates) // 2)
        candidates = candidates.slice(len(candidates) // 2) if _casts(head, target) else head
    return candidates[0].as_py() if len(candidates) else None


def _casts(values: pa.Array, target: pa.DataType) -> bool:
    try:
        _cast_values(pa.chunked_array([values]), target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def _mask(table: pa.Table, step: MaskOp, role: str, salts: Mapping[str, str]) -> pa.Table:
    require_columns(table, step.columns, role)
    if step.salt_env is not None and step.salt_env not in salts:
        raise MissingSaltError(role=role, env=step.salt_env)
    salt = salts.get(step.salt_env, "") if step.salt_env is not None else ""
    for column in step.columns:
        if step.method == "hash":
            masked = hash_column(table, column, salt=salt, role=role)
        else:
            present = pc.is_valid(table.column(column))
            masked = pc.if_else(present, pa.scalar(REDACTED), pa.scalar(None, pa.string()))
        table = _put(table, column, masked)
    return table


def _put(table: pa.Table, name: str, values: pa.ChunkedArray | pa.Array) -> pa.Table:
    """Replace column ``name`` in place, or append it."""
    field = pa.field(name, values.type)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), field, values)
    return table.append_column(field, values)


def _positions(rows: int) -> pa.Int64Array:
    return pa.array(np.arange(rows, dtype=np.int64))


# ---------------------------------------------------------------- row steps


def _dedupe(table: pa.Table, step: DedupeOp, role: str) -> pa.Array:
    require_columns(table, step.keys, role)
    keyed = table.select(step.keys).append_column(_INDEX, _positions(table.num_rows))
    how = "min" if step.keep == "first" else "max"
    grouped = keyed.group_by(step.keys, use_threads=False).aggregate([(_INDEX, how)])
    kept = grouped.column(f"{_INDEX}_{how}").combine_chunks()
    return kept.take(pc.array_sort_indices(kept))


def _lookup(
    table: pa.Table, step: LookupOp, role: str, reader: LookupReader | None
) -> tuple[pa.Table, pa.Array | None]:
    if reader is None:
        raise LookupTableError(
            role=role,
            table=step.table,
            reason="cannot be read: no lookup reader was given",
            fix="pass lookup= (a reader of Lake tables) to apply_transforms",
        )
    require_columns(table, step.on, role)
    clash = [c for c in step.columns if c in table.column_names]
    if clash:
        raise InvalidInputError(
            field=f"{role} columns",
            value=clash,
            allowed="the data already has these columns; rename or drop them first",
        )
    right = _lookup_side(table, reader(step.table), step, role)
    left = table.select(step.on).append_column(_INDEX, _positions(table.num_rows))
    join_type = "left outer" if step.how == "left" else "inner"
    joined = left.join(right, keys=step.on, join_type=join_type, use_threads=False)
    joined = joined.sort_by(_INDEX)
    kept = joined.column(_INDEX).combine_chunks()
    out = table if step.how == "left" else table.take(kept)
    for column in step.columns:
        out = out.append_column(right.schema.field(column), joined.column(column))
    return out, (None if step.how == "left" else kept)


def _lookup_side(table: pa.Table, right: pa.Table, step: LookupOp, role: str) -> pa.Table:
    """The lookup table's keys and columns, keys typed as the data's, one row per key."""
    require_columns(right, [*step.on, *step.columns], f"{role} table {step.table!r}")
    right = right.select([*step.on, *step.columns])
    for key in step.on:
        wanted = table.schema.field(key).type
        if right.schema.field(key).type != wanted:
            try:
                right = _put(right, key, right.column(key).cast(wanted))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise LookupTableError(
                    role=role,
                    table=step.table,
                    reason=f"has key {key!r} as {right.schema.field(key).type}, the data {wanted}",
                    fix=f"cast {key!r} in the pipeline (op: cast) to the lookup table's type",
                ) from None
    counts = right.group_by(step.on, use_threads=False).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows:
        example = repeated.select(step.on).slice(0, 1).to_pylist()[0]
        raise LookupTableError(
            role=role,
            table=step.table,
            reason=f"has {repeated.num_rows} keys with several rows (e.g. {example})",
            fix="make the lookup table unique on the on: columns, or add key columns to on",
        )
    return right
