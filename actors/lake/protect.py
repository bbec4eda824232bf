"""Declaring columns sensitive after a table exists (``LakeCore.protect_columns``).

A column the table does not have yet is only named in ``datapunk.sensitive``: its first
data arrives encrypted. A column that already holds plaintext is rewritten in one
commit: its rows are read, the column is replaced by a ``binary`` one of the same name
and every row is written back with it encrypted. Older snapshots keep their plaintext
files until they are expired and their files removed; the answer says so.

The rewrite reads the whole current snapshot into memory: protect large tables before
they fill, or in a maintenance window with the memory for it.
"""

from __future__ import annotations

from typing import Any

from pyiceberg.table import Table
from pyiceberg.types import BinaryType

from actors.lake.encryption import (
    SENSITIVE_PROPERTY,
    LakeEncryption,
    check_sensitive_names,
    encrypted_columns,
    sensitive_columns,
)
from actors.lake.errors import invalid
from actors.lake.staging import single_attempt_commits, transaction


def _refuse_layout_columns(name: str, table: Table, columns: list[str]) -> None:
    """A partition or sort source cannot be replaced, and would leak order or values."""
    schema = table.schema()
    used = {schema.find_column_name(f.source_id) for f in table.spec().fields}
    used |= {schema.find_column_name(f.source_id) for f in table.sort_order().fields}
    for column in columns:
        if column in used:
            raise invalid(
                "columns",
                column,
                f"a column {name} is not partitioned or sorted by; recreate the table "
                "without that partition or sort term to encrypt it",
            )


def protect_columns(
    crypto: LakeEncryption, name: str, table: Table, columns: list[str]
) -> dict[str, Any]:
    """Add ``columns`` to ``name``'s sensitive columns, encrypting what they already hold."""
    check_sensitive_names(name, columns)
    if not columns:
        raise invalid("columns", columns, "name at least one column")
    current = sensitive_columns(table.properties)
    wanted = list(dict.fromkeys(columns))
    new = [c for c in wanted if c not in current]
    # Plaintext to rewrite: named columns the table holds that are not encrypted yet
    # (declared just now, or declared before but added as plaintext by hand).
    sealed_already = encrypted_columns(table.properties)
    present = [c for c in wanted if c in table.schema().column_names and c not in sealed_already]
    _refuse_layout_columns(name, table, present)
    declared = {SENSITIVE_PROPERTY: ",".join([*current, *new])}
    table = single_attempt_commits(table)
    tx = transaction(table)
    rewritten = 0
    if present:
        rows = table.scan().to_arrow()
        sealed, recorded = crypto.seal(name, {**table.properties, **declared}, rows)
        with tx.update_schema() as update:
            for column in present:
                update.delete_column(column)
        with tx.update_schema() as update:
            for column in present:  # optional: Iceberg adds no required column to data
                update.add_column(column, BinaryType())
        tx.set_properties({**declared, **recorded})
        if rows.num_rows:
            order = tx.table_metadata.schema().column_names
            tx.overwrite(sealed.select(order))
            rewritten = rows.num_rows
    else:
        tx.set_properties(declared)
    older = len(table.snapshots()) if rewritten else 0  # each may hold plaintext files
    committed = tx.commit_transaction() if (new or present) else table
    return {
        "table": name,
        "sensitive": sensitive_columns(committed.properties),
        "encrypted": sorted(encrypted_columns(committed.properties)),
        "rewritten_columns": present,
        "rows_rewritten": rewritten,
        "snapshot_id": committed.metadata.current_snapshot_id,
        "plaintext_in_older_snapshots": older,
        "fix": (
            f"expire the {older} older snapshot(s) and remove their files: "
            f"`datapunk lake compact {name} --expire-older-than-hours 0 --remove-orphans`"
            if older
            else ""
        ),
    }
