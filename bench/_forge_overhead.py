"""``bench/forge.py``'s first phase: what Tune costs around trials that do nothing but wait.

``SLEEPERS`` trials of ``sleeper``, a function trainable that sleeps ``SLEEP_S`` and
reports once, one CPU each, on the benchmark's local cluster. The floor is
``ceil(SLEEPERS / CPUs) * SLEEP_S``: every CPU busy sleeping from the first instant
to the last. ``fit`` times ``Tuner.fit()`` alone (the Tuner is built before the clock
starts, the cluster long before) under one of two configurations:

* ``defaults``: what ``tune.Tuner(trainable, param_space=..., tune_config=TuneConfig(
  num_samples=..., metric=..., mode=...))`` does out of the box (a new actor per trial,
  the console reporter, CSV + JSON + TensorBoard loggers), storage in a temp folder;
* ``shipped``: what a platform would ship, and what ``Forge`` should use:
  ``reuse_actors=True`` (one actor per concurrent slot instead of one per trial: every
  new actor is a new worker process that imports ``ray.tune``, seconds on a small
  machine; Tune gives its actors a runtime env of their own, so they never take the
  job's prestarted workers), ``max_concurrent_trials`` = the CPUs, ``verbose=0``, and
  only the CSV and JSON loggers (``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` with both
  passed explicitly: ``ResultGrid`` reads them back; TensorBoard's writer thread per
  trial is dropped).

Every fit must return ``SLEEPERS`` results without errors, each with the reported score.
A driver-side callback stamps each trial's start and completion, which splits the wall
time into the start (fit called -> first trial started: the trial actors' worker
processes), the run, and the tail (last trial done -> ``fit`` returned).

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

SLEEPERS, SLEEP_S = 16, 1.0
Config = Literal["defaults", "shipped"]
LOGGERS_ENV = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"


def sleeper(config: dict[str, Any]) -> None:
    """The trial: sleep, then report one result: its sampled ``x`` as the score, and
    its process id (how many actors Tune started)."""
    time.sleep(SLEEP_S)
    tune.report({"score": config["x"], "pid": os.getpid()})


@dataclass(frozen=True)
class FitRun:
    """One ``Tuner.fit()``: wall time, its parts, and what came back."""

    config: Config
    seconds: float
    first_start_s: float  # fit called -> first trial started
    tail_s: float  # last trial completed -> fit returned
    results: int
    errors: int
    actors: int  # distinct trial processes

    @property
    def run_s(self) -> float:
        return self.seconds - self.first_start_s - self.tail_s


def floor_s(cpus: int, trials: int = SLEEPERS) -> float:
    """The theoretical minimum: every CPU sleeping from the first instant to the last."""
    return math.ceil(trials / cpus) * SLEEP_S


def fit(config: Config, cpus: int, trials: int = SLEEPERS) -> FitRun:
    """Build the Tuner for ``config`` (untimed), then time ``fit()``; check the results."""
    stamps = _Stamps()
    with tempfile.TemporaryDirectory(prefix="datapunk-bench-tune-") as storage:
        tuner = _tuner(config, cpus, trials, storage, stamps)
        loggers = "1" if config == "shipped" else None
        with env(LOGGERS_ENV, loggers), quiet_tune():
            start = time.perf_counter()
            stamps.origin = start
            grid = tuner.fit()
            seconds = time.perf_counter() - start
        frame = grid.get_dataframe()
    if len(frame) != trials or grid.num_errors or frame["score"].isna().any():
        raise RuntimeError(
            f"Tune ({config}) returned {len(frame)} results of {trials}, {grid.num_errors} errors"
        )
    return FitRun(
        config=config,
        seconds=seconds,
        first_start_s=min(stamps.starts),
        tail_s=seconds - max(stamps.ends),
        results=len(frame),
        errors=grid.num_errors,
        actors=int(frame["pid"].nunique()),
    )


def _tuner(
    config: Config, cpus: int, trials: int, storage: str, stamps: tune.Callback
) -> tune.Tuner:
    trainable = tune.with_resources(sleeper, {"cpu": 1})
    space = {"x": tune.uniform(0.0, 1.0)}
    name = f"sleepers-{config}"
    if config == "defaults":
        return tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(num_samples=trials, metric="score", mode="max"),
            run_config=tune.RunConfig(name=name, storage_path=storage, callbacks=[stamps]),
        )
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=trials,
            metric="score",
            mode="max",
            reuse_actors=True,
            max_concurrent_trials=cpus,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            callbacks=[stamps, JsonLoggerCallback(), CSVLoggerCallback()],
            verbose=0,
        ),
    )


class _Stamps(tune.Callback):
    """When (seconds since ``origin``) each trial started and completed, in the driver."""

    def __init__(self) -> None:
        self.origin = time.perf_counter()
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_trial_start(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
        self.starts.append(time.perf_counter() - self.origin)

    def on_trial_complete(self, iteration: int, trials: Any, trial: Any, **info: Any) -> None:
        self.ends.append(time.perf_counter() - self.origin)


@contextlib.contextmanager
def env(name: str, value: str | None) -> Iterator[None]:
    """``name`` set to ``value`` (unset for ``None``) while the block runs."""
    saved = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved


@contextlib.contextmanager
def quiet_tune() -> Iterator[None]:
    """Tune's console output (tables, INFO lines) kept off the benchmark's own."""
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tune_logger.setLevel(level)


if __name__ == "__main__":
    raise SystemExit(0)
