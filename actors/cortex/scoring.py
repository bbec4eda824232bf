"""Batch scoring, the plain part: the request, the checks, the batch function, lineage.

``jobs/score.py`` is the Ray shell: it reads a pinned Lake snapshot with Ray Data and
calls ``BatchScorer`` inside ``map_batches`` over an actor pool (each actor loads the
model once, in its constructor), then the driver commits every scored row to the output
table in ONE snapshot whose summary carries ``lineage_properties``. Everything here runs
without Ray, so the checks and the batch function are unit-tested directly.

Exactly once: a scoring run has an id (by default derived from the model version, the
source table and snapshot and the output table, so rerunning the same command is the
same run). The driver looks for that id in the output table's snapshot summaries
(``committed_run``) before any work, and again just before its commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa

from actors.cortex.served import ServedModel, outputs_to_arrow
from actors.cortex.signature import feature_matrix, input_names
from actors.lake.specs import parse_table_name
from cluster.errors import DatapunkError, InvalidInputError

__all__ = [
    "MODEL_PROPERTY",
    "OUTPUT_COLUMNS",
    "RUN_ID_PROPERTY",
    "SOURCE_SNAPSHOT_PROPERTY",
    "SOURCE_TABLE_PROPERTY",
    "VERSION_PROPERTY",
    "BatchScorer",
    "FeatureColumnsMissingError",
    "ScoreRequest",
    "check_source",
    "committed_run",
    "default_actors",
    "default_run_id",
    "lineage_properties",
    "output_schema",
    "score_table",
]

MODEL_PROPERTY = "datapunk.cortex.model"
VERSION_PROPERTY = "datapunk.cortex.version"
SOURCE_TABLE_PROPERTY = "datapunk.cortex.source-table"
SOURCE_SNAPSHOT_PROPERTY = "datapunk.cortex.source-snapshot-id"
RUN_ID_PROPERTY = "datapunk.cortex.scoring-run-id"
# Columns scoring adds after the source's; a source column of one of these names would
# be overwritten, so it is refused up front.
OUTPUT_COLUMNS = ("prediction", "probabilities", "model", "version")
Device = Literal["auto", "cpu", "cuda"]
_MAX_BATCH = 1_000_000
_MAX_CPU_ACTORS = 4


class FeatureColumnsMissingError(InvalidInputError):
    """The source table lacks (or mistypes) inputs of the model's signature."""

    code: ClassVar[str] = "missing_feature_columns"

    def __init__(
        self, *, table: str, snapshot_id: int, model: str, version: int, problems: list[str]
    ) -> None:
        DatapunkError.__init__(
            self,
            f"table {table!r} (snapshot {snapshot_id}) cannot feed model {model!r} version "
            f"{version}: {'; '.join(problems)}; fix: score a table with every input of the "
            f"signature as a numeric column (`datapunk models show {model} --version {version}` "
            "lists them)",
            table=table,
            snapshot_id=snapshot_id,
            model=model,
            version=version,
            problems=problems,
        )


@dataclass(frozen=True)
class ScoreRequest:
    """What ``python -m jobs.score`` was asked; checked on construction.

    ``alias`` and ``version`` are exclusive; neither means the ``production`` alias.
    Table names come back normalised (``orders`` -> ``default.orders``).
    """

    model: str
    table: str
    output: str
    alias: str | None = None
    version: int | None = None
    snapshot_id: int | None = None
    batch_size: int = 4096
    actors: int | None = None
    device: Device = "auto"
    run_id: str | None = None

    def __post_init__(self) -> None:
        if self.alias is not None and self.version is not None:
            raise InvalidInputError(
                field="--alias/--version",
                value=f"{self.alias} and {self.version}",
                allowed="one of them: an alias name or a version number",
            )
        source, output = parse_table_name(self.table).full, parse_table_name(self.output).full
        if source == output:
            raise InvalidInputError(
                field="--output",
                value=self.output,
                allowed=f"a table other than the source {source!r}: scoring appends the "
                f"source rows with their predictions to a new table, e.g. {source}_scored",
            )
        object.__setattr__(self, "table", source)
        object.__setattr__(self, "output", output)
        _check_range("--batch-size", self.batch_size, 1, _MAX_BATCH)
        if self.actors is not None:
            _check_range("--actors", self.actors, 1, 1024)
        if self.version is not None:
            _check_range("--version", self.version, 1, 2**31)
        if self.device not in ("auto", "cpu", "cuda"):
            raise InvalidInputError(
                field="--device", value=self.device, allowed="auto, cpu or cuda"
            )
        if self.run_id is not None and not (0 < len(self.run_id) <= 200):
            raise InvalidInputError(
                field="--run-id", value=self.run_id, allowed="1 to 200 characters"
            )

    @property
    def ref(self) -> int | str:
        """What ``ModelRegistry.version`` takes: the version, else the alias."""
        if self.version is not None:
            return self.version
        return self.alias or "production"


