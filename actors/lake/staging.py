"""Preparing data and transactions for a commit: shared by table creation and writes."""

from __future__ import annotations

import pyarrow as pa
from pyiceberg.table import Table, TableProperties, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.sorting import SortDirection
from pyiceberg.table.update import TableUpdate, update_table_metadata
from pyiceberg.transforms import IdentityTransform

from actors.lake.errors import invalid
from actors.lake.schema import WritePlan


def materialise(data: pa.Table | pa.RecordBatchReader) -> pa.Table:
    """A replayable ``pa.Table``: a reader is drained once, since retries need the rows again.

    (pyiceberg also streams readers into unpartitioned tables only.)
    """
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if isinstance(data, pa.Table):
        return data
    raise invalid("data", type(data).__name__, "a pyarrow.Table or pyarrow.RecordBatchReader")


def sort_for_write(data: pa.Table, metadata: TableMetadata) -> pa.Table:
    """Rows in the table's sort order (its identity-transform keys), so files prune well.

    Nulls go last whatever the order's null placement: Iceberg readers do not rely on it.
    """
    schema = metadata.schema()
    keys: list[tuple[str, str]] = []
    for field in metadata.sort_order().fields:
        name = schema.find_column_name(field.source_id)
        if not isinstance(field.transform, IdentityTransform) or name not in data.column_names:
            break  # a prefix of the keys is still a useful order
        order = "descending" if field.direction == SortDirection.DESC else "ascending"
        keys.append((name, order))  # type: ignore[arg-type]
    return data.sort_by(keys) if keys and data.num_rows > 1 else data


def stage_schema_changes(tx: Transaction, plan: WritePlan) -> None:
    """Stage the plan's added and widened columns in ``tx`` (committed with the data)."""
    if not plan.changes_schema:
        return
    with tx.update_schema() as update:
        for name, ice_type in plan.add:
            update.add_column(name, ice_type)
        for name, wider in plan.widen:
            update.update_column(name, field_type=wider)


def single_attempt_commits(table: Table) -> Table:
    """Make pyiceberg try each commit of ``table`` once; ``run_with_retries`` owns retrying.

    pyiceberg 0.12's ``Transaction.commit_transaction`` retries a lost commit by itself
    (``commit.retry.num-retries``, default 4, sleeping with the real ``time.sleep``) and
    re-applies only the snapshot. Datapunk re-runs the whole operation instead (an upsert
    must re-read the rows it matched), bounded by ``lake.commit_retries`` with an injected
    sleep. The property is set on this in-memory copy of the metadata only: a commit sends
    updates and requirements, not the metadata, so the stored table properties (what
    Spark or Trino read) stay as they were.
    """
    properties = {**table.metadata.properties, TableProperties.COMMIT_NUM_RETRIES: "0"}
    table.metadata = table.metadata.model_copy(update={"properties": properties})
    return table


def total_records(metadata: TableMetadata) -> int:
    """Rows in the current snapshot, from its summary (0 for an empty table)."""
    snapshot = metadata.current_snapshot()
    if snapshot is None or snapshot.summary is None:
        return 0
    return int(snapshot.summary.additional_properties.get("total-records", 0))


class _LeanTransaction(Transaction):
    """pyiceberg's ``Transaction`` without a deep copy of the table metadata per read.

    pyiceberg 0.12 computes ``Transaction.table_metadata`` afresh on every access as
    ``update_table_metadata(...)``, which ends in ``model_copy(deep=True)`` of the whole
    metadata (every snapshot, the snapshot and metadata logs); one append reads it about
    24 times. The cost grows with the snapshot count (several ms a copy at 200 snapshots)
    and the garbage drives full GC passes. The metadata models are frozen, so one result
    per (base metadata, staged updates) is shared; with nothing staged, the table's own.
    """

    _lake_memo: tuple[TableMetadata, tuple[TableUpdate, ...], TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        memo = self._lake_memo
        if memo is not None and memo[0] is base and memo[1] is updates:
            return memo[2]
        metadata = update_table_metadata(base, updates) if updates else base
        self._lake_memo = (base, updates, metadata)
        return metadata


def transaction(table: Table) -> Transaction:
    """``table.transaction()`` whose metadata reads do not deep-copy (``_LeanTransaction``)."""
    return _LeanTransaction(table)
