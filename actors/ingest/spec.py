"""A pipeline file as pydantic models: source -> transforms -> expectations -> sink.

``load_pipeline`` reads the YAML (``actors/ingest/yaml_lines.py`` keeps line numbers) and
validates it into ``PipelineSpec``; every refusal is a one-line ``PipelineConfigError``
naming the file, line, key path and fix::

    pipeline orders.yaml line 12, transforms[1].op: 'renam' is not one of select, rename,
    ...; fix: did you mean 'rename'? (use one of select, rename, ...)

``config_hash`` fingerprints a validated spec for run records and lineage; URL
passwords are out of the hashed text. The section models live in ``spec_sources.py``
and ``spec_steps.py`` and are re-exported here, so ``actors.ingest.spec`` is the one
import for pipeline configuration. ``configs/pipelines/orders.yaml`` is a full example.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from actors.ingest.pipeline_errors import PipelineConfigError
from actors.ingest.spec_base import DQ_PREFIX, LakeTable, Spec, distinct
from actors.ingest.spec_sources import (
    CsvOptions,
    FilesSourceConfig,
    LakeSourceConfig,
    RabbitMQSourceConfig,
    SourceConfig,
    SqlSourceConfig,
    guess_format,
)
from actors.ingest.spec_steps import (
    ROW_RULES,
    TABLE_RULES,
    Action,
    AllowedValuesRule,
    CastOp,
    DedupeOp,
    DeriveOp,
    Expectation,
    FilterOp,
    FreshnessRule,
    LookupOp,
    MaskOp,
    NotNullRule,
    RangeRule,
    RegexRule,
    RenameOp,
    RowCountRule,
    SelectOp,
    SqlRule,
    Transform,
    UniqueRule,
)
from actors.ingest.yaml_lines import explain, parse_yaml, substitute_env
from actors.lake.specs import parse_table_name
from cluster.errors import ConfigError

__all__ = [
    "DQ_PREFIX",
    "QUARANTINE_SUFFIX",
    "ROW_RULES",
    "TABLE_RULES",
    "Action",
    "AllowedValuesRule",
    "CastOp",
    "CsvOptions",
    "DedupeOp",
    "DeriveOp",
    "DriftPolicy",
    "Expectation",
    "FilesSourceConfig",
    "FilterOp",
    "FreshnessRule",
    "LakeSourceConfig",
    "LookupOp",
    "MaskOp",
    "NotNullRule",
    "PipelineSpec",
    "RabbitMQSourceConfig",
    "RangeRule",
    "RegexRule",
    "RenameOp",
    "RowCountRule",
    "SelectOp",
    "Sink",
    "SourceConfig",
    "SqlRule",
    "SqlSourceConfig",
    "Transform",
    "UniqueRule",
    "canonical_json",
    "config_hash",
    "guess_format",
    "load_pipeline",
    "parse_pipeline",
]

QUARANTINE_SUFFIX = "__quarantine"
DriftPolicy = Literal["fail", "quarantine", "add_columns"]


class Sink(Spec):
    """The Lake table the pipeline writes."""

    table: LakeTable = Field(description="namespace.table to write, e.g. sales.orders.")
    mode: Literal["append", "upsert"] = Field(
        "append", description="append adds rows; upsert replaces rows with the same key."
    )
    key_columns: list[str] = Field(default_factory=list, description="Row key for upsert.")
    partition_by: list[str] = Field(
        default_factory=list, description="Partition fields when the table is created: day(ts)."
    )
    create_if_missing: bool = Field(True, description="Create the table on the first run.")

    @model_validator(mode="after")
    def _keys_for_upsert(self) -> Sink:
        distinct(self.key_columns, "key column")
        if self.mode == "upsert" and not self.key_columns:
            raise ValueError("mode upsert needs key_columns; fix: list the row's key columns")
        if self.mode == "append" and self.key_columns:
            raise ValueError(
                f"key_columns {self.key_columns} apply to mode upsert only; "
                "fix: set mode: upsert or remove key_columns"
            )
        return self


class PipelineSpec(Spec):
    """One pipeline: where rows come from, how they change, what they must satisfy, where
    they go. Invariant of every run: rows read = written + quarantined + filtered."""

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="Pipeline name: letters, digits, _ . - (used in run ids and state).",
    )
    description: str = Field("", description="What the pipeline is for.")
    source: SourceConfig = Field(
        description="Where rows come from (type: files|sql|rabbitmq|lake)."
    )
    transforms: list[Transform] = Field(default_factory=list, description="Steps, in order.")
    expectations: list[Expectation] = Field(
        default_factory=list, description="Data quality rules checked after the transforms."
    )
    sink: Sink = Field(description="The Lake table written.")
    schema_evolution: Literal["none", "add_columns"] = Field(
        "none", description="add_columns: new columns in the data are added to the table."
    )
    on_drift: Literal["fail", "quarantine"] = Field(
        "fail", description="With schema_evolution none: fail the run or quarantine the batch."
    )

    @field_validator("expectations")
    @classmethod
    def _labels_unique(cls, v: list[Expectation]) -> list[Expectation]:
        labels = [rule.label for rule in v]
        dupes = sorted({label for label in labels if labels.count(label) > 1})
        if dupes:
            raise ValueError(
                f"two expectations are both labelled {dupes[0]!r}; fix: give each a "
                "distinct name (name: ...), since counts and _dq_rule are keyed by it"
            )
        return v

    @property
    def drift_policy(self) -> DriftPolicy:
        """What new columns do: evolve the table, fail the run, or quarantine the batch."""
        return "add_columns" if self.schema_evolution == "add_columns" else self.on_drift

    @property
    def quarantine_table(self) -> str:
        """``<namespace>.<table>__quarantine`` next to the sink."""
        return parse_table_name(self.sink.table).full + QUARANTINE_SUFFIX


def parse_pipeline(
    text: str, *, source: str = "<text>", env: Mapping[str, str] | None = None
) -> PipelineSpec:
    """Validate pipeline YAML ``text``; ``${NAME}`` in values is replaced from ``env``.

    Raises ``PipelineConfigError`` naming ``source``, the line, the key path and the fix.
    """
    doc = parse_yaml(text, source=source)
    if not isinstance(doc.data, dict):
        raise PipelineConfigError(
            source=source,
            line=1,
            key="(top level)",
            problem=f"the file holds a {type(doc.data).__name__}, not a mapping of keys",
            fix="start with name:, source:, transforms:, expectations:, sink:",
        )
    if env is not None:
        doc = substitute_env(doc, env)
    try:
        return PipelineSpec.model_validate(doc.data)
    except ValidationError as exc:
        raise explain(exc, doc, PipelineSpec) from None


def load_pipeline(path: str | Path, *, env: Mapping[str, str] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file; ``${NAME}`` comes from ``env`` (default:
    ``os.environ``, read here, at the entry point, never at import)."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            key="pipeline",
            value=str(file),
            allowed=f"path of a readable UTF-8 YAML file ({type(exc).__name__})",
            source="pipeline file",
        ) from None
    return parse_pipeline(text, source=str(path), env=os.environ if env is None else env)


def canonical_json(spec: PipelineSpec) -> str:
    """The spec as canonical JSON: defaults filled, keys sorted, URL passwords as ``***``."""
    return json.dumps(
        spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def config_hash(spec: PipelineSpec) -> str:
    """Hex SHA-256 of ``canonical_json(spec)``: same meaning, same hash; no secrets in it."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()
