"""Ray Train -> Tune: each report of a trial's trainer, with its checkpoint.

This module stays light (no torch): the callback is unpickled in every Train
controller process, which should not pay for importing the training code.
"""

from __future__ import annotations

from typing import Any

from ray.train.v2.api.callback import UserCallback
from ray.util.queue import Queue

CHECKPOINT_KEY = "_forge_checkpoint"


class ReportBridge(UserCallback):
    """Runs in the Train controller: hands each report (rank 0's metrics and the
    persisted checkpoint's path) to the trial function, one at a time."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        item = dict(metrics[0])
        item[CHECKPOINT_KEY] = checkpoint.path if checkpoint is not None else None
        self._queue.put(item)
