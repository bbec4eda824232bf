"""``bench/forge.py``'s second phase: ASHA against random search on Forge's diabetes task.

The task is ``configs/training/diabetes.yaml`` as Forge reads it (``load_train_spec``):
scikit-learn's diabetes data (``jobs.datasets.dataset_table``), Forge's seeded hash
split (``validation_mask``) and training-side scaling, Forge's MLP (``model_spec_for``,
``build_model``), optimizer (``make_optimizer``), loss and validation metrics
(``batch_loss``, ``MetricAccumulator``). The search space is wider than the example's
(``SEARCH_SPACE``: learning rate 1e-4..0.1 log-uniform, four hidden-layer shapes, four
batch sizes), validated by Forge's spec and turned into Tune's by Forge's
``param_space``; ``BasicVariantGenerator`` samples it with the spec's seed, so both
searches draw the same ``TRIALS`` configurations in the same order, and each
configuration trains to the same numbers in both. Each trial trains in its Tune actor
(``forge_epochs``, the loop of ``actors/forge/loop.py`` over in-memory tensors) rather
than through a TorchTrainer and Ray Data: the comparison is between schedulers, and
starting a Train run per trial would cost more than the whole search on two CPUs.

* **random search**: FIFO, every trial to ``spec.epochs``;
* **ASHA**: ``AsyncHyperBandScheduler`` on ``epoch`` (grace ``GRACE`` epochs, reduction
  factor ``REDUCTION``, ``max_t`` = ``spec.epochs``), the same trials and seed.

A driver-side callback stamps every trial start and every result (seconds since
``fit`` was called). The random search's final best objective (``rmse``, minimised) is
the bar; each search's time to it is when its best so far first came within
``TOLERANCE`` (relative) of it, counted from ``fit`` or from its first trial start.

Importing this module imports torch's ``_dynamo`` up front: the first optimizer a process
builds imports it (seconds on a busy machine), and here that belongs to the trial
actors' start-up, which both searches pay alike, not to the first trial's epochs.
Otherwise importing it does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch._dynamo  # imported up front: see the docstring
import yaml
from ray import tune

from actors.forge.data import validation_mask
from actors.forge.loop import make_optimizer
from actors.forge.metrics import MetricAccumulator, batch_loss, loss_function
from actors.forge.nets import build_model, model_spec_for
from actors.forge.spec import TrainSpec, apply_params, load_train_spec

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._forge_overhead import LOGGERS_ENV, env, quiet_tune

SPEC = Path(__file__).resolve().parent.parent / "configs" / "training" / "diabetes.yaml"
TRIALS, GRACE, REDUCTION, TOLERANCE = 16, 3, 3, 0.01
# The example spec searches a 4-trial demo space in which every trial ends within 3 %
# of the best; a search worth scheduling spans the ranges people actually try.
SEARCH_SPACE: dict[str, Any] = {
    "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
    "model.hidden": {"choice": [[16], [32], [64, 32], [128, 64]]},
    "batch_size": {"choice": [16, 32, 64, 128]},
}
Search = Literal["random", "asha"]


@dataclass(frozen=True)
class Task:
    """The spec and its data, split and measured as Forge does; handed to every trial."""

    spec: dict[str, Any]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    scaling: dict[str, Any]


def load_task(spec_path: Path = SPEC) -> tuple[TrainSpec, Task]:
    """The diabetes spec (``SEARCH_SPACE``, ``TRIALS`` samples, validated by Forge) and
    its rows: Forge's split (seeded hash) and scaling."""
    from jobs.datasets import dataset_table

    data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    data["tune"] = {**data["tune"], "search_space": SEARCH_SPACE, "num_samples": TRIALS}
    spec = load_train_spec(data)
    columns = [*spec.data.features, spec.data.label]
    frame = dataset_table("diabetes").select(columns).to_pandas()
    held_out = validation_mask(frame, seed=spec.data.seed, fraction=spec.data.validation_fraction)
    x = frame[spec.data.features].to_numpy(np.float32)
    y = frame[spec.data.label].to_numpy(np.float32)
    train_x, train_y = x[~held_out], y[~held_out]
    # Forge's statistics: population spread of the training side, label included.
    scaling = {
        "x_mean": train_x.astype(np.float64).mean(axis=0).tolist(),
        "x_std": train_x.astype(np.float64).std(axis=0).tolist(),
        "y_mean": float(train_y.astype(np.float64).mean()),
        "y_std": float(train_y.astype(np.float64).std()),
    }
    task = Task(
        spec=spec.model_dump(mode="json"),
        x_train=train_x,
        y_train=train_y,
        x_val=x[held_out],
        y_val=y[held_out],
        scaling=scaling,
    )
    return spec, task


