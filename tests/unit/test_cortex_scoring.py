"""Batch scoring without Ray: the batch function against the network itself, the request
and source checks, lineage properties, the plan's typed errors, and the exactly-once
commit on an embedded Lake and SQLite registry.

``register_tiny_model`` and ``write_table`` are shared with tests/ray/test_cortex_jobs.py.
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from actors.cortex.scoring import (
    OUTPUT_COLUMNS,
    RUN_ID_PROPERTY,
    BatchScorer,
    FeatureColumnsMissingError,
    ScoreRequest,
    check_source,
    committed_run,
    default_actors,
    default_run_id,
    lineage_properties,
    output_schema,
    score_table,
)
from actors.cortex.served import ServedModel
from actors.forge.nets import build_model, load_artifact, save_artifact
from actors.forge.registry import registry_from_settings
from actors.lake.errors import SchemaMismatchError, SnapshotNotFoundError, TableNotFoundError
from actors.lake.service import LakeService
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings, load_settings
from jobs import score as score_job

FEATURES = ["x1", "x2"]


def tiny_model(task: str, seed: int = 0) -> tuple[bytes, dict[str, Any], dict[str, Any]]:
    """A small MLP with non-trivial scaling: (artifact, model_spec, signature)."""
    classes = 3 if task == "classification" else 1
    spec = {
        "task": task,
        "type": "mlp",
        "hidden": [8],
        "dropout": 0.0,
        "class_path": None,
        "kwargs": {},
        "features": FEATURES,
        "label": "y",
        "in_features": len(FEATURES),
        "out_features": classes,
        "loss": "cross_entropy" if classes > 1 else "mse",
    }
    torch.manual_seed(seed)
    net = build_model(spec)
    net.set_scaling([1.0, 10.0], [2.0, 5.0], 3.0 if classes == 1 else 0.0, 4.0)
    output: dict[str, Any] = {"name": "y", "type": "double", "kind": "value"}
    if classes > 1:
        output = {"name": "y", "type": "int64", "kind": "class_logits", "num_classes": classes}
    signature = {
        "inputs": [{"name": "x1", "type": "double"}, {"name": "x2", "type": "int64"}],
        "output": output,
        "task": task,
    }
    return save_artifact(net, spec), spec, signature


async def write_table(settings: Settings, name: str, rows: pa.Table) -> int:
    """Create ``name`` (and its namespace) and append ``rows``; the new snapshot id."""
    lake = LakeService.from_settings(settings)
    await lake.create_namespace(name.split(".")[0], exist_ok=True)
    await lake.create_table(name, schema=rows.schema)
    result = await lake.append(name, rows)
    return int(result["snapshot_id"])


async def register_tiny_model(
    settings: Settings, name: str, task: str, *, table: str, snapshot_id: int, seed: int = 0
) -> dict[str, Any]:
    """Register a tiny model trained (by lineage) on ``table`` at ``snapshot_id``;
    the version record, with ``production`` pointing at it."""
    artifact, spec, signature = tiny_model(task, seed)
    lineage = {
        "table": table,
        "snapshot_id": snapshot_id,
        "run_id": "run-test",
        "config_hash": "0" * 16,
        "code_version": "test",
    }
    async with registry_from_settings(settings) as registry:
        record = await registry.register(
            name,
            artifact=artifact,
            model_spec=spec,
            signature=signature,
            metrics={"rmse": 1.0},
            params={},
            lineage=lineage,
        )
        await registry.set_alias(name, "production", record["version"], actor="test")
        return await registry.version(name, record["version"])


def source_rows(n: int = 50, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "id": pa.array(np.arange(n), pa.int64()),
            "x1": rng.normal(1, 2, n),
            "x2": pa.array(rng.integers(0, 20, n), pa.int64()),
            "note": [f"row {i}" for i in range(n)],
        }
    )


def direct(artifact: bytes, table: pa.Table) -> torch.Tensor:
    """What the network says in this process, on the float32 features."""
    x = np.column_stack([table[c].to_numpy().astype(np.float64) for c in FEATURES])
    with torch.inference_mode():
        out: torch.Tensor = load_artifact(artifact)(torch.from_numpy(x.astype(np.float32)))
    return out


def served(task: str) -> tuple[ServedModel, bytes]:
    artifact, spec, signature = tiny_model(task)
    record = {"name": "tiny", "version": 2, "signature": signature, "model_spec": spec}
    return ServedModel.from_artifact(record, artifact, "cpu"), artifact


# ---- the batch function ---------------------------------------------------------------


def test_regression_batch_keeps_the_source_and_adds_exact_predictions() -> None:
    model, artifact = served("regression")
    batch = source_rows()
    out = score_table(model, batch)
    assert out.column_names == [*batch.column_names, "prediction", "model", "version"]
    assert out.select(batch.column_names).equals(batch)
    expected = direct(artifact, batch).numpy().astype(np.float64)
    assert out["prediction"].to_numpy().tolist() == expected.tolist()
    assert set(out["model"].to_pylist()) == {"tiny"} and set(out["version"].to_pylist()) == {2}
    assert out.schema.field("prediction").type == pa.float64()
    assert out.schema.field("version").type == pa.int64()


def test_classification_batch_adds_the_class_and_its_probabilities() -> None:
    model, artifact = served("classification")
    batch = source_rows(40)
    out = score_table(model, batch)
    assert out.column_names[-4:] == ["prediction", "probabilities", "model", "version"]
    logits = direct(artifact, batch)
    assert out["prediction"].to_pylist() == logits.argmax(dim=-1).tolist()
    probabilities = torch.softmax(logits.double(), dim=-1).numpy()
    assert np.array_equal(np.array(out["probabilities"].to_pylist()), probabilities)
    assert out.schema.field("probabilities").type == pa.list_(pa.float64())


def test_rows_with_a_null_or_nan_feature_get_no_prediction() -> None:
    model, artifact = served("classification")
    batch = pa.table(
        {
            "x1": pa.array([1.0, None, 2.0, math.nan, 3.0], pa.float64()),
            "x2": pa.array([1, 2, None, 4, 5], pa.int64()),
        }
    )
    out = score_table(model, batch)
    assert out["prediction"].null_count == 3 and out["probabilities"].null_count == 3
    valid = batch.take([0, 4])
    assert out["prediction"].to_pylist()[0::4] == direct(artifact, valid).argmax(-1).tolist()
    everything_null = score_table(model, batch.take([1, 2]))
    assert everything_null["prediction"].null_count == 2
    assert everything_null.schema.field("prediction").type == pa.int64()


def test_batch_scorer_loads_the_model_once_and_scores_batches() -> None:
    artifact, spec, signature = tiny_model("regression")
    record = {"name": "tiny", "version": 1, "signature": signature, "model_spec": spec}
    scorer = BatchScorer(record, artifact, "cpu")
    first, second = source_rows(10, 3), source_rows(7, 4)
    loaded = scorer.model
    assert scorer(first).num_rows == 10 and scorer(second).num_rows == 7
    assert scorer.model is loaded
    expected = direct(artifact, second).numpy().astype(np.float64).tolist()
    assert scorer(second)["prediction"].to_pylist() == expected


# ---- plain parts ----------------------------------------------------------------------


def test_lineage_properties_and_committed_run() -> None:
    props = lineage_properties(model="m", version=3, table="ml.src", snapshot_id=42, run_id="r")
    assert props == {
        "datapunk.cortex.model": "m",
        "datapunk.cortex.version": "3",
        "datapunk.cortex.source-table": "ml.src",
        "datapunk.cortex.source-snapshot-id": "42",
        "datapunk.cortex.scoring-run-id": "r",
    }
    history = [
        {"snapshot_id": 1, "summary": {"datapunk.ingest.run-id": "r"}},
        {"snapshot_id": 2, "summary": props},
    ]
    found = committed_run(history, "r")
    assert found is not None and found["snapshot_id"] == 2
    assert committed_run(history, "other") is None and committed_run([], "r") is None


def test_default_run_id_is_stable_and_names_its_inputs() -> None:
    run = default_run_id("m", 1, "ml.src", 7, "ml.out")
    assert run == default_run_id("m", 1, "ml.src", 7, "ml.out")
    assert run.startswith("score_") and len(run) == len("score_") + 16
    others = {
        default_run_id("m", 2, "ml.src", 7, "ml.out"),
        default_run_id("m", 1, "ml.src", 8, "ml.out"),
        default_run_id("m", 1, "ml.src", 7, "ml.other"),
    }
    assert run not in others and len(others) == 3


def test_score_request_checks_and_normalises() -> None:
    request = ScoreRequest(model="m", table="src", output="ml.out")
    assert request.table == "default.src" and request.ref == "production"
    assert ScoreRequest(model="m", table="a.b", output="a.c", version=3).ref == 3
    assert ScoreRequest(model="m", table="a.b", output="a.c", alias="canary").ref == "canary"
    with pytest.raises(InvalidInputError, match=r"a table other than the source 'default\.src'"):
        ScoreRequest(model="m", table="src", output="default.src")
    bad: list[dict[str, Any]] = [
        {"alias": "production", "version": 1},
        {"batch_size": 0},
        {"actors": 0},
        {"version": 0},
        {"device": "tpu"},
        {"output": "not a table"},
    ]
    for kwargs in bad:
        with pytest.raises(InvalidInputError):
            ScoreRequest(**{"model": "m", "table": "a.b", "output": "a.c", **kwargs})


def test_check_source_names_missing_and_non_numeric_inputs() -> None:
    _, _, signature = tiny_model("regression")
    fine = pa.schema([("x1", pa.float32()), ("x2", pa.int32()), ("other", pa.string())])
    check_source(fine, signature, table="a.b", snapshot_id=1, model="m", version=1)
    bad = pa.schema([("x2", pa.string())])
    with pytest.raises(FeatureColumnsMissingError) as caught:
        check_source(bad, signature, table="a.b", snapshot_id=9, model="m", version=4)
    message = caught.value.message
    assert "'a.b' (snapshot 9)" in message and "model 'm' version 4" in message
    assert "'x1' is missing" in message and "'x2' is string, not a number" in message
    assert "fix:" in message
    clash = pa.schema([("x1", pa.float64()), ("x2", pa.int64()), ("prediction", pa.int64())])
    with pytest.raises(InvalidInputError, match="prediction"):
        check_source(clash, signature, table="a.b", snapshot_id=1, model="m", version=1)


def test_output_schema_adds_the_outputs_after_the_source() -> None:
    source = pa.schema([pa.field("id", pa.int64(), nullable=False), ("x1", pa.float64())])
    _, _, regression = tiny_model("regression")
    _, _, classification = tiny_model("classification")
    assert output_schema(source, regression).names == ["id", "x1", "prediction", "model", "version"]
    schema = output_schema(source, classification)
    assert schema.names == ["id", "x1", *OUTPUT_COLUMNS]
    assert all(field.nullable for field in schema)


def test_default_actors() -> None:
    assert default_actors("cuda", 16, 4) == 4
    assert default_actors("cpu", 2, 0) == 1
    assert default_actors("cpu", 1, 0) == 1
    assert default_actors("cpu", 64, 0) == 4


# ---- the plan and the commit, on an embedded Lake ------------------------------------


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return load_settings(data_dir=data_dir)


@pytest.fixture
def registered(settings: Settings) -> dict[str, Any]:
    snapshot = asyncio.run(write_table(settings, "ml.src", source_rows()))
    return asyncio.run(
        register_tiny_model(settings, "tiny", "regression", table="ml.src", snapshot_id=snapshot)
    )


def plan(settings: Settings, **kwargs: Any) -> score_job.ScorePlan:
    request = ScoreRequest(**{"model": "tiny", "table": "ml.src", "output": "ml.out", **kwargs})
    return asyncio.run(score_job.plan_scoring(settings, request))


def test_the_plan_pins_the_current_snapshot(settings: Settings, registered: dict[str, Any]) -> None:
    pinned = plan(settings)
    current = asyncio.run(LakeService.from_settings(settings).describe("ml.src"))
    assert pinned.snapshot_id == current["current_snapshot_id"] and pinned.source_rows == 50
    assert pinned.record["version"] == registered["version"] and pinned.committed is None
    assert pinned.run_id == default_run_id("tiny", 1, "ml.src", pinned.snapshot_id, "ml.out")
    assert plan(settings, run_id="mine").run_id == "mine"


@pytest.mark.usefixtures("registered")
@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"model": "nope"}, NotFoundError, "'nope'"),
        ({"alias": "staging"}, NotFoundError, "'staging'"),
        ({"version": 9}, NotFoundError, "'9'"),
        ({"table": "ml.missing"}, TableNotFoundError, "'ml.missing'"),
        ({"snapshot_id": 123}, SnapshotNotFoundError, "'123'"),
    ],
)
def test_bad_input_is_a_typed_error_before_any_ray_work(
    settings: Settings, kwargs: dict[str, Any], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named):
        plan(settings, **kwargs)


@pytest.mark.usefixtures("registered")
def test_a_table_without_the_inputs_or_rows_is_refused(settings: Settings) -> None:
    asyncio.run(write_table(settings, "ml.other", pa.table({"x1": [1.0], "z": [2.0]})))
    with pytest.raises(FeatureColumnsMissingError, match="'x2' is missing"):
        plan(settings, table="ml.other")
    lake = LakeService.from_settings(settings)
    asyncio.run(lake.create_table("ml.empty", schema=source_rows().schema))
    with pytest.raises(InvalidInputError, match="no snapshot"):
        plan(settings, table="ml.empty")


@pytest.mark.usefixtures("registered")
def test_an_output_table_that_cannot_take_the_rows_is_refused_up_front(
    settings: Settings,
) -> None:
    asyncio.run(write_table(settings, "ml.out", pa.table({"prediction": ["text"]})))
    with pytest.raises(SchemaMismatchError, match="prediction"):
        plan(settings)


@pytest.mark.usefixtures("registered")
def test_main_prints_one_error_line_and_exits_2(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["tiny", "--table", "ml.src", "--output", "ml.src"]
    assert score_job.main(argv, settings=settings) == 2
    assert one_line(capsys).startswith("error: invalid --output='ml.src': a table other than")
    assert (
        score_job.main(["ghost", "--table", "ml.src", "--output", "ml.o"], settings=settings) == 2
    )
    assert one_line(capsys) == "error: model 'ghost' does not exist; registered models: tiny"


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The message printed, unwrapped (Rich folds long lines at the terminal's width)."""
    return "".join(capsys.readouterr().out.strip().splitlines())


