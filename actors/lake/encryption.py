"""Encryption at rest of sensitive Lake columns: where the Lake's writes and reads meet
the pure crypto (``cluster.security.envelope``) and the data keys.

A table declares its sensitive columns in the property ``datapunk.sensitive``
(``"email,ssn"``), at creation or later (``LakeCore.protect_columns``). Such a column is
stored as Iceberg ``binary``: each value sealed with AES-GCM under the column's data key.
Its own type stays in the property ``datapunk.encrypted.<column>`` (JSON: the Iceberg
type, the Arrow type reads give back, the data key id), written with the first schema
that holds it.

Reads come back decrypted (``decrypt=True``, for callers holding ``lake.table:decrypt``)
or masked: ``"****"`` for text, null for every other type. A raw scan carries each
encrypted column's description in its Arrow field metadata, so a cached raw result can
be revealed or masked later without the table at hand.

Filters, upsert keys, partitions and sort orders cannot use an encrypted column: its
stored bytes are random, so they would silently match nothing or order nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from pyiceberg.io.pyarrow import schema_to_pyarrow

from actors.lake.describe import TableDescription
from actors.lake.errors import SchemaMismatchError, invalid
from actors.lake.schema import iceberg_type
from actors.lake.specs import parse_type
from cluster.security.envelope import (
    check_encryptable,
    column_aad,
    decrypt_array,
    encrypt_array,
    mask_array,
)

if TYPE_CHECKING:
    from cluster.security.data_keys import ColumnKey, DataKeys
    from cluster.settings import Settings

SENSITIVE_PROPERTY = "datapunk.sensitive"
ENCRYPTED_PREFIX = "datapunk.encrypted."
FIELD_METADATA_KEY = b"datapunk.encrypted"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class EncryptedColumn:
    """An encrypted column as its property records it."""

    name: str
    type: str  # the Iceberg type of the plaintext, e.g. "string", "decimal(10, 2)"
    arrow: str  # the Arrow type reads return (informational; rebuilt from ``type``)
    key_id: str

    @property
    def arrow_type(self) -> pa.DataType:
        return schema_to_pyarrow(parse_type(self.type))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EncryptedColumn:
        return cls(**json.loads(text))


def sensitive_columns(properties: Mapping[str, str]) -> list[str]:
    """The columns ``datapunk.sensitive`` names, in order, without repeats."""
    raw = properties.get(SENSITIVE_PROPERTY, "")
    names = [name.strip() for name in raw.split(",") if name.strip()]
    return list(dict.fromkeys(names))


def encrypted_columns(properties: Mapping[str, str]) -> dict[str, EncryptedColumn]:
    """Every column stored encrypted, by name."""
    return {
        key.removeprefix(ENCRYPTED_PREFIX): EncryptedColumn.from_json(value)
        for key, value in properties.items()
        if key.startswith(ENCRYPTED_PREFIX)
    }


def check_sensitive_names(table: str, names: list[str]) -> None:
    for name in names:
        if not _IDENTIFIER.fullmatch(name):
            raise invalid(
                f"{SENSITIVE_PROPERTY} of {table}",
                name,
                "comma-separated column names, e.g. 'email,ssn'",
            )


def _mentions(text: str, column: str) -> bool:
    """Whether ``text`` names ``column`` outside quoted literals."""
    unquoted = re.sub(r"'(?:[^']|'')*'", "''", text)
    return re.search(rf"(?<![\w.]){re.escape(column)}(?!\w)", unquoted, re.IGNORECASE) is not None


def shown_description(description: TableDescription) -> TableDescription:
    """``description`` with each encrypted column showing its own type, marked encrypted."""
    known = encrypted_columns(description.properties)
    if not known:
        return description
    columns = [
        replace(c, type=known[c.name].type, encrypted=True) if c.name in known else c
        for c in description.schema
    ]
    return replace(description, schema=columns)


def has_encrypted_fields(result: pa.Table) -> bool:
    """Whether a raw scan result holds encrypted columns (see ``LakeEncryption.annotate``)."""
    return any(f.metadata and FIELD_METADATA_KEY in f.metadata for f in result.schema)


class LakeEncryption:
    """The Lake's encryption hooks; data keys and master keys are opened on first need."""

    def __init__(self, settings: Settings, keys: DataKeys | None = None) -> None:
        self.settings = settings
        self._keys = keys

    @property
    def keys(self) -> DataKeys:
        if self._keys is None:
            from cluster.security.data_keys import DataKeys, DataKeyStore, sync_engine
            from cluster.security.keyring import build_key_provider

            store = DataKeyStore(sync_engine(self.settings))
            self._keys = DataKeys(store, build_key_provider(self.settings))
        return self._keys

    # --- creation ------------------------------------------------------------------

    def prepare_create(
        self,
        table: str,
        schema: pa.Schema,
        properties: dict[str, Any],
        terms: list[str],
    ) -> tuple[pa.Schema, dict[str, Any]]:
        """A new table's schema with sensitive columns as binary, and their properties.

        ``terms`` are the partition and sort terms, which may not use such a column.
        """
        wanted = sensitive_columns({k: str(v) for k, v in properties.items()})
        check_sensitive_names(table, wanted)
        props = dict(properties)
        fields = []
        for field in schema:
            if field.name not in wanted:
                fields.append(field)
                continue
            for term in terms:
                if _mentions(term, field.name):
                    raise invalid(
                        "partition_by/sort_by",
                        term,
                        f"a column that is not encrypted "
                        f"({field.name} is sensitive: its stored bytes are random)",
                    )
            column = self._describe(table, field.name, field.type)
            props[ENCRYPTED_PREFIX + field.name] = column.to_json()
            fields.append(pa.field(field.name, pa.binary(), field.nullable, field.metadata))
        return pa.schema(fields, metadata=schema.metadata), props

    # --- writes --------------------------------------------------------------------

    def seal(
        self,
        table: str,
        properties: Mapping[str, str],
        rows: pa.Table,
        stored_columns: Collection[str] = (),
    ) -> tuple[pa.Table, dict[str, str]]:
        """``rows`` with their sensitive columns encrypted, and properties to record.

        ``stored_columns`` are the table's current columns: a sensitive one among them
        that is not encrypted holds plaintext, and sealed bytes cannot join it.
        Cheap for a table without sensitive columns (one dictionary lookup).
        """
        wanted = sensitive_columns(properties)
        if not wanted:
            return rows, {}
        known = encrypted_columns(properties)
        updates: dict[str, str] = {}
        for name in wanted:
            if name not in rows.column_names:
                continue
            values = rows.column(name)
            column = known.get(name)
            if column is None and name in stored_columns:
                raise invalid(
                    "column",
                    name,
                    f"{table}.{name} is declared sensitive but holds plaintext; encrypt it "
                    f"with `datapunk lake protect {table} {name}` first",
                )
            if column is None:  # first data for a column declared sensitive in advance
                column = self._describe(table, name, values.type)
                updates[ENCRYPTED_PREFIX + name] = column.to_json()
            key = self._key(table, column, create=True)
            plain = _conform(table, column, values)
            sealed = encrypt_array(plain, key.key, column_aad(table, name, key.key_id))
            index = rows.column_names.index(name)
            nullable = rows.schema.field(index).nullable
            rows = rows.set_column(index, pa.field(name, pa.binary(), nullable), sealed)
        return rows, updates

    def check_filter(self, table: str, properties: Mapping[str, str], text: str | None) -> None:
        """Refuse a row filter on an encrypted column (it would match nothing)."""
        if not text:
            return
        for name in encrypted_columns(properties):
            if _mentions(text, name):
                raise invalid(
                    "filter",
                    text,
                    f"no condition on {name}: it is stored encrypted; filter on other "
                    "columns, or use SQL (which sees it decrypted with lake.table:decrypt)",
                )

    def check_keys(self, table: str, properties: Mapping[str, str], keys: list[str]) -> None:
        """Refuse upsert keys that are encrypted (equal values never compare equal)."""
        encrypted = set(encrypted_columns(properties)) | set(sensitive_columns(properties))
        for name in keys:
            if name in encrypted:
                raise invalid("key_columns", name, f"a column of {table} that is not encrypted")

    # --- reads ---------------------------------------------------------------------

    def annotate(self, properties: Mapping[str, str], result: pa.Table) -> pa.Table:
        """A raw scan result with each encrypted column described in its field metadata."""
        known = encrypted_columns(properties)
        if not known:
            return result
        fields = []
        for field in result.schema:
            column = known.get(field.name)
            if column is not None:
                meta = dict(field.metadata or {})
                meta[FIELD_METADATA_KEY] = column.to_json().encode()
                field = field.with_metadata(meta)
            fields.append(field)
        schema = pa.schema(fields, metadata=result.schema.metadata)
        return pa.Table.from_arrays(result.columns, schema=schema)

    def reveal(self, table: str, result: pa.Table, *, decrypt: bool) -> pa.Table:
        """Decrypt (``decrypt``) or mask every annotated column of ``result``."""
        for index, field in enumerate(result.schema):
            meta = field.metadata or {}
            if FIELD_METADATA_KEY not in meta:
                continue
            column = EncryptedColumn.from_json(meta[FIELD_METADATA_KEY])
            values = self._open(table, column, result.column(index), decrypt)
            result = result.set_column(
                index, pa.field(field.name, column.arrow_type, field.nullable), values
            )
        return result

    def reveal_reader(
        self,
        table: str,
        properties: Mapping[str, str],
        reader: pa.RecordBatchReader,
        *,
        decrypt: bool,
    ) -> pa.RecordBatchReader:
        """A reader whose batches are decrypted or masked on the way (SQL's input)."""
        probe = self.annotate(properties, reader.schema.empty_table())
        schema = self.reveal(table, probe, decrypt=False).schema

        def batches() -> Iterator[pa.RecordBatch]:
            for batch in reader:
                shown = self.reveal(
                    table,
                    self.annotate(properties, pa.Table.from_batches([batch])),
                    decrypt=decrypt,
                )
                yield from shown.cast(schema).to_batches()

        return pa.RecordBatchReader.from_batches(schema, batches())

    # --- helpers -------------------------------------------------------------------

    def _describe(self, table: str, name: str, arrow: pa.DataType) -> EncryptedColumn:
        check_encryptable(table, name, arrow)
        ice = iceberg_type(table, name, arrow)
        key = self._key(table, EncryptedColumn(name, str(ice), "", ""), create=True)
        canonical = schema_to_pyarrow(ice)
        return EncryptedColumn(name, str(ice), str(canonical), key.key_id)

    def _key(self, table: str, column: EncryptedColumn, *, create: bool) -> ColumnKey:
        key = self.keys.key_for(table, column.name, create=create)
        if key is None:
            from cluster.errors import NotFoundError

            raise NotFoundError(
                kind="data key",
                name=f"{table}.{column.name}",
                fix="the platform database lost it (restored from an older backup?); "
                "restore the data_keys table, or the column cannot be read",
            )
        return key

    def _open(
        self, table: str, column: EncryptedColumn, values: pa.ChunkedArray, decrypt: bool
    ) -> pa.Array:
        if not decrypt:
            return mask_array(values, column.arrow_type)
        key = self._key(table, column, create=False)
        aad = column_aad(table, column.name, key.key_id)
        return decrypt_array(
            values, key.key, aad, column.arrow_type, table=table, column=column.name
        )


def _conform(table: str, column: EncryptedColumn, values: pa.ChunkedArray) -> pa.ChunkedArray:
    """Plaintext in the column's own type, so every value decrypts back to it."""
    target = column.arrow_type
    if values.type == target:
        return values
    try:
        return values.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise SchemaMismatchError(
            table=table,
            column=column.name,
            table_type=f"{column.type} (encrypted)",
            incoming_type=str(values.type),
            fix=f"send {column.name} as {column.type}",
        ) from None
