"""What every trial of a run shares: the spec, the data and where trials keep things."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray.data


@dataclass(frozen=True)
class TrialPlan:
    """Handed to each trial through the object store (``tune.with_parameters``)."""

    spec: dict[str, Any]
    num_classes: int | None
    scaling: dict[str, Any]
    train: ray.data.Dataset
    validation: ray.data.Dataset
    train_storage: str
    use_gpu: bool
    faults: list[dict[str, Any]] | None = None
    train_env: dict[str, str] = field(default_factory=dict)
