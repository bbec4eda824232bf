"""What Cortex serving tests share: tiny registry models (built, never trained) and the
in-process reference their predictions are compared with."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from actors.forge.nets import build_model, load_artifact, save_artifact
from actors.forge.registry import ModelRegistry

FEATURES = ["age", "income", "tenure"]
LINEAGE = {
    "table": "sales.customers",
    "snapshot_id": 7,
    "run_id": "run-test",
    "config_hash": "c" * 64,
    "code_version": "test",
}


def model_spec(task: str = "regression", classes: int = 3) -> dict[str, Any]:
    classification = task == "classification"
    return {
        "task": task,
        "type": "mlp",
        "hidden": [8],
        "dropout": 0.0,
        "class_path": None,
        "kwargs": {},
        "features": list(FEATURES),
        "label": "churned" if classification else "spend",
        "in_features": len(FEATURES),
        "out_features": classes if classification else 1,
        "loss": "cross_entropy" if classification else "mse",
    }


def signature(task: str = "regression", classes: int = 3) -> dict[str, Any]:
    output: dict[str, Any] = {"name": "spend", "type": "double", "kind": "value"}
    if task == "classification":
        output = {"name": "churned", "type": "int64", "kind": "class_logits"}
        output["num_classes"] = classes
    return {
        "inputs": [{"name": name, "type": "double"} for name in FEATURES],
        "output": output,
        "task": task,
    }


def tiny_artifact(seed: int, task: str = "regression") -> bytes:
    """A small MLP with seeded weights and non-trivial scaling: distinct per seed."""
    torch.manual_seed(seed)
    spec = model_spec(task)
    net = build_model(spec)
    net.set_scaling([40.0, 50_000.0, 3.0], [12.0, 20_000.0, 2.0], 100.0 + seed, 25.0)
    return save_artifact(net, spec)


async def register_tiny(
    registry: ModelRegistry, name: str, seed: int, task: str = "regression"
) -> dict[str, Any]:
    """Register a tiny model as the next version of ``name``."""
    return await registry.register(
        name,
        artifact=tiny_artifact(seed, task),
        format="state_dict",
        model_spec=model_spec(task),
        signature=signature(task),
        metrics={"loss": 1.0},
        params={"seed": seed},
        lineage=LINEAGE,
        created_by="test",
    )


def reference(artifact: bytes, rows: list[dict[str, float]]) -> np.ndarray:
    """The model's own output for ``rows``, computed straight from the artifact."""
    net = load_artifact(artifact)
    x = torch.tensor([[row[f] for f in FEATURES] for row in rows], dtype=torch.float32)
    with torch.inference_mode():
        out: np.ndarray = net(x).numpy().astype(np.float64)
    return out


def rows(count: int, seed: int = 0) -> list[dict[str, float]]:
    """``count`` plausible feature rows."""
    rng = np.random.default_rng(seed)
    return [
        {
            "age": float(rng.integers(18, 80)),
            "income": float(rng.normal(50_000, 15_000)),
            "tenure": float(rng.integers(0, 10)),
        }
        for _ in range(count)
    ]
