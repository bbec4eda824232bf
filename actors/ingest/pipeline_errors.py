"""Typed errors of pipeline files, transforms, expectations and schema drift.

Each names the value that was wrong and the fix, as ``cluster/errors.py`` asks. They
live apart from any ``actors/ingest/errors.py`` the sources may grow (as Lake's
``sql_errors.py`` does), so the modules can be written side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from actors.lake.errors import UnknownColumnError
from cluster.errors import ConfigError, DatapunkError, InvalidInputError, NotFoundError

_MAX_LISTED = 20


def listed(values: Iterable[Any], limit: int = _MAX_LISTED) -> str:
    """``a, b, c`` (at most ``limit``, then ``(and N more)``); ``(none)`` when empty."""
    items = [str(v) for v in values]
    shown = ", ".join(items[:limit]) or "(none)"
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


class PipelineConfigError(ConfigError):
    """A pipeline file that does not parse or validate; names the line and key path."""

    code: ClassVar[str] = "invalid_pipeline"

    def __init__(
        self, *, source: str, line: int | None, key: str, problem: str, fix: str, more: int = 0
    ) -> None:
        where = f"pipeline {source}" + (f" line {line}" if line is not None else "")
        tail = f" (and {more} more problem{'s' if more != 1 else ''})" if more else ""
        DatapunkError.__init__(
            self,
            f"{where}, {key}: {problem}; fix: {fix}{tail}",
            source=source,
            line=line,
            key=key,
            problem=problem,
        )


class ColumnNotFoundError(UnknownColumnError):
    """A transform or expectation names a column the data lacks (``unknown_column``)."""

    def __init__(self, *, column: str, available: Iterable[str], role: str) -> None:
        names = list(available)
        DatapunkError.__init__(
            self,
            f"{role} names column {column!r}, which the data does not have; "
            f"available columns: {listed(names)}",
            column=column,
            available=names,
        )


class UnsafeExpressionError(InvalidInputError):
    """An expression that could reach beyond its one row: files, tables, statements."""

    code: ClassVar[str] = "unsafe_expression"

    def __init__(self, *, expr: str, reason: str) -> None:
        DatapunkError.__init__(
            self,
            f"expression {expr!r} is not allowed: {reason}; fix: write one per-row SQL "
            "expression over the batch's columns (e.g. amount * 1.2, lower(email))",
            expr=expr,
            reason=reason,
        )


class ExpressionError(InvalidInputError):
    """An expression that does not parse, bind or evaluate against the batch."""

    code: ClassVar[str] = "invalid_expression"

    def __init__(
        self, *, expr: str, role: str, reason: str, available: Sequence[str] | None = None
    ) -> None:
        columns = "" if available is None else f"; columns available: {listed(available)}"
        DatapunkError.__init__(
            self,
            f"{role}: expression {expr!r} failed: {reason}; fix: correct the expression "
            f"(a DuckDB SQL expression over one row{columns})",
            expr=expr,
            reason=reason,
        )


class CastFailedError(InvalidInputError):
    """A cast transform met a value the target type cannot hold."""

    code: ClassVar[str] = "cast_failed"

    def __init__(self, *, role: str, column: str, example: Any, source: str, target: str) -> None:
        shown = "(unknown value)" if example is None else repr(example)
        DatapunkError.__init__(
            self,
            f"{role}: column {column!r} ({source}) holds {shown}, which cannot be cast to "
            f"{target}; fix: clean or filter such values first (op: filter), or cast to a "
            "type that holds them (e.g. string)",
            column=column,
            example=example,
            target=target,
        )


class LookupTableError(InvalidInputError):
    """A lookup join whose table cannot serve it: missing, or several rows per key."""

    code: ClassVar[str] = "invalid_lookup"

    def __init__(self, *, role: str, table: str, reason: str, fix: str) -> None:
        DatapunkError.__init__(
            self, f"{role}: lookup table {table!r} {reason}; fix: {fix}", table=table
        )


class MissingSaltError(NotFoundError):
    """A mask transform names a salt environment variable the runner did not supply."""

    code: ClassVar[str] = "missing_salt"

    def __init__(self, *, role: str, env: str) -> None:
        DatapunkError.__init__(
            self,
            f"{role}: salt environment variable {env!r} is not set; fix: export {env} on "
            "every node that runs the pipeline, or drop salt_env (unsalted hashes of "
            "low-entropy values can be reversed by guessing)",
            env=env,
        )


class ExpectationConfigError(InvalidInputError):
    """An expectation that cannot apply to the column it names (wrong type, bad bound)."""

    code: ClassVar[str] = "invalid_expectation"

    def __init__(self, *, rule: str, reason: str, fix: str) -> None:
        DatapunkError.__init__(
            self, f"expectation {rule!r} cannot be checked: {reason}; fix: {fix}", rule=rule
        )


class ExpectationFailedError(DatapunkError):
    """An expectation with ``action: fail`` found violations; the run must stop."""

    code: ClassVar[str] = "expectation_failed"
    http_status: ClassVar[int] = 422

    def __init__(self, *, rule: str, detail: str, count: int, failures: Sequence[str]) -> None:
        others = len(failures) - 1
        also = f" ({others} more failing rule{'s' if others != 1 else ''})" if others > 0 else ""
        super().__init__(
            f"expectation {rule!r} failed (action: fail): {detail}{also}; fix: correct the "
            "source data, or set the rule's action to quarantine (bad rows go to "
            "<sink>__quarantine) or warn",
            rule=rule,
            count=count,
            failures=list(failures),
        )


class SchemaDriftError(DatapunkError):
    """The data has columns the sink table lacks and the pipeline does not evolve it."""

    code: ClassVar[str] = "schema_drift"
    http_status: ClassVar[int] = 422

    def __init__(self, *, table: str, columns: Sequence[str]) -> None:
        super().__init__(
            f"the data has new columns {listed(columns)} that table {table!r} lacks; nothing "
            "was written. Fix: set schema_evolution: add_columns in the pipeline to add them, "
            "on_drift: quarantine to divert such batches, or drop them (op: select)",
            table=table,
            columns=list(columns),
        )
