"""Pipeline steps as models: transforms (``op``) and expectations (``rule``).

Expressions (``derive.expr``, ``filter.expr``, ``sql.predicate``) are vetted by the
expression sandbox when the file is loaded, so an unsafe one is refused with its line
number before any data is read.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import AfterValidator, Field, field_validator, model_validator

from actors.ingest.spec_base import (
    LakeTable,
    NewColumn,
    Spec,
    SqlExpression,
    distinct,
    not_reserved,
)
from actors.lake.specs import parse_type
from cluster.errors import DatapunkError

Column = Annotated[str, Field(min_length=1)]
Scalar = bool | int | float | datetime | date | str
Action = Literal["warn", "quarantine", "fail"]
_NO_CAST_TYPES = ("uuid", "fixed")
_ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
TYPES = (
    "boolean, int, long, float, double, decimal(P, S), date, time, timestamp, timestamptz, "
    "string or binary"
)


# ---------------------------------------------------------------- transforms


def _cast_type(type_name: str) -> str:
    try:
        parsed = str(parse_type(type_name))
    except DatapunkError:
        parsed = ""
    if not parsed or parsed.startswith(_NO_CAST_TYPES):
        raise ValueError(f"{type_name!r} is not a type a column can be cast to; fix: use {TYPES}")
    return type_name


CastType = Annotated[str, AfterValidator(_cast_type)]


class SelectOp(Spec):
    """Keep these columns, in this order; drop the rest."""

    op: Literal["select"]
    columns: list[Column] = Field(min_length=1, description="Columns to keep, in order.")

    @field_validator("columns")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        return distinct(v, "column")


class RenameOp(Spec):
    """Rename columns, all at once (``a: b, b: a`` swaps them)."""

    op: Literal["rename"]
    mapping: dict[Column, Column] = Field(min_length=1, description="old name: new name.")

    @field_validator("mapping")
    @classmethod
    def _targets(cls, v: dict[str, str]) -> dict[str, str]:
        distinct(list(v.values()), "new name")
        for new in v.values():
            not_reserved(new)
        return v


class CastOp(Spec):
    """Cast columns to Lake types; a value that does not fit stops the run, naming it."""

    op: Literal["cast"]
    columns: dict[Column, CastType] = Field(
        min_length=1, description="column: type (long, double, decimal(10, 2), timestamptz...)."
    )


class DeriveOp(Spec):
    """Add (or replace) a column computed by a DuckDB SQL scalar expression."""

    op: Literal["derive"]
    column: NewColumn = Field(description="Name of the new or replaced column.")
    expr: SqlExpression = Field(description="DuckDB SQL expression over one row: qty * price.")


class FilterOp(Spec):
    """Keep rows where a DuckDB SQL boolean expression is true (NULL drops the row)."""

    op: Literal["filter"]
    expr: SqlExpression = Field(description="DuckDB SQL boolean expression: status <> 'test'.")


class DedupeOp(Spec):
    """Drop rows whose key repeats within the batch, keeping the first or last."""

    op: Literal["dedupe"]
    keys: list[Column] = Field(min_length=1, description="Columns that identify a row.")
    keep: Literal["first", "last"] = Field("first", description="Which duplicate survives.")

    @field_validator("keys")
    @classmethod
    def _once(cls, v: list[str]) -> list[str]:
        return distinct(v, "key")


class LookupOp(Spec):
    """Join columns from a Lake table on key columns (the table must be unique on them)."""

    op: Literal["lookup"]
    table: LakeTable = Field(description="Lake table to look values up in (namespace.table).")
    on: list[Column] = Field(min_length=1, description="Key columns, named alike on both sides.")
    columns: list[Column] = Field(min_length=1, description="Columns to bring over.")
    how: Literal["left", "inner"] = Field(
        "left", description="left keeps rows with no match (nulls); inner drops them."
    )

    @model_validator(mode="after")
    def _disjoint(self) -> LookupOp:
        distinct(self.on, "key")
        distinct(self.columns, "column")
        both = sorted(set(self.on) & set(self.columns))
        if both:
            raise ValueError(f"columns {both} are also keys (on); fix: list each in one place only")
        return self


class MaskOp(Spec):
    """Hide PII: ``hash`` = hex SHA-256 of salt + value, ``redact`` = ``'***'``.

    Unsalted hashes of low-entropy values (emails, phone numbers) can be reversed by
    hashing guesses; set ``salt_env`` to the name of a secret environment variable.
    """

    op: Literal["mask"]
    columns: list[Column] = Field(min_length=1, description="Columns to mask.")
    method: Literal["hash", "redact"] = Field("hash", description="hash or redact.")
    salt_env: str | None = Field(
        None, pattern=_ENV_NAME_PATTERN, description="Environment variable holding the salt."
    )

    @model_validator(mode="after")
    def _salt_needs_hash(self) -> MaskOp:
        distinct(self.columns, "column")
        if self.method == "redact" and self.salt_env is not None:
            raise ValueError("salt_env applies to method hash only; fix: remove salt_env")
        return self


Transform = Annotated[
    SelectOp | RenameOp | CastOp | DeriveOp | FilterOp | DedupeOp | LookupOp | MaskOp,
    Field(discriminator="op"),
]


# ---------------------------------------------------------------- expectations


class _Rule(Spec):
    name: str | None = Field(None, min_length=1, description="Label in reports and _dq_rule.")
    action: Action = Field("fail", description="warn, quarantine (rows) or fail (the run).")

    @property
    def label(self) -> str:
        """The rule's name in counts, messages and ``_dq_rule``."""
        return self.name or self._default_label()

    def _default_label(self) -> str:
        raise NotImplementedError


