"""The end of a successful run: the best checkpoint into the model registry.

The artifact is the best trial's last checkpoint, rebuilt into its network and saved
with ``save_artifact``; the version records the signature (feature names and types,
output), the metrics at that checkpoint, the trial's hyperparameters and full lineage
(Lake table and snapshot, run id, config hash, code version).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.data import PinnedData
from actors.forge.lineage import code_version
from actors.forge.loop import read_checkpoint
from actors.forge.nets import model_from_state, save_artifact
from actors.forge.recorder import Recorder
from actors.forge.registry import ModelRegistry
from actors.forge.spec import TrainSpec, apply_params, config_hash
from cluster.settings import Settings


@dataclass(frozen=True)
class RunContext:
    """What the run's later steps share."""

    settings: Settings
    spec: TrainSpec
    pinned: PinnedData
    run_id: str
    created_by: str | None


def register_best(
    recorder: Recorder, context: RunContext, num_classes: int | None, best: dict[str, Any]
) -> dict[str, Any]:
    """Record ``best`` in the run, register its checkpoint (unless the spec turns that
    off) and end the run ``succeeded``; returns the final run record."""
    spec, runs, run_id = context.spec, recorder.stores.runs, context.run_id
    path = Path(best["checkpoint"]["path"])
    summary = {
        "trial_id": best["trial_id"],
        "params": best["params"],
        "epoch": best["checkpoint"]["epoch"],
        "metrics": best["checkpoint"]["metrics"],
        "checkpoint_path": str(path),
    }
    if not spec.registry.enabled:
        return recorder.call(runs.update(run_id, state="succeeded", best=summary, error=None))
    state = read_checkpoint(path)
    model = model_from_state(state["model_spec"], state["state_dict"])
    settings = context.settings
    registry = ModelRegistry(recorder.stores.registry, ArtifactStore(artifacts_root(settings)))
    version = recorder.call(
        registry.register(
            spec.model_name,
            artifact=save_artifact(model, state["model_spec"]),
            format="state_dict",
            model_spec=state["model_spec"],
            signature=context.pinned.signature(spec, num_classes),
            metrics={k: v for k, v in summary["metrics"].items() if v is not None},
            params=_params(spec, best),
            tags=dict(spec.registry.tags),
            lineage=lineage(context),
            created_by=context.created_by,
            description=spec.description or None,
        )
    )
    number = int(version["version"])
    summary.update(model_name=spec.model_name, model_version=number)
    return recorder.call(
        runs.update(
            run_id,
            state="succeeded",
            best=summary,
            model_name=spec.model_name,
            model_version=number,
            error=None,
        )
    )


def lineage(context: RunContext) -> dict[str, Any]:
    """Where the model came from: data, run, configuration and code."""
    return {
        "table": context.pinned.table,
        "snapshot_id": context.pinned.snapshot_id,
        "run_id": context.run_id,
        "config_hash": config_hash(context.spec),
        "code_version": code_version(),
    }


def _params(spec: TrainSpec, best: dict[str, Any]) -> dict[str, Any]:
    """What the version was trained with; ``metric``/``mode`` feed the promotion gate."""
    trained = apply_params(spec, best["params"])
    return {
        "metric": spec.objective.metric,
        "mode": spec.mode,
        "task": spec.task,
        "loss": spec.loss,
        "trial_id": best["trial_id"],
        "epoch": best["checkpoint"]["epoch"],
        "hyperparameters": best["params"],
        "model": trained.model.model_dump(mode="json"),
        "optimizer": trained.optimizer.model_dump(mode="json"),
        "batch_size": trained.batch_size,
        "epochs": spec.epochs,
        "features": list(spec.data.features),
        "label": spec.data.label,
        "validation_fraction": spec.data.validation_fraction,
        "seed": spec.data.seed,
    }
