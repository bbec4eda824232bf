"""Typed Lake errors: each names the table, column or value that was wrong and the fix.

They subclass the cluster errors, so the gateway maps them to HTTP statuses through
``http_status`` and the CLI prints ``message`` on one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cluster.errors import DatapunkError, InvalidInputError, NotFoundError

LIST_TABLES_FIX = "run `datapunk lake ls` to see the tables"


def _names(values: Iterable[str]) -> str:
    listed = ", ".join(sorted(values))
    return listed or "(none)"


class TableNotFoundError(NotFoundError):
    """No table of that name in the catalog."""

    code = "table_not_found"

    def __init__(self, *, table: str) -> None:
        super().__init__(kind="table", name=table, fix=LIST_TABLES_FIX)
        self.fields["table"] = table


class NamespaceNotFoundError(NotFoundError):
    """No namespace of that name in the catalog."""

    code = "namespace_not_found"

    def __init__(self, *, namespace: str) -> None:
        super().__init__(
            kind="namespace",
            name=namespace,
            fix=f"create it first (`datapunk lake namespace create {namespace}`) "
            f"or {LIST_TABLES_FIX}",
        )


class SnapshotNotFoundError(NotFoundError):
    """A snapshot id or a point in time the table has no snapshot for."""

    code = "snapshot_not_found"

    def __init__(self, *, table: str, snapshot: str, fix: str) -> None:
        super().__init__(kind=f"snapshot of table {table!r}", name=snapshot, fix=fix)
        self.fields["table"] = table


class TableExistsError(DatapunkError):
    """Creating a table whose name is taken."""

    code = "table_exists"
    http_status = 409

    def __init__(self, *, table: str) -> None:
        super().__init__(
            f"table {table!r} already exists; pick another name, append to it, "
            "or drop it first (`datapunk lake drop`)",
            table=table,
        )


class NamespaceExistsError(DatapunkError):
    """Creating a namespace that exists."""

    code = "namespace_exists"
    http_status = 409

    def __init__(self, *, namespace: str) -> None:
        super().__init__(
            f"namespace {namespace!r} already exists; use it, or pass exist_ok=True",
            namespace=namespace,
        )


class NamespaceNotEmptyError(DatapunkError):
    """Dropping a namespace that still holds tables."""

    code = "namespace_not_empty"
    http_status = 409

    def __init__(self, *, namespace: str, tables: list[str]) -> None:
        super().__init__(
            f"namespace {namespace!r} still holds tables {_names(tables)}; drop them first",
            namespace=namespace,
            tables=tables,
        )


class SchemaMismatchError(InvalidInputError):
    """Data whose schema cannot be reconciled with the table's; nothing was written."""

    code = "schema_mismatch"

    def __init__(
        self, *, table: str, column: str, table_type: str, incoming_type: str, fix: str
    ) -> None:
        DatapunkError.__init__(
            self,
            f"column {column!r} of table {table!r} is {table_type} but the data has "
            f"{incoming_type}; nothing was written. Fix: {fix}",
            table=table,
            column=column,
            table_type=table_type,
            incoming_type=incoming_type,
        )


class UnknownColumnError(InvalidInputError):
    """A projection, filter, key or evolution names a column the table lacks."""

    code = "unknown_column"

    def __init__(self, *, table: str, column: str, available: Iterable[str], role: str) -> None:
        available = list(available)
        DatapunkError.__init__(
            self,
            f"{role} names column {column!r}, which table {table!r} does not have; "
            f"available columns: {_names(available)}",
            table=table,
            column=column,
            available=available,
        )


class InvalidFilterError(InvalidInputError):
    """A row filter that does not parse, or does not fit the table's columns and types."""

    code = "invalid_filter"

    def __init__(self, *, filter_text: str, reason: str) -> None:
        DatapunkError.__init__(
            self,
            f"invalid row filter {filter_text!r}: {reason}. "
            "Fix: write it like \"id > 10 and region = 'eu'\" (strings in single quotes)",
            filter=filter_text,
            reason=reason,
        )


class CommitConflictError(DatapunkError):
    """Optimistic commits lost the race every time; the table holds the other writers' data."""

    code = "commit_conflict"
    http_status = 409

    def __init__(self, *, table: str, attempts: int, reason: str) -> None:
        super().__init__(
            f"table {table!r} was changed by other writers during each of {attempts} "
            f"commit attempts ({reason}); nothing of this write was committed. Fix: retry "
            "later, or raise lake.commit_retries (DATAPUNK_LAKE__COMMIT_RETRIES)",
            table=table,
            attempts=attempts,
        )


def invalid(field: str, value: Any, allowed: str) -> InvalidInputError:
    """Shorthand for the plain invalid-argument error (bad token, bad name, bad type)."""
    return InvalidInputError(field=field, value=value, allowed=allowed)
