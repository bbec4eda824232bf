"""Benchmark: Forge's Tune layer: its overhead against the floor, ASHA against random search.

One local Ray cluster (token auth) with as many CPUs as the machine, one CPU per trial:

1. **Tune overhead**: 16 trials of a function trainable that sleeps 1 s and reports
   once, against the theoretical minimum ``ceil(16 / CPUs) * 1 s``. ``Tuner.fit()`` is
   timed (the Tuner is built before the clock starts, the cluster long before) with the
   configuration a platform would ship (``reuse_actors``, ``max_concurrent_trials`` = the
   CPUs, ``verbose=0``, only the CSV and JSON loggers: see ``_forge_overhead.py``),
   ``--repeats`` times (median is the target), then once with Tune's defaults. Each fit
   is split into start (fit called -> first trial started: the trial actors' worker
   processes starting and importing Tune), run (-> last trial done) and tail.
2. **ASHA against random search** on Forge's diabetes task (``_forge_asha.py``): 16
   trials of the same seeded configurations, 30 epochs each for random search (FIFO),
   ASHA (grace 3 epochs, reduction factor 3) for the other; the bar is random search's
   final best validation RMSE, each search's time to it is when its best so far first
   came within 1 % of it. The target ratio counts from each search's first trial start:
   both searches pay the same start-up (two fresh worker processes importing Tune, torch
   and Forge: seconds that swamp the scheduler's difference on a busy 2-CPU machine); the
   ratio counted from ``fit()`` is a figure too.

Prints a table of every figure, then one line per target, last:
``target NAME: MEASURED (goal OP VALUE) met|missed``.

Run: ``python bench/forge.py [--repeats R] [--cpus N]``.
Exit 0 whether the goals are met or not; 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from cluster.console import console, stepper
from cluster.errors import DatapunkError
from cluster.logging import configure_logging

if __package__ in (None, ""):  # `python bench/forge.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._forge_asha import GRACE, REDUCTION, TOLERANCE, SearchRun, load_task, search
from bench._forge_overhead import SLEEP_S, SLEEPERS, FitRun, fit, floor_s
from bench._targets import Figure, Target, figures_table, median, require_positive

REPEATS = 3
SHIPPED = (
    "reuse_actors=True, max_concurrent_trials=CPUs, verbose=0, "
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1 + JsonLoggerCallback + CSVLoggerCallback"
)


@dataclass(frozen=True)
class Results:
    cpus: int
    shipped: list[FitRun]
    defaults: FitRun
    random: SearchRun
    asha: SearchRun

    @property
    def floor(self) -> float:
        return floor_s(self.cpus)

    @property
    def shipped_s(self) -> float:
        return median([run.seconds for run in self.shipped])

    @property
    def bar(self) -> float:
        return self.random.best


def measure(cpus: int, repeats: int) -> Results:
    from cluster.ray_runtime import private_local_cluster

    with stepper(repeats + 5, "loading Forge's diabetes task") as step:
        spec, task = load_task()
        step(f"starting a local Ray cluster ({cpus} CPUs)")
        with private_local_cluster(num_cpus=cpus, namespace="datapunk-bench-forge"):
            shipped = []
            for index in range(repeats):
                step(f"Tune overhead: shipped configuration, fit {index + 1}/{repeats}")
                shipped.append(fit("shipped", cpus))
            step("Tune overhead: Tune's defaults (a new actor per trial)")
            defaults = fit("defaults", cpus)
            step(f"random search: {spec.tune.num_samples} trials x {spec.epochs} epochs")
            random = search("random", spec, task)
            step(f"ASHA: {spec.tune.num_samples} trials, grace {GRACE}, reduction {REDUCTION}")
            asha = search("asha", spec, task)
    return Results(cpus, shipped, defaults, random, asha)


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.2f} s"


def _ratio(measured: float | None, baseline: float | None) -> float | None:
    if measured is None or baseline is None or baseline <= 0:
        return None
    return measured / baseline


def overhead_figures(r: Results) -> list[Figure]:
    runs = sorted(r.shipped, key=lambda run: run.seconds)
    middle = runs[len(runs) // 2]
    spread = ", ".join(f"{run.seconds:.2f}" for run in r.shipped)
    return [
        Figure(
            f"{SLEEPERS} x {SLEEP_S:g} s sleepers, shipped config (median fit)",
            _s(r.shipped_s),
            _s(r.floor),
            r.shipped_s / r.floor,
            f"fits: {spread} s; {middle.actors} trial actors; config: {SHIPPED}",
        ),
        Figure(
            "  start: fit() -> first trial running",
            _s(middle.first_start_s),
            note="two fresh worker processes importing ray.tune; the median fit's parts",
        ),
        Figure(
            "  run: first trial running -> last done",
            _s(middle.run_s),
            _s(r.floor),
            middle.run_s / r.floor,
            f"Tune's cost per trial once running: "
            f"{(middle.run_s - r.floor) / math.ceil(SLEEPERS / r.cpus) * 1000:.0f} ms",
        ),
        Figure("  tail: last trial done -> fit() returned", _s(middle.tail_s)),
        Figure(
            f"{SLEEPERS} x {SLEEP_S:g} s sleepers, Tune's defaults",
            _s(r.defaults.seconds),
            _s(r.floor),
            r.defaults.seconds / r.floor,
            f"{r.defaults.actors} trial actors (one per trial), console reporter, CSV + "
            f"JSON + TensorBoard loggers; start {r.defaults.first_start_s:.2f} s",
            end_section=True,
        ),
    ]


def asha_figures(r: Results) -> list[Figure]:
    random, asha, bar = r.random, r.asha, r.bar
    random_at, asha_at = random.time_to(bar), asha.time_to(bar)
    since_start = [_since_start(run, bar) for run in (random, asha)]
    return [
        Figure(
            "best validation RMSE (ASHA vs random)",
            f"{asha.best:.3f}",
            f"{random.best:.3f}",
            asha.best / random.best,
            f"the bar: random's final best; reached when <= {bar * (1 + TOLERANCE):.3f} "
            f"(+{TOLERANCE:.0%})",
        ),
        Figure(
            "time to the bar from first trial start",
            _s(since_start[1]),
            _s(since_start[0]),
            _ratio(since_start[1], since_start[0]),
            "the target",
        ),
        Figure(
            "time to the bar from fit() called",
            _s(asha_at),
            _s(random_at),
            _ratio(asha_at, random_at),
            f"start-up (fit -> first trial running): ASHA {asha.first_start_s:.2f} s, "
            f"random {random.first_start_s:.2f} s",
        ),
        Figure(
            "whole search (fit wall time)",
            _s(asha.seconds),
            _s(random.seconds),
            asha.seconds / random.seconds,
        ),
        Figure(
            "epochs trained",
            f"{asha.total_epochs}",
            f"{random.total_epochs}",
            asha.total_epochs / random.total_epochs,
            f"ASHA stops per trial: {sorted(asha.epochs.values())}",
        ),
    ]


def _since_start(run: SearchRun, bar: float) -> float | None:
    at = run.time_to(bar)
    return None if at is None else at - run.first_start_s


def targets(r: Results) -> list[Target]:
    random_at, asha_at = (_since_start(run, r.bar) for run in (r.random, r.asha))
    return [
        Target("forge_tune_overhead_vs_minimum", r.shipped_s / r.floor, "<=", 1.3),
        Target("forge_asha_time_to_random_best", _ratio(asha_at, random_at), "<=", 0.5),
    ]


def report(r: Results, load: float) -> int:
    caption = (
        f"{r.cpus} CPUs, 1 per trial; floor = ceil({SLEEPERS} / {r.cpus}) x {SLEEP_S:g} s; "
        f"ASHA vs random: configs/training/diabetes.yaml's task (MLP regressor, "
        f"scikit-learn diabetes, Forge's split, model, loss, metrics) over a wider search "
        f"space, {len(r.random.epochs)} trials sampled with the spec's seed, trained in the "
        f"Tune actor; load average {load:.2f} at start"
    )
    table = figures_table("Forge: Tune", [*overhead_figures(r), *asha_figures(r)], caption=caption)
    table.columns[1].header = "measured"
    console.print(table)
    for target in targets(r):
        print(target.line())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=REPEATS, help="fits of the shipped config")
    parser.add_argument("--cpus", type=int, default=None, help="default: os.cpu_count()")
    args = parser.parse_args(argv)
    require_positive(parser, args, "repeats", "cpus")
    cpus = args.cpus or os.cpu_count() or 1
    configure_logging("WARNING")
    load = os.getloadavg()[0]
    try:
        results = measure(cpus, args.repeats)
    except (DatapunkError, RuntimeError) as exc:
        message = exc.message if isinstance(exc, DatapunkError) else str(exc)
        console.print(f"[bold red]benchmark failed:[/] {message}", highlight=False)
        return 2
    return report(results, load)


if __name__ == "__main__":
    sys.exit(main())
