"""Training data is checked against a real Lake table before any worker could start.

An unknown column, a label the task cannot use and an empty snapshot are refused with
the table, snapshot and column named; the snapshot is pinned (the latest, unless the
spec or a resumed run names one). Holdout evaluation scores a registered artifact on a
Lake snapshot with the same metrics the training loop reports. No Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import torch

from actors.forge.artifacts import ArtifactStore, artifacts_root, sha256
from actors.forge.data import pin_and_validate, split_batch
from actors.forge.errors import ColumnTypeError, EmptyTrainingDataError
from actors.forge.evaluate import evaluate_version
from actors.forge.nets import build_model, model_spec_for, save_artifact
from actors.forge.spec import TrainSpec, load_train_spec
from actors.forge.tensors import to_tensors
from actors.lake.errors import SnapshotNotFoundError, TableNotFoundError, UnknownColumnError
from actors.lake.service import LakeService
from cluster.errors import InvalidInputError
from cluster.settings import Settings, load_settings

TABLE = "forge.rows"


def rows(n: int = 20) -> pa.Table:
    return pa.table(
        {
            "a": pa.array([float(i) for i in range(n)]),
            "b": pa.array(list(range(n)), pa.int32()),
            "flag": pa.array([i % 2 == 0 for i in range(n)]),
            "name": pa.array([f"n{i}" for i in range(n)]),
            "y": pa.array([2.0 * i + 1 for i in range(n)]),
            "cls": pa.array([i % 3 for i in range(n)], pa.int64()),
            "score": pa.array([i / 10 for i in range(n)]),
        }
    )


def spec(**data: Any) -> TrainSpec:
    task = data.pop("task", "regression")
    model = {"type": "linear" if task == "regression" else "logistic"}
    body = {"table": TABLE, "features": ["a", "b", "flag"], "label": "y", **data}
    return load_train_spec({"name": "t", "task": task, "data": body, "model": model})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "dp")


@pytest.fixture
async def lake(settings: Settings) -> LakeService:
    service = LakeService.from_settings(settings)
    await service.create_namespace("forge", exist_ok=True)
    await service.create_table(TABLE, data=rows())
    return service


async def test_the_latest_snapshot_is_pinned_with_the_column_types(lake: LakeService) -> None:
    pinned = await pin_and_validate(lake, spec())
    current = (await lake.describe(TABLE))["current_snapshot_id"]
    assert pinned.snapshot_id == current and pinned.rows == 20
    assert pinned.column_types == {"a": "double", "b": "int32", "flag": "bool", "y": "double"}
    signature = pinned.signature(spec(), None)
    assert signature["inputs"][1] == {"name": "b", "type": "int32"}
    assert signature["output"] == {"name": "y", "type": "double", "kind": "value"}

    # New rows make a new snapshot; a resumed run keeps the one it pinned.
    await lake.append(TABLE, rows(5))
    again = await pin_and_validate(lake, spec(), pinned.snapshot_id)
    assert again.snapshot_id == pinned.snapshot_id and again.rows == 20
    assert (await pin_and_validate(lake, spec())).rows == 25


async def test_an_unknown_column_names_the_column_table_and_snapshot(lake: LakeService) -> None:
    with pytest.raises(UnknownColumnError) as caught:
        await pin_and_validate(lake, spec(features=["a", "bb"]))
    message = caught.value.message
    assert "data.features" in message and "'bb'" in message and TABLE in message
    assert "snapshot" in message and "available columns: a, b, cls, flag" in message
    with pytest.raises(UnknownColumnError, match=r"data\.label .*'target'"):
        await pin_and_validate(lake, spec(label="target"))


@pytest.mark.parametrize(
    ("data", "column", "expected"),
    [
        ({"label": "name"}, "name", "regression label column 'name'.*is string"),
        ({"label": "flag", "features": ["a"]}, "flag", "regression label column 'flag'.*bool"),
        ({"task": "classification", "label": "score"}, "score", "classification label.*double"),
        ({"task": "classification", "label": "name"}, "name", "integer class ids"),
        ({"features": ["a", "name"]}, "name", "feature column 'name'.*is string"),
    ],
)
async def test_a_column_of_the_wrong_type_is_refused(
    lake: LakeService, data: dict[str, Any], column: str, expected: str
) -> None:
    with pytest.raises(ColumnTypeError, match=expected) as caught:
        await pin_and_validate(lake, spec(**data))
    assert caught.value.fields["column"] == column
    assert caught.value.fields["table"] == TABLE
    assert caught.value.http_status == 422


async def test_integer_class_ids_are_a_classification_label(lake: LakeService) -> None:
    pinned = await pin_and_validate(lake, spec(task="classification", label="cls"))
    assert pinned.column_types["cls"] == "int64"
    assert pinned.signature(spec(task="classification", label="cls"), 3)["output"] == {
        "name": "cls",
        "type": "int64",
        "kind": "class_logits",
        "num_classes": 3,
    }


async def test_empty_snapshots_are_refused(lake: LakeService) -> None:
    await lake.create_table("forge.empty", schema=rows().schema)
    with pytest.raises(EmptyTrainingDataError, match=r"'forge\.empty' \(no snapshot\) has no rows"):
        await pin_and_validate(lake, spec(table="forge.empty"))

    await lake.delete(TABLE, "a >= 0")
    with pytest.raises(EmptyTrainingDataError, match="has 0 rows at this snapshot") as caught:
        await pin_and_validate(lake, spec())
    assert caught.value.fields["snapshot_id"] == (await lake.describe(TABLE))["current_snapshot_id"]


async def test_a_missing_table_or_snapshot_is_refused(lake: LakeService) -> None:
    with pytest.raises(TableNotFoundError):
        await pin_and_validate(lake, spec(table="forge.nope"))
    with pytest.raises(SnapshotNotFoundError):
        await pin_and_validate(lake, spec(snapshot_id=12345))


def test_split_batches_keep_one_side_and_make_booleans_numbers() -> None:
    batch = rows(200)
    kwargs: dict[str, Any] = {"columns": ["a", "flag", "y"], "label": "flag", "seed": 1}
    train = split_batch(batch, fraction=0.25, keep="train", **kwargs)
    held = split_batch(batch, fraction=0.25, keep="validation", **kwargs)
    assert train.num_rows + held.num_rows == 200 and 30 < held.num_rows < 70
    assert set(train.column("a").to_pylist()).isdisjoint(held.column("a").to_pylist())
    assert train.schema.field("flag").type == pa.int64()
    x, y = to_tensors(train.to_pydict(), ["a", "y"], "flag", "classification")
    assert x.dtype == torch.float32 and x.shape == (train.num_rows, 2) and y.dtype == torch.int64


async def test_holdout_evaluation_scores_a_registered_artifact(
    lake: LakeService, settings: Settings
) -> None:
    train_spec = spec(features=["a"])
    model_spec = model_spec_for(train_spec)
    net = build_model(model_spec)
    with torch.no_grad():  # y = 2a + 1, exactly
        net.core.weight.fill_(2.0)
        net.core.bias.fill_(1.0)
    data = save_artifact(net, model_spec)
    path = ArtifactStore.relative_path("rows", 1)
    await ArtifactStore(artifacts_root(settings)).write("rows", 1, data)
    record = {
        "name": "rows",
        "version": 1,
        "artifact_path": path,
        "sha256": sha256(data),
        "model_spec": model_spec,
    }
    rmse = await evaluate_version(settings, record, TABLE, None, "rmse")
    assert rmse == pytest.approx(0.0, abs=1e-4)
    assert await evaluate_version(settings, record, TABLE, None, "r2") == pytest.approx(1.0)
    with pytest.raises(InvalidInputError, match="a regression metric: val_loss, rmse"):
        await evaluate_version(settings, record, TABLE, None, "accuracy")
