"""Benchmark: the Stream engine core (keyed tumbling-window sum/count) versus Arrow and Python.

One process, one seeded event stream: ``N`` events (int64 ``key`` over 10K keys, float64
``value``, ``ts`` timestamp[us, UTC] increasing at 1000 events per event-time second,
each event delayed by an exponential jitter of mean 0.5 s), pre-generated as 100k-row
Arrow batches (generation is not timed):

1. **engine core**: ``WindowedAggregator`` (tumbling 60 s, ``sum(value)`` and ``count``,
   ``max_delay_s`` 2 s) fed every batch, then ``flush()``;
2. **Arrow ceiling**: bare ``pa.Table.group_by([key, window]).aggregate(sum, count)`` per
   batch with the window column precomputed (untimed), the partials concatenated and
   re-aggregated at the end: no watermark, lateness or emission at all;
3. **Python floor**: a per-event dict loop with the same watermark, lateness and
   emission rules, over a prefix of at most 1M events (pre-converted to Python ints and
   floats, untimed), scaled to events/s.

The engine's totals are checked against the ceiling's: its event count must be ``N``
minus the late events it reported, and its sum plus the late events' values must equal
the ceiling's sum. Prints a table, then one line per target, last:
``target NAME: MEASURED (goal OP VALUE) met|missed``.

Run: ``python bench/stream.py [--events N] [--quick] [--seed S]``.
Exit 0 whether the goals are met or not; 2 when the engine's totals disagree.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.console import console

if __package__ in (None, ""):  # `python bench/stream.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.stream.config import Aggregation, StreamConfig, TumblingWindow
from actors.stream.engine import WindowedAggregator
from bench._targets import Figure, Target, figures_table

EVENTS, QUICK_EVENTS, FLOOR_EVENTS = 10_000_000, 1_000_000, 1_000_000
KEYS, BATCH_ROWS, SEED = 10_000, 100_000, 20_260_101
EVENTS_PER_S, JITTER_MEAN_S = 1_000, 0.5
WINDOW_S, MAX_DELAY_S = 60.0, 2.0
TICKS = 1_000_000  # microseconds per second, the engine's tick
T0 = 1_767_225_600 * TICKS  # 2026-01-01T00:00:00Z


@dataclass(frozen=True)
class Run:
    """One contender's wall time and what it computed."""

    events: int
    seconds: float
    count: int
    total: float
    late: int = 0
    late_value: float = 0.0

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def make_batches(n: int, seed: int) -> list[pa.Table]:
    """Seeded events in ``BATCH_ROWS`` tables: key, value, ts (slightly out of order)."""
    rng = np.random.default_rng(seed)
    batches = []
    for lo in range(0, n, BATCH_ROWS):
        i = np.arange(lo, min(n, lo + BATCH_ROWS), dtype=np.int64)
        jitter = (rng.exponential(JITTER_MEAN_S, len(i)) * TICKS).astype(np.int64)
        ticks = T0 + i * (TICKS // EVENTS_PER_S) - jitter
        batches.append(
            pa.table(
                {
                    "key": pa.array(rng.integers(0, KEYS, len(i)), pa.int64()),
                    "value": pa.array(rng.random(len(i)) * 100.0, pa.float64()),
                    "ts": pa.array(ticks, pa.timestamp("us", tz="UTC")),
                }
            )
        )
    return batches


def stream_config() -> StreamConfig:
    return StreamConfig(
        time_column="ts",
        key_columns=["key"],
        window=TumblingWindow(size_s=WINDOW_S),
        aggregations=[
            Aggregation(column="value", fn="sum", as_="total"),
            Aggregation(fn="count", as_="n"),
        ],
        max_delay_s=MAX_DELAY_S,
    )


def run_engine(batches: list[pa.Table], n: int) -> Run:
    """The engine core over every batch, then flush; totals read after the clock stops."""
    WindowedAggregator(stream_config()).process(batches[0].slice(0, 1000))  # warm-up
    engine = WindowedAggregator(stream_config())
    outputs = []
    start = time.perf_counter()
    for batch in batches:
        outputs.append(engine.process(batch))
    outputs.append(engine.flush())
    seconds = time.perf_counter() - start
    results = [o.results for o in outputs if o.results.num_rows]
    lates = [o.late for o in outputs if o.late.num_rows]
    count = sum(int(pc.sum(r.column("n")).as_py() or 0) for r in results)
    total = sum(float(pc.sum(r.column("total")).as_py() or 0.0) for r in results)
    late_value = sum(float(pc.sum(t.column("value")).as_py() or 0.0) for t in lates)
    late = sum(t.num_rows for t in lates)
    return Run(n, seconds, count, total, late, late_value)


def run_ceiling(batches: list[pa.Table], n: int) -> Run:
    """Bare Arrow group_by per batch (window precomputed), partials re-aggregated at the end."""
    size = int(WINDOW_S * TICKS)
    prepared = []
    for batch in batches:
        ticks = np.asarray(batch.column("ts").cast(pa.int64()))
        prepared.append(batch.append_column("window", pa.array(ticks - ticks % size)))
    start = time.perf_counter()
    parts = [
        t.group_by(["key", "window"]).aggregate([("value", "sum"), ("value", "count")])
        for t in prepared
    ]
    final = (
        pa.concat_tables(parts)
        .group_by(["key", "window"])
        .aggregate([("value_sum", "sum"), ("value_count", "sum")])
    )
    seconds = time.perf_counter() - start
    count = int(pc.sum(final.column("value_count_sum")).as_py())
    total = float(pc.sum(final.column("value_sum_sum")).as_py())
    return Run(n, seconds, count, total)


def run_floor(batches: list[pa.Table], limit: int) -> Run:
    """Per-event Python: window, lateness, state dict, watermark, emission of closed windows."""
    keys: list[int] = []
    values: list[float] = []
    ticks: list[int] = []
    for batch in batches:
        if len(keys) >= limit:
            break
        keys += batch.column("key").to_pylist()
        values += batch.column("value").to_pylist()
        ticks += batch.column("ts").cast(pa.int64()).to_pylist()
    keys, values, ticks = keys[:limit], values[:limit], ticks[:limit]
    size, delay = int(WINDOW_S * TICKS), int(MAX_DELAY_S * TICKS)
    start = time.perf_counter()
    state: dict[int, dict[int, list[float]]] = {}  # window start -> key -> [sum, count]
    emitted: list[tuple[int, int, float, float]] = []
    late, late_value, max_seen, next_end = 0, 0.0, -(2**63), 2**63 - 1
    for key, value, t in zip(keys, values, ticks, strict=True):
        ws = t - t % size
        if ws + size <= max_seen - delay:
            late += 1
            late_value += value
            continue
        acc = state.setdefault(ws, {}).setdefault(key, [0.0, 0])
        acc[0] += value
        acc[1] += 1
        next_end = min(next_end, ws + size)
        if t > max_seen:
            max_seen = t
            if next_end <= max_seen - delay:
                next_end = _emit(state, emitted, max_seen - delay, size)
    _emit(state, emitted, 2**63 - 1, size)
    seconds = time.perf_counter() - start
    count = int(sum(e[3] for e in emitted))
    return Run(len(keys), seconds, count, sum(e[2] for e in emitted), late, late_value)


def _emit(
    state: dict[int, dict[int, list[float]]],
    out: list[tuple[int, int, float, float]],
    watermark: int,
    size: int,
) -> int:
    """Emit and drop windows the watermark passed; return the next open window's end."""
    for ws in sorted(w for w in state if w + size <= watermark):
        out.extend((ws, k, acc[0], acc[1]) for k, acc in state.pop(ws).items())
    return min((w + size for w in state), default=2**63 - 1)


def check(engine: Run, ceiling: Run, floor: Run) -> list[str]:
    """Disagreements between the engine's totals and the ceiling's (and the floor's own)."""
    errors = []
    if engine.count != ceiling.count - engine.late:
        errors.append(f"engine count {engine.count} != {ceiling.count} - {engine.late} late")
    if not math.isclose(engine.total + engine.late_value, ceiling.total, rel_tol=1e-9):
        errors.append(f"engine sum {engine.total} + late {engine.late_value} != {ceiling.total}")
    if floor.count + floor.late != floor.events:
        errors.append(f"floor count {floor.count} + late {floor.late} != {floor.events}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help=f"default {EVENTS:_}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:_} events")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    n = args.events or (QUICK_EVENTS if args.quick else EVENTS)
    load = os.getloadavg()[0]
    with console.status(f"generating {n:_} events"):
        batches = make_batches(n, args.seed)
    with console.status("engine core"):
        engine = run_engine(batches, n)
    with console.status("Arrow ceiling"):
        ceiling = run_ceiling(batches, n)
    with console.status("Python floor"):
        floor = run_floor(batches, min(n, FLOOR_EVENTS))
    errors = check(engine, ceiling, floor)
    for error in errors:
        console.print(f"[red]check failed:[/red] {error}")
    if errors:
        return 2
    vs_ceiling, vs_floor = engine.rate / ceiling.rate, engine.rate / floor.rate
    figures = [
        Figure("engine core (events/s)", f"{engine.rate:,.0f}", note=f"{engine.seconds:.2f} s"),
        Figure(
            "vs Arrow group_by ceiling",
            f"{engine.rate:,.0f}",
            f"{ceiling.rate:,.0f}",
            vs_ceiling,
            f"{ceiling.seconds:.2f} s",
        ),
        Figure(
            "vs per-event Python floor",
            f"{engine.rate:,.0f}",
            f"{floor.rate:,.0f}",
            vs_floor,
            f"{floor.seconds:.2f} s for {floor.events:_} events",
            end_section=True,
        ),
        Figure(
            "late events (engine)",
            f"{engine.late:_}",
            f"{floor.late:_}",
            note="floor: its prefix, watermark per event, not per batch",
        ),
        Figure("events in windows", f"{engine.count:_}", f"{ceiling.count:_}", note="= N - late"),
    ]
    caption = (
        f"{n:_} events, {KEYS:_} keys, {BATCH_ROWS:_}-row batches, tumbling {WINDOW_S:g} s, "
        f"max delay {MAX_DELAY_S:g} s; Python floor timed on the first {floor.events:_} events "
        f"and scaled to events/s; {os.cpu_count()} CPUs, load average {load:.2f} at start"
    )
    table = figures_table("Stream engine core", figures, caption=caption)
    table.columns[1].header = "engine"
    console.print(table)
    targets = [
        Target("stream_core_vs_arrow_ceiling", vs_ceiling, ">=", 0.3),
        Target("stream_core_vs_python_floor", vs_floor, ">=", 10),
    ]
    for target in targets:
        print(target.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
