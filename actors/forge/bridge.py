"""Ray Train -> Tune: each report of a trial's trainer, with its checkpoint.

Both callbacks run in the Train controller. ``ReportBridge`` hands every report (rank
0's metrics and the persisted checkpoint's path) to the trial's ``TrainHost``, one at a
time, where the trial function picks it up and reports it to Tune; ``ControllerLink``
gives the host the controller's handle, so a stopped trial can abort its Train run
(workers and placement group released) rather than leave it running. This module stays
light (no torch): the callbacks are unpickled in every Train controller process.
"""

from __future__ import annotations

from typing import Any

import ray
from ray.train.v2._internal.execution.callback import ControllerCallback
from ray.train.v2.api.callback import UserCallback

CHECKPOINT_KEY = "_forge_checkpoint"


class ReportBridge(UserCallback):
    """Forwards Train reports to ``host.put`` (blocking until the trial has room)."""

    def __init__(self, host: Any) -> None:
        self._host = host

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        item = dict(metrics[0])
        item[CHECKPOINT_KEY] = checkpoint.path if checkpoint is not None else None
        ray.get(self._host.put.remote(item))


class ControllerLink(ControllerCallback):
    """Tells the host which controller runs its trial's Train run, as the run starts.

    A ``ControllerCallback`` (a DeveloperAPI of Ray Train V2): Ray Train gives callbacks
    that are not ``UserCallback``s every controller hook, ``after_controller_start``
    included, which runs in the controller's own process.
    """

    def __init__(self, host: Any) -> None:
        self._host = host

    def after_controller_start(self, train_run_context: Any) -> None:
        ray.get(self._host.link.remote(ray.get_runtime_context().current_actor))
