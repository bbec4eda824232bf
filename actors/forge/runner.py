"""One training run, end to end: validate and pin, tune, record, register.

``run_training`` is what ``datapunk train``, ``python -m jobs.train`` and the REST
route (through that job) all call, in a process connected to Ray:

1. the spec's data is checked against the Lake and its snapshot pinned (no worker yet);
2. the run record starts: its id is the spec's name and config hash, so resubmitting the
   same spec finds the record, keeps its pinned snapshot and restores its Tuner (search
   state, finished trials, checkpoints) instead of starting over;
3. the Tuner runs on the calling thread (Tune saves the experiment on Ctrl+C only from
   the main thread); trial progress goes to ``progress`` and into the record;
4. the best trial's last checkpoint is registered with its signature, metrics,
   parameters and lineage, and the record ends ``succeeded`` with the model version.

Errors in the data or the spec end the record ``failed``; trials failing after their
retries, or a stopped run, end it ``interrupted``: resubmit the same spec to resume.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import ray

from actors.forge.data import LakeReader, pin_and_validate
from actors.forge.datasets import prepare_datasets
from actors.forge.errors import RunInterruptedError, TrainingFailedError
from actors.forge.live import LiveTrials
from actors.forge.nets import build_model, model_spec_for
from actors.forge.plan import TrialPlan
from actors.forge.recorder import Recorder
from actors.forge.register import RunContext, register_best
from actors.forge.results import best_trial, summarise
from actors.forge.spec import TrainSpec, config_hash, run_id_for
from actors.forge.tuning import experiments_root, open_tuner, progress_sink, trial_records
from cluster.db.forge_store import ForgeRunStore
from cluster.errors import DatapunkError, PlatformStateError
from cluster.settings import Settings

logger = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]
_RECORD_EVERY_S = 2.0
_MAX_FRESH = 1000
_FINISHED = {"TERMINATED", "ERROR"}


def _ignore(_event: dict[str, Any]) -> None:
    return None


def run_training(
    settings: Settings,
    spec: TrainSpec,
    progress: Progress | None = None,
    created_by: str | None = None,
    *,
    fresh: bool = False,
    lake: LakeReader | None = None,
    faults: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run (or resume) ``spec``'s training; return the final run record.

    A run of this spec that already succeeded is returned as it is, unless ``fresh``
    asks for a new one. ``faults`` is the crash-drill seam of ``actors/forge/loop.py``
    (``[{"epoch": K, "marker": PATH}]``: fail once after epoch K while PATH exists).
    """
    if not ray.is_initialized():
        raise PlatformStateError(
            "training needs a Ray cluster; run `datapunk up` first, or submit it as a job "
            "(ray job submit --working-dir . -- python -m jobs.train SPEC.yaml)"
        )
    emit = progress or _ignore
    if lake is None:
        from actors.lake.service import LakeService

        lake = LakeService.from_settings(settings)
    with Recorder(settings) as recorder:
        runs = recorder.stores.runs
        run_id, existing = recorder.call(_choose_run(runs, spec, fresh))
        if existing is not None and existing["state"] == "succeeded":
            emit({"event": "done", "run_id": run_id, "record": existing, "already": True})
            return existing
        pinned_at = existing["snapshot_id"] if existing is not None else None
        pinned = recorder.call(pin_and_validate(lake, spec, pinned_at))
        recorder.call(
            runs.start(
                run_id,
                name=spec.name,
                spec=spec.model_dump(mode="json"),
                config_hash=config_hash(spec),
                experiment_path=str(experiments_root(settings) / run_id),
                lake_table=spec.data.table,
                snapshot_id=pinned.snapshot_id,
                created_by=created_by,
            )
        )
        emit(
            {
                "event": "pinned",
                "run_id": run_id,
                "snapshot_id": pinned.snapshot_id,
                "resumed": existing is not None,
            }
        )
        context = RunContext(settings, spec, pinned, run_id, created_by)
        record = _guarded(recorder, context, emit, faults)
    emit({"event": "done", "run_id": run_id, "record": record, "already": False})
    return record


