"""Writes: append, overwrite, upsert, delete, schema evolution and rollback.

Each write is one Iceberg transaction (schema changes and data commit together or not at
all) inside ``run_with_retries``: every attempt loads the table afresh, reconciles the
data with its schema (refusals happen here, before any file is written), writes data
files, runs ``before_commit`` and commits. A failure before the commit leaves the table
as it was; its data files are orphans for maintenance.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

import pyarrow as pa
from pyiceberg.table import Table, Transaction

from actors.lake.commits import CommitResult, RetryPolicy, Sleep, run_with_retries
from actors.lake.encryption import LakeEncryption
from actors.lake.errors import SchemaMismatchError, SnapshotNotFoundError, invalid
from actors.lake.evolution import SchemaChanges, apply_changes
from actors.lake.filters import parse_filter
from actors.lake.schema import WritePlan, conform, plan_write
from actors.lake.specs import TableName, parse_table_name
from actors.lake.staging import (
    materialise,
    single_attempt_commits,
    sort_for_write,
    stage_schema_changes,
    total_records,
    transaction,
)
from actors.lake.tables import TableCatalog

BeforeCommit: TypeAlias = Callable[[], None] | None
Properties: TypeAlias = Mapping[str, str] | None
Data: TypeAlias = pa.Table | pa.RecordBatchReader
T = TypeVar("T")


@dataclass(frozen=True)
class _Staged:
    """A transaction with the write's schema changes staged and its rows conformed."""

    table: Table
    tx: Transaction
    rows: pa.Table
    plan: WritePlan


