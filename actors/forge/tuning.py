"""The Tune side of a run: search space, scheduler, stop rule, and the Tuner itself.

``param_space`` and ``build_scheduler`` translate the spec (choice, uniform,
loguniform, grid; FIFO, ASHA, PBT) into Tune's objects; ``open_tuner`` builds a new
Tuner under ``<data_dir>/forge/experiments/<run_id>``, or restores the one already
there, with its search state, finished trials and every trial's checkpoints, so a
resubmitted run continues instead of starting over. Trials report progress through
``ProgressCallback`` to whatever ``progress_sink`` the driver registered for the run.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)
from ray.tune.search.basic_variant import BasicVariantGenerator

from actors.forge.plan import TrialPlan
from actors.forge.results import TrialRecord
from actors.forge.spec import Distribution, TrainSpec
from actors.forge.trial import forge_trial
from cluster.settings import Settings

# The trial function only waits on its TorchTrainer, whose workers reserve their own
# CPUs. Tune refuses an empty request, and even a fraction of a CPU per trial would
# leave the last worker's whole CPU unplaceable; one byte of memory reserves nothing.
TRIAL_DRIVER_RESOURCES: dict[str, float] = {"cpu": 0, "memory": 1}
TIME_ATTR = "epoch"
Sink = Callable[[dict[str, Any]], None]
_SINKS: dict[str, Sink] = {}
_SINKS_LOCK = threading.Lock()


def experiments_root(settings: Settings) -> Path:
    """``<data_dir>/forge/experiments``: one Tune experiment folder per run id."""
    return settings.data_path / "forge" / "experiments"


def sample(dist: Distribution, *, for_pbt: bool = False) -> Any:
    """One distribution as Tune's search-space object."""
    if dist.choice is not None:
        # PBT mutates a list of options by resampling; Tune's own domain elsewhere.
        return list(dist.choice) if for_pbt else tune.choice(list(dist.choice))
    if dist.grid is not None:
        return tune.grid_search(list(dist.grid))
    if dist.uniform is not None:
        return tune.uniform(*dist.uniform)
    assert dist.loguniform is not None  # validated: exactly one is set
    return tune.loguniform(*dist.loguniform)


def param_space(spec: TrainSpec) -> dict[str, Any]:
    """The spec's search space as Tune's ``param_space`` (keys are spec paths)."""
    return {key: sample(dist) for key, dist in spec.tune.search_space.items()}


def build_scheduler(spec: TrainSpec) -> TrialScheduler:
    """FIFO, ASHA or PBT, counting time in epochs."""
    scheduler = spec.tune.scheduler
    if scheduler.type == "asha":
        return ASHAScheduler(
            time_attr=TIME_ATTR,
            max_t=spec.epochs,
            grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
        )
    if scheduler.type == "pbt":
        mutations = {
            key: sample(dist, for_pbt=True) for key, dist in spec.tune.search_space.items()
        }
        return PopulationBasedTraining(
            time_attr=TIME_ATTR,
            perturbation_interval=scheduler.perturbation_interval,
            hyperparam_mutations=mutations,
        )
    return FIFOScheduler()


class ObjectiveStopper(tune.Stopper):
    """Stops a trial once its objective reaches ``threshold`` (the spec's stop rule)."""

    def __init__(self, metric: str, mode: str, threshold: float) -> None:
        self.metric, self.mode, self.threshold = metric, mode, threshold

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        value = result.get(self.metric)
        if not isinstance(value, int | float):
            return False
        return value <= self.threshold if self.mode == "min" else value >= self.threshold

    def stop_all(self) -> bool:
        return False


class ProgressCallback(tune.Callback):
    """Forwards trial events to the sink registered for ``run_id`` in this process.

    It holds only the run id: Tune pickles it with the experiment, and a restored
    experiment's callback must reach the sink of the process that restored it.
    """

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id

    def _emit(self, event: dict[str, Any]) -> None:
        with _SINKS_LOCK:
            sink = _SINKS.get(self.run_id)
        if sink is not None:
            sink(event)

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit({"event": "start", "trial_id": trial.trial_id, "params": dict(trial.config)})

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        self._emit({"event": "result", "trial_id": trial.trial_id, "result": dict(result)})

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit({"event": "complete", "trial_id": trial.trial_id})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._emit({"event": "error", "trial_id": trial.trial_id})

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        # Called however the run ends (finished, failed, interrupted): the only place that
        # sees every trial's final status, restored ones included.
        ended = {
            str(trial.path): {"trial_id": trial.trial_id, "status": str(trial.status)}
            for trial in trials
        }
        self._emit({"event": "end", "trials": ended})


