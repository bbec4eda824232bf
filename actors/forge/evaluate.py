"""Score a registered model version on held-out Lake data (the promotion gate's judge).

``evaluate_version`` loads the version's artifact (sha256-checked) into its network,
reads the holdout snapshot's feature and label columns through the Lake API, and
computes one metric with the same code the training loop validates with:
``val_loss``, ``rmse``, ``mae``, ``r2`` for regression; ``val_loss``, ``accuracy``,
``log_loss`` for classification. No Ray: it runs in the gateway, the CLI or a test.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import numpy as np
import pyarrow as pa

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.errors import EmptyTrainingDataError, TrainingDataValueError
from actors.forge.metrics import evaluate
from actors.forge.nets import ForgeNet, load_artifact
from actors.forge.spec import TASK_METRICS
from actors.forge.tensors import to_tensors
from cluster.errors import InvalidInputError
from cluster.settings import Settings

_BATCH_ROWS = 4096


async def evaluate_version(
    settings: Settings,
    version_record: dict[str, Any],
    table: str,
    snapshot_id: int | None,
    metric: str,
) -> float:
    """``metric`` of the version in ``version_record`` on ``table`` at ``snapshot_id``
    (the current snapshot when None)."""
    from actors.lake.service import LakeService

    data = await ArtifactStore(artifacts_root(settings)).read(
        version_record["artifact_path"], version_record["sha256"]
    )
    model = await asyncio.to_thread(load_artifact, data)
    spec: dict[str, Any] = version_record.get("model_spec") or {}
    task = str(spec.get("task", model.task))
    allowed = TASK_METRICS.get(task, ())
    if metric not in allowed:
        raise InvalidInputError(
            field="metric",
            value=metric,
            allowed=f"a {task} metric: {', '.join(allowed)}",
        )
    features, label = list(spec["features"]), str(spec["label"])
    lake = LakeService.from_settings(settings)
    rows = await lake.scan(table, columns=[*features, label], snapshot_id=snapshot_id)
    return await asyncio.to_thread(
        functools.partial(score, table=table, snapshot_id=snapshot_id), model, rows, spec, metric
    )


def score(
    model: ForgeNet,
    rows: pa.Table,
    model_spec: dict[str, Any],
    metric: str,
    *,
    table: str,
    snapshot_id: int | None = None,
) -> float:
    """``metric`` of ``model`` over ``rows`` (features and label columns)."""
    features, label = list(model_spec["features"]), str(model_spec["label"])
    if rows.num_rows == 0:
        raise EmptyTrainingDataError(
            table=table,
            snapshot_id=snapshot_id,
            reason="has no rows to score on",
            fix="pick a holdout snapshot with rows",
        )
    for column in [*features, label]:
        nulls = rows.column(column).null_count
        if nulls:
            raise TrainingDataValueError(
                table=table,
                snapshot_id=snapshot_id,
                column=column,
                problem=f"holds {nulls} null values",
                fix="score on rows without nulls (filter them in the holdout table)",
            )
    columns = {name: _numpy(rows.column(name)) for name in [*features, label]}
    task = str(model_spec["task"])

    def batches() -> Any:
        for start in range(0, rows.num_rows, _BATCH_ROWS):
            batch = {k: v[start : start + _BATCH_ROWS] for k, v in columns.items()}
            yield to_tensors(batch, features, label, task)

    values = evaluate(
        model, batches(), task=task, loss_name=str(model_spec["loss"]), metrics=[metric]
    )
    return float(values[metric])


def _numpy(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_boolean(column.type):
        column = column.cast(pa.int64())
    return np.asarray(column.to_numpy(zero_copy_only=False))