class TableWriter:
    """Commits to tables of one catalog, retried under optimistic concurrency."""

    def __init__(
        self,
        tables: TableCatalog,
        policy: RetryPolicy,
        *,
        sleep: Sleep,
        rng: random.Random,
        crypto: LakeEncryption | None = None,
    ) -> None:
        self._tables = tables
        self._policy = policy
        self._sleep = sleep
        self._rng = rng
        # Seals sensitive columns before the schema check (actors/lake/encryption.py).
        self._crypto = crypto

    def append(
        self,
        name: str,
        data: Data,
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
        snapshot_properties: Properties = None,
    ) -> CommitResult:
        """Add rows; with ``evolve`` new columns are added and narrower ones widened.

        ``snapshot_properties`` land in the snapshot summary (a run id, for one), so the
        commit itself records who made it: the basis of exactly-once ingestion.
        """
        return self._write(
            name,
            data,
            evolve=evolve,
            before_commit=before_commit,
            replace=None,
            properties=snapshot_properties,
        )

    def overwrite(
        self,
        name: str,
        data: Data,
        filter: str | None = None,
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
        snapshot_properties: Properties = None,
    ) -> CommitResult:
        """Replace all rows (``filter`` None) or the rows matching ``filter`` with ``data``."""
        replace = filter or ""
        return self._write(
            name,
            data,
            evolve=evolve,
            before_commit=before_commit,
            replace=replace,
            properties=snapshot_properties,
        )

    def upsert(
        self,
        name: str,
        data: Data,
        key_columns: list[str],
        *,
        evolve: bool = True,
        before_commit: BeforeCommit = None,
        snapshot_properties: Properties = None,
    ) -> CommitResult:
        """Update rows whose key matches a row of ``data`` (if changed), insert the others."""
        parsed, rows = parse_table_name(name), materialise(data)
        _check_keys(parsed.full, rows, key_columns)

        def attempt() -> tuple[Table, int, int]:
            staged = self._stage(parsed, rows, evolve)
            if self._crypto is not None:  # before anything is written
                self._crypto.check_keys(parsed.full, staged.table.properties, list(key_columns))
            _refuse_partial_rows(parsed.full, staged.table, rows)
            in_table_order = staged.rows.select(staged.tx.table_metadata.schema().column_names)
            with _quiet_no_match():
                result = staged.tx.upsert(
                    in_table_order,
                    join_cols=list(key_columns),
                    snapshot_properties=dict(snapshot_properties or {}),
                )
            table = self._commit(staged.tx, before_commit)
            return table, result.rows_updated, result.rows_inserted

        (table, updated, inserted), attempts = self._retry(parsed, attempt)
        return CommitResult(
            table=parsed.full,
            snapshot_id=table.metadata.current_snapshot_id,
            rows=updated + inserted,
            attempts=attempts,
            rows_updated=updated,
            rows_inserted=inserted,
        )

    def delete(self, name: str, filter: str, *, before_commit: BeforeCommit = None) -> CommitResult:
        """Remove the rows matching ``filter`` (copy-on-write: affected files are rewritten)."""
        parsed = parse_table_name(name)
        if not isinstance(filter, str) or not filter.strip():
            raise invalid(
                "filter", filter, "a row filter such as \"region = 'eu'\"; use 'true' for all"
            )

        def attempt() -> tuple[Table, int]:
            table = single_attempt_commits(self._tables.load(parsed)[1])
            if self._crypto is not None:
                self._crypto.check_filter(parsed.full, table.properties, filter)
            expression = parse_filter(filter, table.schema(), parsed.full)
            before = total_records(table.metadata)
            tx = transaction(table)
            with _quiet_no_match():
                tx.delete(expression)
            return self._commit(tx, before_commit), before

        (table, before), attempts = self._retry(parsed, attempt)
        return CommitResult(
            table=parsed.full,
            snapshot_id=table.metadata.current_snapshot_id,
            rows=0,
            attempts=attempts,
            rows_deleted=before - total_records(table.metadata),
        )

    def evolve_schema(self, name: str, changes: SchemaChanges) -> CommitResult:
        """Add, rename and widen columns in one schema change."""
        parsed = parse_table_name(name)

        def attempt() -> Table:
            table = single_attempt_commits(self._tables.load(parsed)[1])
            tx = transaction(table)
            apply_changes(tx, changes, parsed.full)
            return tx.commit_transaction()

        table, attempts = self._retry(parsed, attempt)
        return CommitResult(parsed.full, table.metadata.current_snapshot_id, 0, attempts)

    def rollback(self, name: str, snapshot_id: int) -> CommitResult:
        """Make ``snapshot_id`` current again (a later snapshot can be restored the same way)."""
        parsed = parse_table_name(name)

        def attempt() -> Table:
            table = single_attempt_commits(self._tables.load(parsed)[1])
            if table.snapshot_by_id(snapshot_id) is None:
                raise SnapshotNotFoundError(
                    table=parsed.full,
                    snapshot=str(snapshot_id),
                    fix=f"pick one from `datapunk lake history {parsed.full}`",
                )
            table.manage_snapshots().set_current_snapshot(snapshot_id=snapshot_id).commit()
            return table

        table, attempts = self._retry(parsed, attempt)
        return CommitResult(parsed.full, table.metadata.current_snapshot_id, 0, attempts)

    # --- shared steps ----------------------------------------------------------

    def _write(
        self,
        name: str,
        data: Data,
        *,
        evolve: bool,
        before_commit: BeforeCommit,
        replace: str | None,
        properties: Properties,
    ) -> CommitResult:
        """Append (``replace`` None) or overwrite the rows matching ``replace`` ("" = all)."""
        parsed, rows = parse_table_name(name), materialise(data)

        def attempt() -> tuple[Table, int]:
            staged = self._stage(parsed, rows, evolve)
            before = total_records(staged.table.metadata)
            if replace is None:
                if not rows.num_rows and not staged.plan.changes_schema:
                    return staged.table, before  # nothing to commit: no empty snapshot
                staged.tx.append(staged.rows, snapshot_properties=dict(properties or {}))
            else:
                if self._crypto is not None:
                    self._crypto.check_filter(parsed.full, staged.table.properties, replace)
                where = parse_filter(replace, staged.table.schema(), parsed.full)
                with _quiet_no_match():
                    staged.tx.overwrite(
                        staged.rows,
                        overwrite_filter=where,
                        snapshot_properties=dict(properties or {}),
                    )
            return self._commit(staged.tx, before_commit), before

        (table, before), attempts = self._retry(parsed, attempt)
        return CommitResult(
            table=parsed.full,
            snapshot_id=table.metadata.current_snapshot_id,
            rows=rows.num_rows,
            attempts=attempts,
            rows_deleted=before + rows.num_rows - total_records(table.metadata),
        )

    def _stage(self, parsed: TableName, rows: pa.Table, evolve: bool) -> _Staged:
        """Load, reconcile (may refuse), open a transaction and stage schema changes."""
        table = single_attempt_commits(self._tables.load(parsed)[1])
        recorded: dict[str, str] = {}
        if self._crypto is not None:
            stored = table.schema().column_names
            rows, recorded = self._crypto.seal(parsed.full, table.properties, rows, stored)
        plan = plan_write(parsed.full, table.schema(), rows.schema, evolve=evolve)
        conformed = conform(rows, plan)
        tx = transaction(table)
        if recorded:  # a sensitive column's first data: its type, with the same commit
            tx.set_properties(recorded)
        stage_schema_changes(tx, plan)
        return _Staged(table, tx, sort_for_write(conformed, tx.table_metadata), plan)

    @staticmethod
    def _commit(tx: Transaction, before_commit: BeforeCommit) -> Table:
        if before_commit is not None:
            before_commit()
        return tx.commit_transaction()

    def _retry(self, parsed: TableName, attempt: Callable[[], T]) -> tuple[T, int]:
        return run_with_retries(
            parsed.full, attempt, self._policy, sleep=self._sleep, rng=self._rng
        )


def _check_keys(table: str, rows: pa.Table, key_columns: list[str]) -> None:
    if not key_columns:
        raise invalid("key_columns", key_columns, "name at least one key column")
    for column in key_columns:
        if column not in rows.column_names:
            available = ", ".join(rows.column_names)
            raise invalid("key_columns", column, f"a column of the data for {table}: {available}")
    unique = rows.select(key_columns).group_by(key_columns).aggregate([]).num_rows
    if unique != rows.num_rows:
        raise invalid(
            "data",
            f"{rows.num_rows - unique} duplicate key(s) on {key_columns}",
            "each key may appear once in an upsert; deduplicate the rows first",
        )


def _refuse_partial_rows(table: str, current: Table, rows: pa.Table) -> None:
    """An upsert replaces whole rows, so a column left out would silently become null."""
    for field in current.schema().fields:
        if field.name not in rows.column_names:
            raise SchemaMismatchError(
                table=table,
                column=field.name,
                table_type=str(field.field_type),
                incoming_type="no such column",
                fix="an upsert replaces whole rows: include every column (null where unknown)",
            )


@contextmanager
def _quiet_no_match() -> Iterator[None]:
    """pyiceberg warns when a delete matches nothing; ``rows_deleted == 0`` says so already."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        yield