@contextmanager
def progress_sink(run_id: str, sink: Sink) -> Iterator[None]:
    """Route ``run_id``'s trial events to ``sink`` while the block runs."""
    with _SINKS_LOCK:
        _SINKS[run_id] = sink
    try:
        yield
    finally:
        with _SINKS_LOCK:
            _SINKS.pop(run_id, None)


def open_tuner(
    spec: TrainSpec, plan: TrialPlan, *, run_id: str, root: Path, max_concurrent: int
) -> tuple[tune.Tuner, bool]:
    """The run's Tuner: restored when ``root/run_id`` holds its experiment, else new.

    Returns the tuner and whether it was restored.
    """
    trainable = tune.with_resources(
        tune.with_parameters(forge_trial, plan=plan), TRIAL_DRIVER_RESOURCES
    )
    path = root / run_id
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(
            str(path), trainable, resume_unfinished=True, resume_errored=True
        )
        return tuner, True
    root.mkdir(parents=True, exist_ok=True)
    stop = spec.stop.metric_threshold
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.objective.metric,
            mode=spec.mode,
            scheduler=build_scheduler(spec),
            # Tune ignores max_concurrent_trials with a generator; it limits itself.
            search_alg=BasicVariantGenerator(
                random_state=spec.data.seed,
                max_concurrent=spec.tune.max_concurrent_trials or max_concurrent,
            ),
            num_samples=spec.tune.num_samples,
            time_budget_s=spec.stop.time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=run_id,
            storage_path=str(root),
            stop=None if stop is None else ObjectiveStopper(spec.objective.metric, spec.mode, stop),
            failure_config=tune.FailureConfig(max_failures=spec.failure.trial_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=_tune_checkpoints_kept(spec)),
            callbacks=[ProgressCallback(run_id)],
            verbose=0,
        ),
    )
    return tuner, False


def _tune_checkpoints_kept(spec: TrainSpec) -> int | None:
    """How many checkpoints Tune keeps per trial: the spec's, except under PBT, which
    restores a trial from another's checkpoint some time after choosing it: the donor,
    training on, would have deleted it (Tune then fails the exploiting trial)."""
    return None if spec.tune.scheduler.type == "pbt" else spec.checkpoint.num_to_keep


def trial_records(results: Any, trials: dict[str, dict[str, Any]]) -> list[TrialRecord]:
    """Every trial of a finished ``ResultGrid`` as a ``TrialRecord``, in trial-id order.

    ``trials`` is what ``ProgressCallback`` saw at the end, by trial path: each trial's
    id and final Tune status (a result's own metrics may be another trial's: PBT copies
    the donor's last result into the trial it exploits).
    """
    records = []
    for result in results:
        frame = result.metrics_dataframe
        rows = [] if frame is None else frame.to_dict(orient="records")
        rows = [{k: _plain(v) for k, v in row.items()} for row in rows]
        known = trials.get(str(result.path), {})
        trial_id = known.get("trial_id") or (result.metrics or {}).get("trial_id")
        records.append(
            TrialRecord(
                trial_id=str(trial_id or Path(result.path).name),
                params=dict(result.config or {}),
                rows=rows,
                error=None if result.error is None else _one_line(result.error),
                path=str(result.path),
                checkpoint_path=None if result.checkpoint is None else result.checkpoint.path,
                last={k: _plain(v) for k, v in (result.metrics or {}).items()},
                tune_status=known.get("status"),
            )
        )
    return sorted(records, key=lambda r: r.trial_id)


def _plain(value: Any) -> Any:
    """numpy scalars as Python values; pandas' NaN for "not reported" as None."""
    item = getattr(value, "item", None)
    value = item() if callable(item) else value
    return None if isinstance(value, float) and math.isnan(value) else value


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    last = next((line for line in reversed(text) if line.strip()), type(error).__name__)
    return f"{type(error).__name__}: {last.strip()}"[:500]