def _guarded(
    recorder: Recorder, context: RunContext, emit: Progress, faults: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """``_train``, with how it ended written into the run record."""
    runs, run_id = recorder.stores.runs, context.run_id
    try:
        return _train(recorder, context, emit, faults)
    except (TrainingFailedError, RunInterruptedError) as exc:
        recorder.call(runs.update(run_id, state="interrupted", error=exc.message))
        raise
    except DatapunkError as exc:
        recorder.call(runs.update(run_id, state="failed", error=exc.message))
        raise
    except KeyboardInterrupt:
        recorder.call(runs.update(run_id, state="interrupted", error="stopped (Ctrl+C)"))
        raise
    except Exception as exc:
        recorder.call(runs.update(run_id, state="failed", error=f"{type(exc).__name__}: {exc}"))
        raise


async def _choose_run(
    runs: ForgeRunStore, spec: TrainSpec, fresh: bool
) -> tuple[str, dict[str, Any] | None]:
    """The run id to use and its record: the spec's own, or with ``fresh`` the first
    ``<id>-rN`` that has not succeeded (so a fresh run that stops resumes too)."""
    base = run_id_for(spec)
    existing = await runs.get(base)
    if not fresh or existing is None or existing["state"] != "succeeded":
        return base, existing
    for n in range(2, _MAX_FRESH):
        candidate = f"{base}-r{n}"
        record = await runs.get(candidate)
        if record is None or record["state"] != "succeeded":
            return candidate, record
    raise PlatformStateError(f"run {base!r} has {_MAX_FRESH} fresh runs; rename the spec")


def _train(
    recorder: Recorder, context: RunContext, emit: Progress, faults: list[dict[str, Any]] | None
) -> dict[str, Any]:
    spec, run_id, runs = context.spec, context.run_id, recorder.stores.runs
    prepared = prepare_datasets(context.settings, spec, context.pinned)
    # A custom class that does not import fails here, in the driver, not in a worker.
    build_model(model_spec_for(spec, prepared.num_classes))
    use_gpu, max_concurrent = _capacity(spec)
    root = experiments_root(context.settings)
    plan = TrialPlan(
        spec=spec.model_dump(mode="json"),
        num_classes=prepared.num_classes,
        scaling=prepared.scaling(),
        train=prepared.train,
        validation=prepared.validation,
        train_storage=str(root / run_id / "_train"),
        use_gpu=use_gpu,
        faults=faults,
        # The driver's Ray Train settings reach the trials' trainers (see trial.py).
        train_env={k: v for k, v in os.environ.items() if k.startswith("RAY_TRAIN_")},
    )
    tuner, restored = open_tuner(
        spec, plan, run_id=run_id, root=root, max_concurrent=max_concurrent
    )
    emit(
        {
            "event": "tuning",
            "run_id": run_id,
            "restored": restored,
            "train_rows": prepared.train_rows,
            "validation_rows": prepared.validation_rows,
        }
    )
    grid, ended = _fit(tuner, recorder, run_id, emit)
    trials = [summarise(t, spec.metrics, spec.epochs) for t in trial_records(grid, ended)]
    recorder.call(runs.update(run_id, results={"trials": trials}))
    unfinished = [t for t in ended.values() if t["status"] not in _FINISHED]
    if unfinished:
        raise RunInterruptedError(run_id=run_id, unfinished=len(unfinished))
    errored = [t for t in trials if t["status"] == "error"]
    if errored:
        first = errored[0]
        raise TrainingFailedError(
            run_id=run_id,
            reason=f"{len(errored)} of {len(trials)} trials failed (first: trial "
            f"{first['trial_id']} after epoch {first['epoch']}: {first['error']})",
        )
    best = best_trial(trials, spec.objective.metric, spec.mode)
    if best is None:
        raise TrainingFailedError(
            run_id=run_id,
            reason=f"no trial saved a checkpoint with a finite {spec.objective.metric}",
        )
    return register_best(recorder, context, prepared.num_classes, best)


def _capacity(spec: TrainSpec) -> tuple[bool, int]:
    """Whether trials use GPUs, and how many trials the cluster fits at once."""
    resources = ray.cluster_resources()
    gpus = float(resources.get("GPU", 0))
    use_gpu = gpus > 0 if spec.scaling.use_gpu == "auto" else bool(spec.scaling.use_gpu)
    workers = spec.scaling.num_workers
    fits = float(resources.get("CPU", 1)) / (workers * spec.scaling.cpus_per_worker)
    if use_gpu:
        fits = min(fits, gpus / workers)
    return use_gpu, max(1, math.floor(fits))


def _fit(
    tuner: Any, recorder: Recorder, run_id: str, emit: Progress
) -> tuple[Any, dict[str, dict[str, Any]]]:
    """``tuner.fit()`` on this thread; trial events to ``emit`` and, every few seconds,
    into the run record's ``results``. Returns the result grid and, by trial path, each
    trial's id and final Tune status."""
    live = LiveTrials()
    ended: dict[str, dict[str, Any]] = {}
    last_write = 0.0

    def sink(event: dict[str, Any]) -> None:
        nonlocal last_write
        if event["event"] == "end":
            ended.update(event["trials"])
            return
        emit(live.apply(event))
        now = time.monotonic()
        if now - last_write < _RECORD_EVERY_S and event["event"] == "result":
            return
        last_write = now
        try:
            recorder.call(recorder.stores.runs.update(run_id, results={"trials": live.trials()}))
        except Exception:  # a progress write must never fail the run; the end writes again
            logger.warning("could not record trial progress", exc_info=True)

    with progress_sink(run_id, sink):
        grid = tuner.fit()
    return grid, ended