class _TableRule(_Rule):
    """A rule about the whole batch: it can warn or fail, but has no rows to quarantine."""

    @model_validator(mode="after")
    def _no_quarantine(self) -> _TableRule:
        if self.action == "quarantine":
            rule = getattr(self, "rule", "this rule")
            raise ValueError(
                f"{rule} judges the whole batch, so it cannot quarantine rows; "
                "fix: use action warn or fail"
            )
        return self


class NotNullRule(_Rule):
    rule: Literal["not_null"]
    column: Column

    def _default_label(self) -> str:
        return f"not_null({self.column})"


class UniqueRule(_Rule):
    """Every row of a repeated key violates it; rows with a null key column do not."""

    rule: Literal["unique"]
    columns: list[Column] = Field(min_length=1, description="Columns that must be unique.")

    def _default_label(self) -> str:
        return f"unique({', '.join(self.columns)})"


class RangeRule(_Rule):
    """``min <= value <= max`` (either bound optional); nulls pass (pair with not_null)."""

    rule: Literal["range"]
    column: Column
    min: Scalar | None = Field(None, description="Lowest allowed value, inclusive.")
    max: Scalar | None = Field(None, description="Highest allowed value, inclusive.")

    @model_validator(mode="after")
    def _bounds(self) -> RangeRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both; fix: add min: or max:")
        numbers = (int, float)
        if isinstance(self.min, numbers) and isinstance(self.max, numbers) and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; fix: swap them")
        return self

    def _default_label(self) -> str:
        return f"range({self.column})"


class RegexRule(_Rule):
    """Values contain a match of an RE2 pattern (anchor with ^...$); nulls pass."""

    rule: Literal["regex"]
    column: Column
    pattern: str = Field(min_length=1, description="RE2 regular expression.")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            pc.match_substring_regex(pa.array([""], pa.string()), pattern=v)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"{v!r} is not an RE2 regular expression ({exc}); fix: correct the pattern"
            ) from None
        return v

    def _default_label(self) -> str:
        return f"regex({self.column})"


class AllowedValuesRule(_Rule):
    """Values are among a list; nulls pass."""

    rule: Literal["allowed_values"]
    column: Column
    values: list[Scalar] = Field(min_length=1, description="The allowed values.")

    def _default_label(self) -> str:
        return f"allowed_values({self.column})"


class SqlRule(_Rule):
    """A row passes when a DuckDB SQL boolean expression is true (NULL fails it)."""

    rule: Literal["sql"]
    predicate: SqlExpression = Field(description="DuckDB SQL boolean expression: qty > 0.")

    def _default_label(self) -> str:
        short = " ".join(self.predicate.split())
        return f"sql({short[:60]})"


class RowCountRule(_TableRule):
    rule: Literal["row_count"]
    min: int | None = Field(None, ge=0, description="Fewest rows a batch may have.")
    max: int | None = Field(None, ge=0, description="Most rows a batch may have.")

    @model_validator(mode="after")
    def _bounds(self) -> RowCountRule:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both; fix: add min: or max:")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}; fix: swap them")
        return self

    def _default_label(self) -> str:
        return "row_count"


class FreshnessRule(_TableRule):
    """The newest value of a timestamp or date column is at most ``max_age_s`` old."""

    rule: Literal["freshness"]
    column: Column
    max_age_s: float = Field(gt=0, description="Oldest the newest value may be, in seconds.")

    def _default_label(self) -> str:
        return f"freshness({self.column})"


Expectation = Annotated[
    NotNullRule
    | UniqueRule
    | RangeRule
    | RegexRule
    | AllowedValuesRule
    | SqlRule
    | RowCountRule
    | FreshnessRule,
    Field(discriminator="rule"),
]
ROW_RULES = (NotNullRule, UniqueRule, RangeRule, RegexRule, AllowedValuesRule, SqlRule)
TABLE_RULES = (RowCountRule, FreshnessRule)
