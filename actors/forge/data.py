"""Training data: pin a Lake snapshot, check it fits the spec, split it reproducibly.

``pin_and_validate`` runs in the driver against the Lake API (no Ray): it resolves the
snapshot once (the latest unless the spec or a resumed run names one), and refuses an
unknown column, a label of the wrong type or an empty snapshot before any worker
starts, naming the table, snapshot and column. ``prepare_datasets``
(``actors/forge/datasets.py``) then streams the pinned snapshot into Ray Data.

The split is a seeded hash of each row's values, so the same snapshot and seed give
the same train/validation rows on any cluster, however the files are read in blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from actors.forge.errors import ColumnTypeError, EmptyTrainingDataError
from actors.forge.spec import TrainSpec
from actors.lake.errors import UnknownColumnError

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class LakeReader(Protocol):
    """What validation needs of the Lake API (``LakeService`` or the actor pool)."""

    async def describe(self, name: str) -> dict[str, Any]: ...
    async def scan(
        self, name: str, *, snapshot_id: int | None = None, limit: int | None = None
    ) -> pa.Table: ...


@dataclass(frozen=True)
class PinnedData:
    """The snapshot a run trains on and what validation learnt about it."""

    table: str
    snapshot_id: int
    rows: int | None
    column_types: dict[str, str]

    def signature(self, spec: TrainSpec, num_classes: int | None) -> dict[str, Any]:
        """The model's input and output, as the registry records it."""
        inputs = [{"name": c, "type": self.column_types[c]} for c in spec.data.features]
        output: dict[str, Any] = {
            "name": spec.data.label,
            "type": self.column_types[spec.data.label],
        }
        if spec.task == "classification":
            output.update(kind="class_logits", num_classes=num_classes)
        else:
            output.update(kind="value")
        return {"inputs": inputs, "output": output, "task": spec.task}


async def pin_and_validate(
    lake: LakeReader, spec: TrainSpec, snapshot_id: int | None = None
) -> PinnedData:
    """Resolve the snapshot (``snapshot_id``, else the spec's, else the latest) and check
    the spec's columns and label against it. Raises before any training starts."""
    table = spec.data.table
    description = await lake.describe(table)
    pinned = snapshot_id if snapshot_id is not None else spec.data.snapshot_id
    if pinned is None:
        pinned = description.get("current_snapshot_id")
    if pinned is None:
        raise EmptyTrainingDataError(
            table=table,
            snapshot_id=None,
            reason="has no rows: nothing was ever written to it",
            fix=f"load rows first (`datapunk lake load {table} FILE` or a pipeline)",
        )
    schema = (await lake.scan(table, snapshot_id=pinned, limit=0)).schema
    rows = _rows_at(description, pinned)
    if rows == 0:
        raise EmptyTrainingDataError(
            table=table,
            snapshot_id=pinned,
            reason="has 0 rows at this snapshot",
            fix="train on a snapshot with rows (`datapunk lake history` lists them) or "
            "leave data.snapshot_id unset for the latest",
        )
    types = _check_columns(spec, schema, pinned)
    return PinnedData(table=table, snapshot_id=int(pinned), rows=rows, column_types=types)


def _rows_at(description: Mapping[str, Any], snapshot_id: int) -> int | None:
    for snapshot in description.get("snapshots") or []:
        if snapshot.get("snapshot_id") == snapshot_id:
            total = (snapshot.get("summary") or {}).get("total-records")
            return int(total) if total is not None else None
    return None


def _check_columns(spec: TrainSpec, schema: pa.Schema, snapshot_id: int) -> dict[str, str]:
    table, names = spec.data.table, schema.names
    at = f"snapshot {snapshot_id}"
    for role, column in [
        *(("features", c) for c in spec.data.features),
        ("label", spec.data.label),
    ]:
        if column not in names:
            raise UnknownColumnError(
                table=table, column=column, available=names, role=f"data.{role} ({at})"
            )
    types = {c: type_name(schema.field(c).type) for c in [*spec.data.features, spec.data.label]}
    for column in spec.data.features:
        if not _numeric(schema.field(column).type):
            raise ColumnTypeError(
                table=table,
                snapshot_id=snapshot_id,
                column=column,
                role="feature",
                found=types[column],
                fix="list only numeric columns in data.features, or derive a number from it "
                "in the pipeline (op: cast to double)",
            )
    _check_label(spec, schema.field(spec.data.label).type, snapshot_id, types)
    return types


def _check_label(
    spec: TrainSpec, kind: pa.DataType, snapshot_id: int, types: dict[str, str]
) -> None:
    label = spec.data.label
    if spec.task == "regression":
        ok = _numeric(kind) and not pa.types.is_boolean(kind)
        fix = "regression needs a numeric label: cast it to double in the pipeline, or set "
        fix += "task: classification for class labels"
    else:
        ok = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
        fix = "classification needs integer class ids 0..C-1 (or booleans): map the classes "
        fix += "to ids in the pipeline (op: derive with CASE, then cast to int)"
    if not ok:
        raise ColumnTypeError(
            table=spec.data.table,
            snapshot_id=snapshot_id,
            column=label,
            role=f"{spec.task} label",
            found=types[label],
            fix=fix,
        )


def type_name(kind: pa.DataType) -> str:
    """The column type as people write it (``string``, not Arrow's ``large_string``)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "binary"
    return str(kind)


def _numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_boolean(kind)
    )


# ---------------------------------------------------------------- split and batches


def validation_mask(frame: pd.DataFrame, *, seed: int, fraction: float) -> np.ndarray:
    """True for the rows held out: a seeded hash of each row's values below ``fraction``."""
    hashed = pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)
    with np.errstate(over="ignore"):
        mixed = _splitmix(hashed + np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN)
    unit = (mixed >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.asarray(unit < fraction)


def _splitmix(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return np.asarray(h ^ (h >> np.uint64(31)))


def split_batch(
    batch: pa.Table, *, columns: list[str], label: str, seed: int, fraction: float, keep: str
) -> pa.Table:
    """The rows of ``batch`` on side ``keep`` (train or validation); booleans as 0/1."""
    frame = batch.select(columns).to_pandas()
    held_out = validation_mask(frame, seed=seed, fraction=fraction)
    chosen = batch.select(columns).filter(pa.array(held_out if keep == "validation" else ~held_out))
    if pa.types.is_boolean(chosen.schema.field(label).type):
        index = chosen.schema.get_field_index(label)
        chosen = chosen.set_column(index, label, chosen.column(label).cast(pa.int64()))
    return chosen