def test_commit_writes_once_with_lineage(settings: Settings, registered: dict[str, Any]) -> None:
    pinned = plan(settings)
    model = ServedModel.from_artifact(registered, *_artifact(settings))
    rows = score_table(model, source_rows())
    snapshot, already = score_job.commit(settings, pinned, rows)
    assert not already
    again, already = score_job.commit(settings, pinned, rows)  # a twin run, same id
    assert already and again == snapshot
    lake = LakeService.from_settings(settings)
    assert asyncio.run(lake.scan("ml.out")).num_rows == 50
    history = asyncio.run(lake.history("ml.out"))
    summary = history[-1]["summary"]
    assert history[-1]["snapshot_id"] == snapshot
    assert summary[RUN_ID_PROPERTY] == pinned.run_id
    assert summary["datapunk.cortex.source-snapshot-id"] == str(pinned.snapshot_id)
    # A rerun now stops at the plan: the run is found in the output's history.
    replanned = plan(settings)
    assert replanned.committed is not None and replanned.committed["snapshot_id"] == snapshot
    outcome = score_job.score(settings, replanned.request)
    assert outcome.already and outcome.rows == 50 and outcome.output_snapshot_id == snapshot


def _artifact(settings: Settings) -> tuple[bytes, str]:
    async def read() -> bytes:
        async with registry_from_settings(settings) as registry:
            return (await registry.artifact("tiny", "production"))[1]

    return asyncio.run(read()), "cpu"
