"""Rows diverted from the sink to ``<table>__quarantine``, with why and where from.

A quarantine row is the original row plus four columns: ``_dq_rule`` (the rule labels
it broke, joined with ``", "``), ``_dq_reason`` (what each rule says, joined with
``"; "``), ``_dq_source`` (file:row or message id, as the runner's source reference
gives it; null when unknown) and ``_dq_run_id``. The quarantine table gains columns as
sources do, so the runner writes it with schema evolution on.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from actors.ingest.spec import DQ_PREFIX
from cluster.errors import InvalidInputError

DQ_RULE = "_dq_rule"
DQ_REASON = "_dq_reason"
DQ_SOURCE = "_dq_source"
DQ_RUN_ID = "_dq_run_id"
DQ_COLUMNS = (DQ_RULE, DQ_REASON, DQ_SOURCE, DQ_RUN_ID)
DRIFT_RULE = "schema_drift"


def check_source_ref(table: pa.Table, source_ref: pa.Array | pa.ChunkedArray | None) -> None:
    """Refuse a source reference that does not line up with ``table``'s rows."""
    if source_ref is not None and len(source_ref) != table.num_rows:
        raise InvalidInputError(
            field="source_ref",
            value=f"{len(source_ref)} values",
            allowed=f"one per row of the batch ({table.num_rows}); take it by row_ids",
        )


def quarantine_rows(
    table: pa.Table,
    rows: pa.Array,
    *,
    rules: pa.Array | pa.ChunkedArray,
    reasons: pa.Array | pa.ChunkedArray,
    run_id: str,
    source_ref: pa.Array | pa.ChunkedArray | None,
) -> pa.Table:
    """Rows ``rows`` of ``table`` with the quarantine columns; ``rules`` and ``reasons``
    hold one string per row of ``table`` (only the taken ones are read)."""
    reserved = [name for name in table.column_names if name.startswith(DQ_PREFIX)]
    if reserved:
        raise InvalidInputError(
            field="column",
            value=reserved[0],
            allowed=f"names starting {DQ_PREFIX} are reserved for quarantine columns; drop or "
            "rename it before the expectations (op: select or rename)",
        )
    check_source_ref(table, source_ref)
    picked = table.take(rows)
    count = picked.num_rows
    if source_ref is None:
        source = pa.nulls(count, pa.string())
    else:
        source = source_ref.take(rows).cast(pa.string())
    columns = {
        DQ_RULE: pc.take(rules, rows).cast(pa.string()),
        DQ_REASON: pc.take(reasons, rows).cast(pa.string()),
        DQ_SOURCE: source,
        DQ_RUN_ID: pa.repeat(pa.scalar(run_id, pa.string()), count),
    }
    for name, values in columns.items():
        picked = picked.append_column(pa.field(name, pa.string()), values)
    return picked


def quarantine_all(
    table: pa.Table,
    *,
    rule: str,
    reason: str,
    run_id: str,
    source_ref: pa.Array | pa.ChunkedArray | None,
) -> pa.Table:
    """Every row of ``table``, quarantined for one ``rule`` (schema drift)."""
    rows = pa.array(range(table.num_rows), pa.int64())
    return quarantine_rows(
        table,
        rows,
        rules=pa.repeat(pa.scalar(rule), table.num_rows),
        reasons=pa.repeat(pa.scalar(reason), table.num_rows),
        run_id=run_id,
        source_ref=source_ref,
    )