def forge_epochs(config: dict[str, Any], task: Task) -> None:
    """The trial: Forge's training loop on ``task`` with this trial's hyperparameters,
    reporting the validation metrics after every epoch."""
    torch.set_num_threads(1)
    spec = apply_params(TrainSpec.model_validate(task.spec), config)
    torch.manual_seed(spec.data.seed)
    net = build_model(model_spec_for(spec))
    net.set_scaling(**task.scaling)
    optimizer = make_optimizer(spec.optimizer, net.parameters())
    loss = loss_function(spec.loss)
    x, y = torch.from_numpy(task.x_train), torch.from_numpy(task.y_train)
    x_val, y_val = torch.from_numpy(task.x_val), torch.from_numpy(task.y_val)
    shuffle = torch.Generator().manual_seed(spec.data.seed)
    for epoch in range(1, spec.epochs + 1):
        net.train()
        total = 0.0
        for rows in torch.randperm(len(y), generator=shuffle).split(spec.batch_size):
            optimizer.zero_grad(set_to_none=True)
            value = batch_loss(net, loss, x[rows], y[rows])
            value.backward()
            optimizer.step()
            total += float(value.detach()) * len(rows)
        net.eval()
        accumulator = MetricAccumulator(spec.task, spec.loss)
        accumulator.add(net, x_val, y_val)
        metrics = accumulator.result(spec.metrics)
        tune.report({**metrics, "epoch": epoch, "train_loss": total / len(y)})


@dataclass(frozen=True)
class SearchRun:
    """One search: every result as (seconds since ``fit`` was called, trial, epoch,
    objective), the wall time of ``fit``, and the epochs each trial trained."""

    search: Search
    seconds: float
    first_start_s: float  # fit called -> first trial started (the trial actors' start-up)
    results: list[tuple[float, str, int, float]]
    epochs: dict[str, int] = field(default_factory=dict)

    @property
    def best(self) -> float:
        return min(value for *_, value in self.results)

    @property
    def total_epochs(self) -> int:
        return sum(self.epochs.values())

    def time_to(self, bar: float, tolerance: float = TOLERANCE) -> float | None:
        """When the best objective so far first came within ``tolerance`` of ``bar``
        (a minimised objective: ``<= bar * (1 + tolerance)``); ``None`` if never."""
        for seconds, _trial, _epoch, value in sorted(self.results):
            if value <= bar * (1 + tolerance):
                return seconds
        return None


def search(kind: Search, spec: TrainSpec, task: Task) -> SearchRun:
    """``TRIALS`` trials of ``forge_epochs``, FIFO to the last epoch or under ASHA."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from actors.forge.tuning import param_space

    metric = spec.objective.metric
    scheduler: TrialScheduler = (
        AsyncHyperBandScheduler(
            time_attr="epoch", max_t=spec.epochs, grace_period=GRACE, reduction_factor=REDUCTION
        )
        if kind == "asha"
        else FIFOScheduler()
    )
    stamps = _Results(metric)
    with tempfile.TemporaryDirectory(prefix="datapunk-bench-asha-") as storage:
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(forge_epochs, task=task), {"cpu": 1}),
            param_space=param_space(spec),
            tune_config=tune.TuneConfig(
                metric=metric,
                mode=spec.mode,
                scheduler=scheduler,
                search_alg=BasicVariantGenerator(random_state=spec.data.seed),
                num_samples=spec.tune.num_samples,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=f"diabetes-{kind}",
                storage_path=storage,
                callbacks=[stamps, JsonLoggerCallback(), CSVLoggerCallback()],
                verbose=0,
            ),
        )
        with env(LOGGERS_ENV, "1"), quiet_tune():
            start = time.perf_counter()
            stamps.origin = start
            grid = tuner.fit()
            seconds = time.perf_counter() - start
    epochs = stamps.epochs
    full = kind == "asha" or set(epochs.values()) == {spec.epochs}
    if grid.num_errors or len(epochs) != spec.tune.num_samples or not full:
        raise RuntimeError(
            f"the {kind} search had {grid.num_errors} failed trials of {len(epochs)}, "
            f"epochs trained {sorted(epochs.values())}"
        )
    return SearchRun(kind, seconds, min(stamps.starts), stamps.results, epochs)


class _Results(tune.Callback):
    """Every result's objective and every trial's start, stamped in the driver."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.origin = time.perf_counter()
        self.results: list[tuple[float, str, int, float]] = []
        self.epochs: dict[str, int] = {}
        self.starts: list[float] = []

    def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
        self.starts.append(time.perf_counter() - self.origin)

    def on_trial_result(
        self, iteration: int, trials: Any, trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        value = result.get(self.metric)
        if isinstance(value, int | float) and math.isfinite(value):
            epoch = int(result["epoch"])
            stamp = (time.perf_counter() - self.origin, trial.trial_id, epoch, float(value))
            self.results.append(stamp)
            self.epochs[trial.trial_id] = max(epoch, self.epochs.get(trial.trial_id, 0))


if __name__ == "__main__":
    raise SystemExit(0)
