"""Forge end to end on the shared local Ray cluster, on real data scikit-learn ships.

A Lake table holds the dataset; a Tune search of TorchTrainer trials trains on its
pinned snapshot (Ray Data -> ``iter_torch_batches`` in the workers); the best model
reaches a stated threshold, is registered with full lineage and, loaded back from the
registry, predicts exactly what the checkpoint predicts in this process. A run whose
worker fails retries from its checkpoint (``FailureConfig``), and a run stopped midway
resumes from its checkpoints when resubmitted, under the same run id.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch

from actors.forge.errors import TrainingFailedError
from actors.forge.evaluate import evaluate_version
from actors.forge.loop import read_checkpoint
from actors.forge.nets import load_artifact, model_from_state
from actors.forge.registry import registry_from_settings
from actors.forge.runner import run_training
from actors.forge.spec import TrainSpec, config_hash, load_train_spec, run_id_for
from actors.forge.tensors import to_tensors
from actors.lake.service import LakeService
from cluster.db.forge_store import open_forge_stores
from cluster.settings import Settings
from jobs.datasets import LABEL, feature_columns, write_dataset

pytestmark = pytest.mark.ray

ACCURACY_THRESHOLD = 0.9  # breast_cancer, held-out rows, after 4 epochs
CANCER = "forge.cancer"
DIABETES = "forge.diabetes"


@pytest.fixture(autouse=True)
def _prompt_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controllers poll their workers every 2 s by default (each report and
    each failure waits for a poll); the driver passes RAY_TRAIN_* on to the trials. No
    preemption watcher either: one process less per trial on a two-CPU cluster."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


def cancer_spec() -> TrainSpec:
    return load_train_spec(
        {
            "name": "cancer",
            "task": "classification",
            "data": {
                "table": CANCER,
                "features": feature_columns("breast_cancer"),
                "label": LABEL,
                "seed": 7,
            },
            "model": {"type": "mlp", "hidden": [16]},
            "objective": {"metric": "accuracy"},
            "epochs": 4,
            "tune": {
                "search_space": {"optimizer.lr": {"grid": [0.003, 0.01]}},
                "max_concurrent_trials": 2,
            },
            "registry": {"tags": {"dataset": "sklearn-breast-cancer"}},
        }
    )


def diabetes_spec() -> TrainSpec:
    return load_train_spec(
        {
            "name": "diabetes",
            "task": "regression",
            "data": {"table": DIABETES, "features": feature_columns("diabetes"), "label": LABEL},
            "model": {"type": "mlp", "hidden": [16]},
            "epochs": 4,
            "failure": {"max_failures": 1},
        }
    )


async def _run_record(settings: Settings, run_id: str) -> dict[str, Any]:
    async with open_forge_stores(settings) as stores:
        record = await stores.runs.get(run_id)
    assert record is not None
    return record


async def _registered(settings: Settings, name: str, version: int) -> tuple[dict[str, Any], bytes]:
    async with registry_from_settings(settings) as registry:
        return await registry.artifact(name, version)


async def _all_rows(settings: Settings, spec: TrainSpec) -> tuple[torch.Tensor, torch.Tensor]:
    table = await LakeService.from_settings(settings).scan(spec.data.table)
    return to_tensors(table.to_pydict(), spec.data.features, LABEL, spec.task)


def test_a_tuned_model_reaches_the_threshold_and_reloads_exactly(ray_settings: Settings) -> None:
    snapshot = asyncio.run(write_dataset(ray_settings, "breast_cancer", CANCER))["snapshot_id"]
    spec = cancer_spec()
    events: list[dict[str, Any]] = []
    record = run_training(ray_settings, spec, events.append, created_by="key-1")

    assert record["state"] == "succeeded", record["error"]
    assert record["run_id"] == run_id_for(spec) and record["snapshot_id"] == snapshot
    experiments = ray_settings.data_path / "forge" / "experiments"
    assert Path(record["experiment_path"]) == experiments / record["run_id"]
    trials = record["results"]["trials"]
    assert len(trials) == 2 and {t["status"] for t in trials} == {"completed"}
    assert [h["epoch"] for h in trials[0]["history"]] == [1, 2, 3, 4]
    best = record["best"]
    assert best["metrics"]["accuracy"] >= ACCURACY_THRESHOLD
    assert {e["event"] for e in events} >= {"pinned", "tuning", "start", "result", "done"}

    # Registered with full lineage; the artifact reloads and predicts bit for bit.
    version, artifact = asyncio.run(_registered(ray_settings, "cancer", record["model_version"]))
    assert version["lineage"]["table"] == CANCER
    assert version["lineage"]["snapshot_id"] == snapshot
    assert version["lineage"]["run_id"] == record["run_id"]
    assert version["lineage"]["config_hash"] == config_hash(spec)
    assert version["lineage"]["code_version"].startswith("datapunk ")
    assert [i["name"] for i in version["signature"]["inputs"]] == spec.data.features
    assert version["signature"]["output"]["num_classes"] == 2
    assert version["metrics"]["accuracy"] == best["metrics"]["accuracy"]
    assert version["params"]["metric"] == "accuracy" and version["params"]["mode"] == "max"
    assert version["tags"] == {"dataset": "sklearn-breast-cancer"}
    assert version["created_by"] == "key-1"
    state = read_checkpoint(best["checkpoint_path"])
    in_process = model_from_state(state["model_spec"], state["state_dict"])
    reloaded = load_artifact(artifact)
    x, y = asyncio.run(_all_rows(ray_settings, spec))
    with torch.no_grad():
        assert torch.equal(reloaded(x), in_process(x))
        accuracy = float((reloaded(x).argmax(dim=-1) == y).float().mean())
    assert accuracy >= ACCURACY_THRESHOLD
    holdout = asyncio.run(evaluate_version(ray_settings, version, CANCER, snapshot, "accuracy"))
    assert holdout == pytest.approx(accuracy)

    # The same spec again is the same, finished run: nothing retrains or re-registers.
    again = run_training(ray_settings, spec)
    assert again["run_id"] == record["run_id"] and again["model_version"] == 1


def test_a_failed_worker_retries_and_a_stopped_run_resumes_from_checkpoints(
    ray_settings: Settings, tmp_path: Path
) -> None:
    asyncio.run(write_dataset(ray_settings, "diabetes", DIABETES))
    spec = diabetes_spec()
    first, second = tmp_path / "fail-after-2", tmp_path / "fail-after-3"
    first.touch()
    second.touch()
    faults = [{"epoch": 2, "marker": str(first)}, {"epoch": 3, "marker": str(second)}]

    # Epoch 2's failure is retried from its checkpoint (failure.max_failures: 1); epoch
    # 3's exhausts the retries, and the run stops, resumable.
    with pytest.raises(TrainingFailedError, match="resubmit the same spec"):
        run_training(ray_settings, spec, faults=faults)
    stopped = asyncio.run(_run_record(ray_settings, run_id_for(spec)))
    assert stopped["state"] == "interrupted"
    assert "injected fault after epoch 3" in stopped["error"]
    (trial,) = stopped["results"]["trials"]
    assert trial["epoch"] == 3 and trial["resumed_from_epoch"] == [2]

    record = run_training(ray_settings, spec)
    assert record["state"] == "succeeded" and record["run_id"] == stopped["run_id"]
    assert record["snapshot_id"] == stopped["snapshot_id"]
    (trial,) = record["results"]["trials"]
    # The epoch counter went on from the checkpoints: never back to 1.
    assert [h["epoch"] for h in trial["history"]] == [1, 2, 3, 4]
    assert trial["resumed_from_epoch"] == [2, 3]
    assert record["model_name"] == "diabetes" and record["best"]["epoch"] == 4