def _check_range(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInputError(field=field, value=value, allowed=f"an integer {low} to {high}")


def default_run_id(model: str, version: int, table: str, snapshot_id: int, output: str) -> str:
    """``score_<16 hex>`` of what the run reads and writes: the same command, the same id."""
    text = json.dumps([model, version, table, snapshot_id, output], separators=(",", ":"))
    return "score_" + hashlib.sha256(text.encode()).hexdigest()[:16]


def default_actors(device: str, cluster_cpus: float, cluster_gpus: float) -> int:
    """Actors in the pool when ``--actors`` is not given: one per GPU on CUDA; on CPU half
    the cluster's CPUs (the read tasks need the rest), at least 1, at most 4."""
    if device == "cuda":
        return max(1, int(cluster_gpus))
    return max(1, min(_MAX_CPU_ACTORS, int(cluster_cpus) // 2))


def lineage_properties(
    *, model: str, version: int, table: str, snapshot_id: int, run_id: str
) -> dict[str, str]:
    """The output snapshot's summary properties: where its predictions came from."""
    return {
        MODEL_PROPERTY: model,
        VERSION_PROPERTY: str(version),
        SOURCE_TABLE_PROPERTY: table,
        SOURCE_SNAPSHOT_PROPERTY: str(snapshot_id),
        RUN_ID_PROPERTY: run_id,
    }


def committed_run(history: Iterable[Mapping[str, Any]], run_id: str) -> dict[str, Any] | None:
    """The snapshot (a ``LakeService.history`` entry) that committed ``run_id``, if any."""
    for entry in history:
        if (entry.get("summary") or {}).get(RUN_ID_PROPERTY) == run_id:
            return dict(entry)
    return None


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def check_source(
    schema: pa.Schema,
    signature: Mapping[str, Any],
    *,
    table: str,
    snapshot_id: int,
    model: str,
    version: int,
) -> None:
    """Every signature input is a numeric column of ``schema``, and no source column has
    the name of one scoring adds (``OUTPUT_COLUMNS``)."""
    problems = []
    for name in input_names(dict(signature)):
        if name not in schema.names:
            problems.append(f"column {name!r} is missing")
        elif not _numeric(schema.field(name).type):
            problems.append(f"column {name!r} is {schema.field(name).type}, not a number")
    if problems:
        raise FeatureColumnsMissingError(
            table=table, snapshot_id=snapshot_id, model=model, version=version, problems=problems
        )
    clashes = [name for name in OUTPUT_COLUMNS if name in schema.names]
    if clashes:
        raise InvalidInputError(
            field=f"columns of {table!r}",
            value=clashes,
            allowed=f"none of {', '.join(OUTPUT_COLUMNS)}: scoring adds those columns; "
            "score a view without them (e.g. a table written by `datapunk lake sql`)",
        )


def _classification(signature: Mapping[str, Any]) -> bool:
    return signature.get("task") == "classification"


def output_schema(source: pa.Schema, signature: Mapping[str, Any]) -> pa.Schema:
    """The scored table's schema: the source's columns, ``prediction`` (float64, or the
    int64 class), ``probabilities`` (list<double>, classification only), ``model``,
    ``version``. Every column nullable: a row whose features have a null gets no prediction.
    """
    fields = [field.with_nullable(True) for field in source]
    if _classification(signature):
        fields += [
            pa.field("prediction", pa.int64()),
            pa.field("probabilities", pa.list_(pa.float64())),
        ]
    else:
        fields.append(pa.field("prediction", pa.float64()))
    fields += [pa.field("model", pa.string()), pa.field("version", pa.int64())]
    return pa.schema(fields)


def score_table(model: ServedModel, batch: pa.Table) -> pa.Table:
    """``batch`` with its predictions and the model's name and version appended.

    A row with a null or NaN feature gets null outputs rather than the NaN the network
    would make of it; the others are predicted in one forward pass.
    """
    added = list(output_schema(pa.schema([]), model.signature))
    outputs = added[:-2]  # prediction (and probabilities); model and version follow
    matrix = feature_matrix(batch, model.signature)
    valid = np.isfinite(matrix).all(axis=1)
    count = int(valid.sum())
    if count == 0:
        columns = [pa.nulls(batch.num_rows, field.type) for field in outputs]
    else:
        predicted = outputs_to_arrow(model.predict(matrix[valid] if count < len(valid) else matrix))
        if count < len(valid):
            # Null indices in ``take`` give null rows: scatter the predictions back.
            positions = np.cumsum(valid) - 1
            predicted = predicted.take(pa.array(positions, mask=~valid))
        columns = [predicted.column(field.name).cast(field.type) for field in outputs]
    columns.append(pa.array([model.name] * batch.num_rows, pa.string()))
    columns.append(pa.array(np.full(batch.num_rows, model.version, dtype=np.int64)))
    result = batch
    for field, column in zip(added, columns, strict=True):
        result = result.append_column(field, column)
    return result


class BatchScorer:
    """The callable class ``map_batches`` runs in each actor of the pool: the model is
    loaded once, in the constructor, and every batch after is one ``score_table``."""

    def __init__(self, record: dict[str, Any], artifact: bytes, device: str) -> None:
        self.model = ServedModel.from_artifact(record, artifact, device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(self.model, batch)
