"""Batches of columns as tensors: what the training loop and holdout scoring feed a model."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch


def to_tensors(
    batch: Mapping[str, np.ndarray], features: list[str], label: str, task: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of columns as (features float32 [N, F], labels float32 or int64 [N])."""
    x = np.stack([np.asarray(batch[c], dtype=np.float32) for c in features], axis=1)
    y_dtype = np.int64 if task == "classification" else np.float32
    y = np.array(batch[label], dtype=y_dtype)  # a copy: Ray's batches are read-only
    return torch.from_numpy(x), torch.from_numpy(y)
