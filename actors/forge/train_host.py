"""The process that runs one trial's ``TorchTrainer``: a small actor the trial owns.

Tune stops a trial (ASHA, PBT, a stop rule, Ctrl+C) by stopping its trial function; a
``TorchTrainer.fit()`` running in that function's process would go on holding its
workers' CPUs, since Ray Train V2 offers no handle to abort it. Run in a ``TrainHost``
instead, the whole Train run (controller, workers) belongs to an actor the trial kills
on its way out. The host also holds the queue of reports (``put``/``next_report``)
between ``ReportBridge`` and the trial. torch is imported only when ``fit`` runs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import ray

from actors.forge.bridge import ControllerLink, ReportBridge
from actors.forge.plan import TrialPlan

HOST_OPTIONS: dict[str, Any] = {"max_concurrency": 8}
ABORT_TIMEOUT_S = 30.0
_PUT_POLL_S = 0.2


@dataclass(frozen=True)
class FitRequest:
    """One attempt of one trial: its sampled hyperparameters and where to resume."""

    trial_id: str
    params: dict[str, Any]
    plan: TrialPlan
    resume_from: str | None


@ray.remote(num_cpus=0)
class TrainHost:
    """``fit`` runs the trainer; ``put`` and ``next_report`` pass its reports on; ``link``
    and ``abort`` reach its controller (start it with ``HOST_OPTIONS``: calls overlap)."""

    def __init__(self) -> None:
        self._reports: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=1)
        self._controller: Any = None
        self._closed = threading.Event()

    def fit(self, request: FitRequest) -> None:
        # Ray Train reads its settings (RAY_TRAIN_*) from the environment of the process
        # that creates the trainer and passes them on to its controller and workers.
        os.environ.update(request.plan.train_env)
        me = ray.get_runtime_context().current_actor
        build_trainer(request, [ReportBridge(me), ControllerLink(me)]).fit()

    def link(self, controller: Any) -> None:
        self._controller = controller

    def abort(self, timeout_s: float = ABORT_TIMEOUT_S) -> None:
        """Abort the Train run, if one is going: its controller stops the workers and
        removes their placement group (killing the controller instead would leave the
        group's CPUs reserved until Ray's cleaner notices)."""
        # A report nobody will read must not hold the controller up: it could not abort.
        self._closed.set()
        if self._controller is None:
            return
        # The controller exits as it aborts (or had finished): its call then fails.
        with contextlib.suppress(ray.exceptions.RayError):
            ray.get(self._controller.abort.remote(), timeout=timeout_s)

    def put(self, item: dict[str, Any]) -> None:
        """Queue a report, waiting while the last one is unread; dropped once aborted."""
        while not self._closed.is_set():
            try:
                self._reports.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue

    def next_report(self, timeout_s: float) -> dict[str, Any] | None:
        try:
            return self._reports.get(timeout=timeout_s)
        except queue.Empty:
            return None


def build_trainer(request: FitRequest, callbacks: list[Any]) -> Any:
    """The trial's ``TorchTrainer``: workers, failure policy, checkpoints, data."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.forge.loop import train_loop_per_worker
    from actors.forge.nets import model_spec_for
    from actors.forge.spec import TrainSpec, apply_params

    plan = request.plan
    spec = apply_params(TrainSpec.model_validate(plan.spec), request.params)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "model_spec": model_spec_for(spec, plan.num_classes),
            "scaling": plan.scaling,
            "resume_from": request.resume_from,
            "faults": plan.faults,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=plan.use_gpu,
            resources_per_worker={"CPU": spec.scaling.cpus_per_worker},
        ),
        run_config=RunConfig(
            # A fresh Train run per attempt: where to resume from is Tune's checkpoint,
            # never a Train snapshot left by an earlier attempt.
            name=f"{request.trial_id}-{time.time_ns()}",
            storage_path=plan.train_storage,
            failure_config=FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.num_to_keep),
            callbacks=callbacks,  # typed loosely: mypy sees Train V1's RunConfig
        ),
        datasets={"train": plan.train, "validation": plan.validation},
        # Every worker validates on all held-out rows; rank 0's numbers are reported.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
