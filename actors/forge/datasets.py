"""A pinned Lake snapshot as Ray Datasets: seeded train/validation split and statistics.

Ray Data reads the Iceberg snapshot itself (``actors/lake/client.to_ray_dataset``),
keeps each side of the split (``actors/forge/data.split_batch``) and materialises it in
the object store, so every epoch of every trial iterates the same rows without reading
the Lake again. The statistics the model's scaling needs (mean and spread of each
feature, of a regression label) come from the training side only, summed per block by
map tasks and added up in the driver; null counts and class ids are checked here, still
before any worker starts.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray.data

from actors.forge.data import PinnedData, split_batch
from actors.forge.errors import EmptyTrainingDataError, TrainingDataValueError
from actors.forge.spec import TrainSpec
from actors.lake.client import to_ray_dataset
from cluster.settings import Settings

SIDES = ("train", "validation")


@dataclass(frozen=True)
class PreparedData:
    """Both sides of the split, materialised, and the training side's statistics."""

    train: ray.data.Dataset
    validation: ray.data.Dataset
    train_rows: int
    validation_rows: int
    x_mean: list[float]
    x_std: list[float]
    y_mean: float
    y_std: float
    num_classes: int | None

    def scaling(self) -> dict[str, Any]:
        """What ``ForgeNet.set_scaling`` takes (JSON-able, for the train loop's config)."""
        return {
            "x_mean": self.x_mean,
            "x_std": self.x_std,
            "y_mean": self.y_mean,
            "y_std": self.y_std,
        }


def prepare_datasets(settings: Settings, spec: TrainSpec, pinned: PinnedData) -> PreparedData:
    """Read ``pinned`` into Ray Data, check and measure it, and materialise both sides
    of the split (the checks come first: a bad snapshot fails before it is copied)."""
    columns = [*spec.data.features, spec.data.label]
    source = to_ray_dataset(
        settings, pinned.table, pinned.snapshot_id, selected_fields=tuple(columns)
    )
    split: dict[str, Any] = {
        "columns": columns,
        "label": spec.data.label,
        "seed": spec.data.seed,
        "fraction": spec.data.validation_fraction,
    }
    stats = _stats(source, split)
    counts = {side: stats[side]["rows"] for side in SIDES}
    _check_split(spec, pinned, counts)
    for side in SIDES:
        _check_nulls(spec, pinned, stats[side])
    num_classes = _classes(spec, pinned, *stats.values())
    sides = {
        side: source.map_batches(
            functools.partial(split_batch, keep=side, **split), batch_format="pyarrow"
        ).materialize()
        for side in SIDES
    }
    train, label = stats["train"], spec.data.label
    regression = spec.task == "regression"
    return PreparedData(
        train=sides["train"],
        validation=sides["validation"],
        train_rows=counts["train"],
        validation_rows=counts["validation"],
        x_mean=[train["mean"][c] for c in spec.data.features],
        x_std=[train["std"][c] for c in spec.data.features],
        y_mean=train["mean"][label] if regression else 0.0,
        y_std=train["std"][label] if regression else 1.0,
        num_classes=num_classes,
    )


def _partial_stats(batch: pa.Table, **split: Any) -> pa.Table:
    """Sums for each side of ``batch``'s split, one row per side: rows, and per column
    non-nulls, sum, sum of squares, min and max (float64). The driver adds them up."""
    rows: list[dict[str, Any]] = []
    for side in SIDES:
        part = split_batch(batch, keep=side, **split)
        row: dict[str, Any] = {"side": side, "rows": part.num_rows}
        for column in split["columns"]:
            values = part.column(column).cast(pa.float64())
            row[f"n:{column}"] = len(values) - values.null_count
            row[f"sum:{column}"] = pc.sum(values).as_py() or 0.0
            row[f"sq:{column}"] = pc.sum(pc.multiply(values, values)).as_py() or 0.0
            row[f"min:{column}"] = pc.min(values).as_py()
            row[f"max:{column}"] = pc.max(values).as_py()
        rows.append(row)
    return pa.Table.from_pylist(rows)


def _stats(source: ray.data.Dataset, split: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per side: row count, nulls, mean, spread, min and max per column, from one pass
    of map tasks (a Ray Data aggregation would shuffle through actors for a handful of
    numbers)."""
    partial = functools.partial(_partial_stats, **split)
    parts = source.map_batches(partial, batch_format="pyarrow").take_all()
    return {
        side: _combine([p for p in parts if p["side"] == side], split["columns"]) for side in SIDES
    }


def _combine(parts: list[dict[str, Any]], columns: list[str]) -> dict[str, Any]:
    rows = sum(int(p["rows"]) for p in parts)
    out: dict[str, Any] = {"rows": rows, "nulls": {}, "mean": {}, "std": {}, "min": {}, "max": {}}
    for column in columns:
        present = sum(int(p[f"n:{column}"]) for p in parts)
        total = sum(float(p[f"sum:{column}"]) for p in parts)
        squares = sum(float(p[f"sq:{column}"]) for p in parts)
        mean = total / present if present else 0.0
        variance = squares / present - mean * mean if present else 1.0
        lows = [p[f"min:{column}"] for p in parts if p[f"min:{column}"] is not None]
        highs = [p[f"max:{column}"] for p in parts if p[f"max:{column}"] is not None]
        out["nulls"][column] = rows - present
        out["mean"][column] = mean
        out["std"][column] = math.sqrt(variance) if variance > 0 else 1.0
        out["min"][column] = min(lows) if lows else None
        out["max"][column] = max(highs) if highs else None
    return out


def _check_split(spec: TrainSpec, pinned: PinnedData, counts: dict[str, int]) -> None:
    empty = [side for side, n in counts.items() if n == 0]
    if empty:
        total = sum(counts.values())
        raise EmptyTrainingDataError(
            table=pinned.table,
            snapshot_id=pinned.snapshot_id,
            reason=f"has {total} rows, and a validation_fraction of "
            f"{spec.data.validation_fraction} leaves the {empty[0]} split empty",
            fix="add rows, or move data.validation_fraction away from 0 and 1",
        )


def _check_nulls(spec: TrainSpec, pinned: PinnedData, stats: dict[str, Any]) -> None:
    for column in [*spec.data.features, spec.data.label]:
        missing = stats["nulls"][column]
        if missing:
            raise TrainingDataValueError(
                table=pinned.table,
                snapshot_id=pinned.snapshot_id,
                column=column,
                problem=f"holds {missing} null values",
                fix="fill or filter them in the pipeline (an expectation with "
                "action: quarantine keeps them out)",
            )


def _classes(spec: TrainSpec, pinned: PinnedData, *stats: dict[str, Any]) -> int | None:
    if spec.task != "classification":
        return None
    label = spec.data.label
    low = min(int(s["min"][label]) for s in stats)
    high = max(int(s["max"][label]) for s in stats)
    classes = spec.model.num_classes or max(high + 1, 2)
    if low < 0 or high >= classes:
        raise TrainingDataValueError(
            table=pinned.table,
            snapshot_id=pinned.snapshot_id,
            column=label,
            problem=f"holds class ids from {low} to {high}, outside 0..{classes - 1}",
            fix="store class ids 0..C-1, or raise model.num_classes",
        )
    return classes
