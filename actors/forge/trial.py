"""One Tune trial: a Ray Train ``TorchTrainer`` run inside a Tune function trainable.

Ray 2.60 runs Ray Train V2, where a ``TorchTrainer`` is not itself a Tune trainable:
Tune runs this function, and the function runs ``TorchTrainer(...).fit()``. Ray's own
``TuneReportCallback`` forwards metrics only (the checkpoint as a path in the metrics),
which leaves Tune without checkpoints: a resumed trial could not continue and PBT could
not exploit. ``ReportBridge`` forwards each report with its checkpoint through a queue
instead, and the function reports both to Tune, so Tune holds every trial's checkpoints
(and restores them into ``resume_from`` on a restore or a PBT exploit), while Ray Train
still restarts failed workers from its own latest checkpoint (``FailureConfig``).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray.data
from ray import tune
from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from ray.util.queue import Empty, Queue

from actors.forge.bridge import CHECKPOINT_KEY, ReportBridge
from actors.forge.loop import train_loop_per_worker
from actors.forge.nets import model_spec_for
from actors.forge.spec import TrainSpec, apply_params

_POLL_S = 0.2


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of a run shares; handed to trials through the object store."""

    spec: dict[str, Any]
    num_classes: int | None
    scaling: dict[str, Any]
    train: ray.data.Dataset
    validation: ray.data.Dataset
    train_storage: str
    use_gpu: bool
    faults: list[dict[str, Any]] | None = None
    train_env: dict[str, str] = field(default_factory=dict)


def forge_trial(config: dict[str, Any], plan: TrialPlan) -> None:
    """The Tune trainable: train ``plan.spec`` with this trial's sampled ``config``."""
    # Ray Train reads its settings (RAY_TRAIN_*) from the environment of the process that
    # creates the trainer, and passes them on to its controller and workers: this one.
    os.environ.update(plan.train_env)
    spec = apply_params(TrainSpec.model_validate(plan.spec), config)
    model_spec = model_spec_for(spec, plan.num_classes)
    start = tune.get_checkpoint()
    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    trial_id = tune.get_context().get_trial_id()
    per_worker: dict[str, float] = {"CPU": spec.scaling.cpus_per_worker}
    # Typed loosely: mypy sees Train V1's RunConfig, whose callbacks are Tune's.
    callbacks: list[Any] = [ReportBridge(queue)]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "spec": spec.model_dump(mode="json"),
            "model_spec": model_spec,
            "scaling": plan.scaling,
            "resume_from": start.path if start is not None else None,
            "faults": plan.faults,
        },
        scaling_config=ScalingConfig(
            num_workers=spec.scaling.num_workers,
            use_gpu=plan.use_gpu,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            # A fresh Train run per attempt: where to resume from is Tune's checkpoint,
            # never a Train snapshot left by an earlier attempt.
            name=f"{trial_id}-{time.time_ns()}",
            storage_path=plan.train_storage,
            failure_config=FailureConfig(max_failures=spec.failure.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.num_to_keep),
            callbacks=callbacks,
        ),
        datasets={"train": plan.train, "validation": plan.validation},
        # Every worker validates on all held-out rows; rank 0's numbers are reported.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    _fit_and_forward(trainer, queue)


def _fit_and_forward(trainer: TorchTrainer, queue: Queue) -> None:
    """Run ``trainer.fit()`` in a thread; report what it reports to Tune from this one."""
    failure: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the trial's own thread below
            failure.append(exc)

    worker = threading.Thread(target=fit, name="forge-train-fit", daemon=True)
    worker.start()
    while True:
        try:
            item = queue.get(timeout=_POLL_S)
        except Empty:
            if worker.is_alive() or not queue.empty():
                continue
            break
        path = item.pop(CHECKPOINT_KEY)
        tune.report(item, checkpoint=tune.Checkpoint(path) if path else None)
    if failure:
        raise failure[0]
