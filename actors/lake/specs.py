"""Parsing the small languages of the Lake API: table names, types, partitions, sort orders.

* table names: ``"namespace.table"``, or ``"table"`` in namespace ``default``;
* types: Iceberg's names (``long``, ``decimal(10, 2)``, ``timestamptz``) plus the usual
  aliases (``int64``, ``bigint``, ``float64``, ``bool``, ``str``);
* partition fields: ``region``, ``identity(region)``, ``year|month|day|hour(ts)``,
  ``bucket(16, id)``, ``truncate(4, name)``;
* sort fields: a column or a partition-style transform, then ``asc|desc`` and
  ``nulls first|nulls last`` (``"ts"``, ``"id desc"``, ``"day(ts) desc nulls last"``).

Every refusal names the bad token and shows the accepted forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import NullOrder, SortDirection, SortField, SortOrder
from pyiceberg.transforms import (
    BucketTransform,
    DayTransform,
    HourTransform,
    IdentityTransform,
    MonthTransform,
    Transform,
    TruncateTransform,
    YearTransform,
)
from pyiceberg.types import IcebergType, PrimitiveType

from actors.lake.errors import UnknownColumnError, invalid

DEFAULT_NAMESPACE = "default"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TERM = re.compile(r"^(?:(\w+)\(\s*(?:(\d+)\s*,\s*)?([A-Za-z_]\w*)\s*\)|([A-Za-z_]\w*))$")
PARTITION_FORMS = (
    "column, identity(column), year(column), month(column), day(column), hour(column), "
    "bucket(N, column), truncate(W, column)"
)
SORT_FORMS = f"a term ({PARTITION_FORMS}) then optionally asc|desc and nulls first|nulls last"
_TYPE_ALIASES = {
    "int32": "int",
    "integer": "int",
    "int64": "long",
    "bigint": "long",
    "float32": "float",
    "float64": "double",
    "bool": "boolean",
    "str": "string",
    "text": "string",
    "bytes": "binary",
}
# Java's names for partition fields, so other engines show the same names.
_SUFFIX = {"year": "year", "month": "month", "day": "day", "hour": "hour", "bucket": "bucket"}


@dataclass(frozen=True)
class TableName:
    """A parsed table identifier."""

    namespace: str
    table: str

    @property
    def full(self) -> str:
        return f"{self.namespace}.{self.table}"

    @property
    def identifier(self) -> tuple[str, str]:
        return (self.namespace, self.table)


def parse_table_name(name: str) -> TableName:
    """``"ns.table"`` -> (ns, table); no dot -> namespace ``default``."""
    parts = name.split(".") if isinstance(name, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENT.fullmatch(part) for part in parts):
        raise invalid(
            "table name",
            name,
            "use namespace.table or table, each part letters, digits and _ "
            "not starting with a digit (e.g. sales.orders)",
        )
    if len(parts) == 1:
        return TableName(DEFAULT_NAMESPACE, parts[0])
    return TableName(parts[0], parts[1])


def parse_namespace(namespace: str) -> str:
    """Validate a namespace name: one level, like the part before a table name's dot."""
    if not isinstance(namespace, str) or not _IDENT.fullmatch(namespace):
        raise invalid("namespace", namespace, "letters, digits and _, not starting with a digit")
    return namespace


def parse_type(text: str, *, field: str = "type") -> PrimitiveType:
    """An Iceberg primitive type from its name (``long``, ``decimal(10,2)``, aliases)."""
    name = str(text).strip().lower()
    name = _TYPE_ALIASES.get(name, name)
    parsed: IcebergType | None
    try:
        parsed = IcebergType.model_validate(name)
    except (ValidationError, ValueError):
        parsed = None
    if not isinstance(parsed, PrimitiveType):
        raise invalid(
            field,
            text,
            "an Iceberg primitive type: boolean, int, long, float, double, decimal(P, S), "
            "date, time, timestamp, timestamptz, string, uuid, binary, fixed[N]",
        )
    return parsed


def parse_partition_spec(tokens: list[str], schema: Schema, table: str) -> PartitionSpec:
    """Partition fields for ``schema`` (ids from the schema; field ids from 1000)."""
    fields = []
    for position, token in enumerate(tokens):
        transform, column = _parse_term(token, schema, table, "partition_by", PARTITION_FORMS)
        source = schema.find_field(column)
        name = column if isinstance(transform, IdentityTransform) else _field_name(column, token)
        fields.append(
            PartitionField(
                source_id=source.field_id, field_id=1000 + position, transform=transform, name=name
            )
        )
    return PartitionSpec(*fields)


def parse_sort_order(tokens: list[str], schema: Schema, table: str) -> SortOrder:
    """A sort order; Iceberg's defaults: asc -> nulls first, desc -> nulls last."""
    fields = []
    for token in tokens:
        words = token.split()
        term, modifiers = (words[0] if words else ""), [w.lower() for w in words[1:]]
        direction, null_order = _sort_modifiers(token, modifiers)
        transform, column = _parse_term(term, schema, table, "sort_by", SORT_FORMS)
        fields.append(
            SortField(
                source_id=schema.find_field(column).field_id,
                transform=transform,
                direction=direction,
                null_order=null_order,
            )
        )
    return SortOrder(*fields) if fields else SortOrder()


def _sort_modifiers(token: str, words: list[str]) -> tuple[SortDirection, NullOrder]:
    direction = SortDirection.ASC
    if words and words[0] in ("asc", "desc"):
        direction = SortDirection.DESC if words.pop(0) == "desc" else SortDirection.ASC
    null_order = NullOrder.NULLS_FIRST if direction == SortDirection.ASC else NullOrder.NULLS_LAST
    if words == ["nulls", "first"]:
        null_order = NullOrder.NULLS_FIRST
    elif words == ["nulls", "last"]:
        null_order = NullOrder.NULLS_LAST
    elif words:
        raise invalid("sort_by", token, SORT_FORMS)
    return direction, null_order


def _parse_term(
    token: str, schema: Schema, table: str, field: str, forms: str
) -> tuple[Transform[Any, Any], str]:
    match = _TERM.match(token.strip()) if isinstance(token, str) else None
    if match is None:
        raise invalid(field, token, f"use one of: {forms}")
    func, number, column, bare = match.groups()
    column = column or bare
    try:
        source = schema.find_field(column)
    except ValueError:
        raise UnknownColumnError(
            table=table, column=column, available=schema.column_names, role=f"{field} {token!r}"
        ) from None
    transform = _transform(func, number, token, field, forms)
    if not transform.can_transform(source.field_type):
        raise invalid(field, token, f"{transform} cannot apply to {column} ({source.field_type})")
    return transform, column


def _transform(
    func: str | None, number: str | None, token: str, field: str, forms: str
) -> Transform[Any, Any]:
    func = (func or "identity").lower()
    simple: dict[str, Transform[Any, Any]] = {
        "identity": IdentityTransform(),
        "year": YearTransform(),
        "month": MonthTransform(),
        "day": DayTransform(),
        "hour": HourTransform(),
    }
    if func in simple and number is None:
        return simple[func]
    if func in ("bucket", "truncate") and number is not None and int(number) > 0:
        return BucketTransform(int(number)) if func == "bucket" else TruncateTransform(int(number))
    raise invalid(field, token, f"use one of: {forms}")


def _field_name(column: str, token: str) -> str:
    func = token.strip().split("(", 1)[0].lower()
    return f"{column}_{_SUFFIX.get(func, 'trunc')}"
