"""Explicit schema evolution: add, rename and widen columns, checked before pyiceberg sees them.

Iceberg tracks columns by field id, so a rename keeps the data and old files read under
the new name; a widening is one of Iceberg's lossless promotions. Dropping or narrowing
a column is not offered here: both would lose data other readers expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.schema import Schema
from pyiceberg.table import Transaction

from actors.lake.errors import SchemaMismatchError, invalid
from actors.lake.filters import check_column
from actors.lake.schema import promotes
from actors.lake.specs import parse_type

WIDENINGS = "int -> long, float -> double, decimal(P, S) -> decimal(P2, S) with P2 > P"


@dataclass(frozen=True)
class SchemaChanges:
    """Column changes by name; types are strings such as ``"long"`` or ``"decimal(12, 2)"``."""

    add: dict[str, str] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    widen: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.add or self.rename or self.widen)


def check_changes(schema: Schema, changes: SchemaChanges, table: str) -> None:
    """Refuse, naming the column, any change that does not fit ``schema``."""
    if changes.empty:
        raise invalid("changes", None, "give columns to add, rename or widen")
    existing = {f.name for f in schema.fields}
    for name, type_text in changes.add.items():
        parse_type(type_text, field=f"type of new column {name!r}")
        if name in existing:
            raise invalid("add", name, f"table {table!r} already has this column; pick a new name")
    renamed_to = set(changes.rename.values())
    for old, new in changes.rename.items():
        check_column(old, schema, table, role="rename")
        if not new.strip() or new in existing or new in changes.add:
            raise invalid("rename", f"{old} -> {new}", "the new name must be free and non-empty")
    if len(renamed_to) != len(changes.rename):
        raise invalid("rename", changes.rename, "two columns cannot take the same new name")
    for name, type_text in changes.widen.items():
        _check_widen(schema, table, name, type_text)


def apply_changes(tx: Transaction, changes: SchemaChanges, table: str) -> None:
    """Stage ``changes`` in ``tx`` after checking them against its current schema."""
    check_changes(tx.table_metadata.schema(), changes, table)
    with tx.update_schema() as update:
        for name, wider in changes.widen.items():
            update.update_column(name, field_type=parse_type(wider))
        for old, new in changes.rename.items():
            update.rename_column(old, new)
        for name, type_text in changes.add.items():
            update.add_column(name, parse_type(type_text))


def _check_widen(schema: Schema, table: str, name: str, type_text: str) -> None:
    check_column(name, schema, table, role="widen")
    wider = parse_type(type_text, field=f"new type of column {name!r}")
    current = schema.find_field(name).field_type
    if current != wider and not promotes(current, wider):
        raise SchemaMismatchError(
            table=table,
            column=name,
            table_type=str(current),
            incoming_type=f"requested type {wider}",
            fix=f"Iceberg widens only {WIDENINGS}; add a new column of type {wider} instead",
        )
