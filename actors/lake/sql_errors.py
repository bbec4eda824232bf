"""Typed errors of Lake SQL, result encoding, file reading, result caching and maintenance.

Each names the value that was wrong and the fix, as ``cluster/errors.py`` asks. They
live apart from ``actors/lake/errors.py`` (table operations) so the two modules can be
written side by side; either may absorb the other later without changing a class name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from cluster.errors import DatapunkError, NotFoundError

_EXCERPT_CHARS = 120


def query_excerpt(query: str, limit: int = _EXCERPT_CHARS) -> str:
    """The query on one line, cut to ``limit`` characters, for messages."""
    flat = " ".join(query.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


class SqlError(DatapunkError):
    """The query does not parse or does not bind (unknown column, type mismatch, ...)."""

    code: ClassVar[str] = "sql_invalid"
    http_status: ClassVar[int] = 422

    def __init__(self, *, query: str, reason: str) -> None:
        excerpt = query_excerpt(query)
        super().__init__(
            f"SQL error: {reason} (query: {excerpt!r}); fix the query and send it again",
            query=excerpt,
            reason=reason,
        )


class StatementNotAllowedError(DatapunkError):
    """The SQL is not one read-only query: a write, a setting, a file access, ..."""

    code: ClassVar[str] = "sql_not_allowed"
    http_status: ClassVar[int] = 422

    def __init__(self, *, statement: str, query: str, fix: str = "") -> None:
        excerpt = query_excerpt(query)
        hint = fix or "send one read-only SELECT (or WITH ... SELECT, VALUES, FROM ...) query"
        super().__init__(
            f"{statement} is not allowed in Lake SQL (query: {excerpt!r}); {hint}",
            statement=statement,
            query=excerpt,
        )


class UnknownTableError(NotFoundError):
    """The query names a table that is not in the Lake (or not visible to the caller)."""

    def __init__(self, *, name: str, known: Sequence[str]) -> None:
        listed = ", ".join(sorted(known)[:20]) or "none"
        more = f" (and {len(known) - 20} more)" if len(known) > 20 else ""
        super().__init__(
            kind="table",
            name=name,
            fix=f"name one of the known tables as namespace.table: {listed}{more}",
        )


class ResultTooLargeError(DatapunkError):
    """A scan or SQL result is over the row or byte limit."""

    code: ClassVar[str] = "result_too_large"
    http_status: ClassVar[int] = 422

    def __init__(self, *, limit_name: str, limit: int, fix: str) -> None:
        super().__init__(
            f"the result is over the limit of {limit} {limit_name}; {fix}",
            limit_name=limit_name,
            limit=limit,
        )


class QueryTimeoutError(DatapunkError):
    """A query ran past its time budget and was interrupted."""

    code: ClassVar[str] = "query_timeout"
    http_status: ClassVar[int] = 504

    def __init__(self, *, timeout_s: float, query: str) -> None:
        excerpt = query_excerpt(query)
        super().__init__(
            f"the query ran longer than {timeout_s:g} s and was stopped (query: {excerpt!r}); "
            "filter on fewer rows, aggregate, or raise lake.sql_timeout_s",
            timeout_s=timeout_s,
            query=excerpt,
        )


class MalformedFileError(DatapunkError):
    """An uploaded or ingested file cannot be read in the format it claims."""

    code: ClassVar[str] = "malformed_file"
    http_status: ClassVar[int] = 422

    def __init__(self, *, path: str, fmt: str, problem: str, fix: str) -> None:
        super().__init__(
            f"cannot read {path!r} as {fmt}: {problem}; {fix}",
            path=path,
            fmt=fmt,
            problem=problem,
        )


class UnsupportedEncodingError(DatapunkError):
    """A result cannot be written in the format asked for (e.g. nested columns as CSV)."""

    code: ClassVar[str] = "unsupported_encoding"
    http_status: ClassVar[int] = 422

    def __init__(self, *, fmt: str, column: str, arrow_type: str, fix: str) -> None:
        super().__init__(
            f"column {column!r} of type {arrow_type} cannot be written as {fmt}; {fix}",
            fmt=fmt,
            column=column,
            arrow_type=arrow_type,
        )


class CompactionConflictError(DatapunkError):
    """Compaction lost every optimistic race against concurrent writers and gave up."""

    code: ClassVar[str] = "commit_conflict"
    http_status: ClassVar[int] = 409

    def __init__(self, *, table: str, attempts: int, reason: str) -> None:
        super().__init__(
            f"compaction of {table} gave up after {attempts} attempts: {reason}; "
            "no data changed; run it again when writes to the table are quieter",
            table=table,
            attempts=attempts,
            reason=reason,
        )


class OrphanScanError(DatapunkError):
    """Orphan-file removal refused to run because its view of the table looked wrong."""

    code: ClassVar[str] = "orphan_scan_refused"
    http_status: ClassVar[int] = 409

    def __init__(self, *, location: str, reason: str) -> None:
        super().__init__(
            f"refusing to remove orphan files under {location!r}: {reason}; nothing was deleted",
            location=location,
            reason=reason,
        )
