"""Pipeline sources: files, a SQL database, a RabbitMQ queue, another Lake table.

Minimal configuration; the schema is inferred from the data. The source modules in
``actors/ingest/sources/`` are built from these models (by the runner); this
module only validates them.
"""

from __future__ import annotations

import codecs
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_serializer, field_validator, model_validator
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from actors.ingest.spec_base import LakeTable, Spec
from actors.lake.formats import format_from_path
from cluster.errors import DatapunkError
from cluster.settings import redact_url


def guess_format(path: str) -> str | None:
    """The format a file name implies (``.csv.gz`` -> csv), as the Lake reads it, or None."""
    try:
        return format_from_path(path)[0]
    except DatapunkError:
        return None


class CsvOptions(Spec):
    """How CSV files are read."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="One field separator.")
    header: bool = Field(True, description="The first line names the columns (else f0, f1...).")
    encoding: str = Field("utf-8", description="Text encoding of the files, e.g. latin-1.")

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {v!r}; fix: use e.g. utf-8 or latin-1") from None
        return v


class FilesSourceConfig(Spec):
    """Files matched by a glob: CSV, JSON Lines, Parquet or Arrow IPC, optionally gzip."""

    type: Literal["files"]
    path: str = Field(min_length=1, description="A file or glob, e.g. data/orders/*.csv.gz.")
    format: Literal["auto", "csv", "jsonl", "parquet", "arrow"] = Field(
        "auto", description="File format; auto guesses it from the path's suffix."
    )
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="auto means gzip when a file name ends in .gz."
    )
    csv: CsvOptions = Field(default_factory=CsvOptions, description="CSV reading options.")

    @model_validator(mode="after")
    def _format_known(self) -> FilesSourceConfig:
        if self.format == "auto" and guess_format(self.path) is None:
            raise ValueError(
                f"format auto cannot tell the format of {self.path!r} from its suffix "
                "(.csv, .tsv, .jsonl, .ndjson, .json, .parquet, .arrow, ..., optionally .gz); "
                "fix: set format: csv|jsonl|parquet|arrow"
            )
        chosen = self.format if self.format != "auto" else guess_format(self.path)
        if "csv" in self.model_fields_set and chosen != "csv":
            raise ValueError(f"csv options apply to CSV files, not {chosen}; fix: remove csv")
        return self


class SqlSourceConfig(Spec):
    """A table or a query on any SQLAlchemy database URL."""

    type: Literal["sql"]
    url: SecretStr = Field(description="SQLAlchemy URL, e.g. postgresql://user:pw@host/db.")
    table: str | None = Field(None, min_length=1, description="Read this whole table.")
    query: str | None = Field(None, min_length=1, description="Or read what this query returns.")
    incremental_column: str | None = Field(
        None, min_length=1, description="Read only rows above the last run's maximum of this."
    )

    @field_validator("url")
    @classmethod
    def _parses(cls, v: SecretStr) -> SecretStr:
        try:
            make_url(v.get_secret_value())
        except (ArgumentError, ValueError):
            shown = redact_url(v.get_secret_value())
            raise ValueError(
                f"{shown!r} is not a SQLAlchemy URL; fix: write dialect://user:password@host/db"
            ) from None
        return v

    @model_validator(mode="after")
    def _table_or_query(self) -> SqlSourceConfig:
        if (self.table is None) == (self.query is None):
            got = "both" if self.table else "neither"
            raise ValueError(
                f"give exactly one of table or query (got {got}); fix: keep table: to read a "
                "whole table, or query: to read a SELECT's rows"
            )
        return self

    @field_serializer("url", when_used="json")
    def _redacted(self, v: SecretStr) -> str:
        return redact_url(v.get_secret_value())


class RabbitMQSourceConfig(Spec):
    """A RabbitMQ queue drained up to a bound; messages are acked once written."""

    type: Literal["rabbitmq"]
    url: SecretStr | None = Field(None, description="amqp(s):// URL; unset = settings.amqp_url.")
    queue: str = Field(min_length=1, description="The queue to drain.")
    max_messages: int = Field(10_000, ge=1, le=10_000_000, description="Most messages a run.")
    wait_s: float = Field(5.0, gt=0, le=3600, description="Stop when idle this many seconds.")
    format: Literal["json", "arrow"] = Field(
        "json", description="Body of a message: one JSON object, or an Arrow IPC stream."
    )

    @field_validator("url")
    @classmethod
    def _amqp(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and v.get_secret_value().split("://", 1)[0] not in ("amqp", "amqps"):
            shown = redact_url(v.get_secret_value())
            raise ValueError(
                f"{shown!r} is not an amqp:// or amqps:// URL; fix: write "
                "amqp://user:password@host:5672/vhost, or leave url unset for settings.amqp_url"
            )
        return v

    @field_serializer("url", when_used="json")
    def _redacted(self, v: SecretStr | None) -> str | None:
        return None if v is None else redact_url(v.get_secret_value())


class LakeSourceConfig(Spec):
    """Another Lake table, at its current snapshot or a pinned one."""

    type: Literal["lake"]
    table: LakeTable = Field(description="namespace.table to read.")
    snapshot_id: int | None = Field(None, description="Read this snapshot.")
    as_of: datetime | None = Field(None, description="Or the snapshot current at this time.")

    @field_validator("as_of")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @model_validator(mode="after")
    def _one_pin(self) -> LakeSourceConfig:
        if self.snapshot_id is not None and self.as_of is not None:
            raise ValueError(
                f"give snapshot_id ({self.snapshot_id}) or as_of ({self.as_of}), not both; "
                "fix: remove one"
            )
        return self


SourceConfig = Annotated[
    FilesSourceConfig | SqlSourceConfig | RabbitMQSourceConfig | LakeSourceConfig,
    Field(discriminator="type"),
]
