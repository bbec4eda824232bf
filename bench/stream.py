"""Benchmark: the Stream engine core, one Ray actor, sliding windows, RabbitMQ to Lake.

One run, one seeded event stream: ``N`` events (int64 ``key`` over 10K keys, float64
``value``, ``ts`` timestamp[us, UTC] increasing at 1000 events per event-time second,
each event delayed by an exponential jitter of mean 0.5 s), pre-generated as 100k-row
Arrow batches (generation is not timed):

1. **engine core**: ``WindowedAggregator`` (tumbling 60 s, ``sum(value)`` and ``count``,
   ``max_delay_s`` 2 s) fed every batch, then ``flush()``;
2. **Arrow ceiling**: bare ``pa.Table.group_by([key, window]).aggregate(sum, count)`` per
   batch with the window column precomputed (untimed), the partials concatenated and
   re-aggregated at the end: no watermark, lateness or emission at all;
3. **Python floor**: a per-event loop over a list of event dicts (``key``, ``value``,
   ``ts`` in int microseconds; converted untimed) with the same watermark, lateness and
   emission rules, over a prefix of at most 1M events, scaled to events/s;
4. **sliding**: the engine core with sliding windows (60 s every 10 s: six per event);
5. **one Ray actor**: the topology's ``StreamPartitionActor`` on a fresh local Ray
   cluster (token auth), the same batches with up to 4 ``process`` calls in flight,
   transfer included; then two actors behind ``RayPartitions`` (split by key);
6. **RabbitMQ to Lake**: the first 1M events (200K with ``--quick``) published untimed
   as messages of 1000 events to a fresh queue on the real broker, then the real
   ``TopologyRunner`` (RabbitMQ source, SQL checkpoints on SQLite, Lake sinks) timed
   until every message is acked, which happens only after checkpoint and Lake commit;
   once with JSON arrays (the target), once with Arrow IPC messages.

Every contender's totals are checked: the core's against the ceiling's (count ``N``
minus its late events, sum plus the late values), the actors' against the core's, the
sliding run's against six times the ceiling's, the Lake's window counts against the
published events minus the late ones. Prints a table, then one line per target, last:
``target NAME: MEASURED (goal OP VALUE) met|missed``. An unreachable broker (URL from
``DATAPUNK_BENCH_AMQP_URL``, default the local guest account) reports its target missed
at 0 with the reason.

Run: ``python bench/stream.py [--events N] [--quick] [--seed S]``.
Exit 0 whether the goals are met or not; 2 when any totals disagree.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.console import console

if __package__ in (None, ""):  # `python bench/stream.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.stream.config import (
    Aggregation,
    SlidingWindow,
    StreamConfig,
    TumblingWindow,
    WindowSpec,
)
from actors.stream.engine import WindowedAggregator
from bench._stream_e2e import (
    E2E,
    MAX_DELAY_S,
    PER_MESSAGE,
    TICKS,
    WINDOW_S,
    Format,
    Run,
    local_ray,
    run_e2e,
    run_ray,
)
from bench._targets import Figure, Target, figures_table

EVENTS, QUICK_EVENTS, FLOOR_EVENTS = 10_000_000, 1_000_000, 1_000_000
E2E_EVENTS, QUICK_E2E_EVENTS = 1_000_000, 200_000
KEYS, BATCH_ROWS, SEED = 10_000, 100_000, 20_260_101
EVENTS_PER_S, JITTER_MEAN_S = 1_000, 0.5
SLIDE_S = 10.0
T0 = 1_767_225_600 * TICKS  # 2026-01-01T00:00:00Z
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class Results:
    """Every contender of one run."""

    engine: Run
    ceiling: Run
    floor: Run
    sliding: Run
    ray: Run
    ray_pool: Run
    e2e: dict[Format, E2E]


class RateTarget(Target):
    """A target in events/s: the goal printed whole (``1000000``, not ``1e+06``)."""

    def line(self) -> str:
        return super().line().replace(f"{self.goal:g})", f"{self.goal:.0f})")


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


def stream_config(window: WindowSpec | None = None) -> StreamConfig:
    return StreamConfig(
        time_column="ts",
        key_columns=["key"],
        window=window or TumblingWindow(size_s=WINDOW_S),
        aggregations=[
            Aggregation(column="value", fn="sum", as_="total"),
            Aggregation(fn="count", as_="n"),
        ],
        max_delay_s=MAX_DELAY_S,
    )


def run_engine(batches: list[pa.Table], n: int, config: StreamConfig) -> Run:
    """The engine core over every batch, then flush; totals read after the clock stops."""
    WindowedAggregator(config).process(batches[0].slice(0, 1000))  # warm-up
    engine = WindowedAggregator(config)
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


def floor_events(batches: list[pa.Table], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` events as dicts: key, value, ts in int microseconds (untimed)."""
    events: list[dict[str, Any]] = []
    for batch in batches:
        if len(events) >= limit:
            break
        events += batch.set_column(2, "ts", batch.column("ts").cast(pa.int64())).to_pylist()
    return events[:limit]


def run_floor(events: list[dict[str, Any]]) -> Run:
    """Per-event Python: window, lateness, state dict, watermark, emission of closed windows."""
    size, delay = int(WINDOW_S * TICKS), int(MAX_DELAY_S * TICKS)
    start = time.perf_counter()
    state: dict[int, dict[int, list[float]]] = {}  # window start -> key -> [sum, count]
    emitted: list[tuple[int, int, float, float]] = []
    late, late_value, max_seen, next_end = 0, 0.0, -(2**63), 2**63 - 1
    for event in events:
        t = event["ts"]
        ws = t - t % size
        if ws + size <= max_seen - delay:
            late += 1
            late_value += event["value"]
            continue
        acc = state.setdefault(ws, {}).setdefault(event["key"], [0.0, 0])
        acc[0] += event["value"]
        acc[1] += 1
        next_end = min(next_end, ws + size)
        if t > max_seen:
            max_seen = t
            if next_end <= max_seen - delay:
                next_end = _emit(state, emitted, max_seen - delay, size)
    _emit(state, emitted, 2**63 - 1, size)
    seconds = time.perf_counter() - start
    count = int(sum(e[3] for e in emitted))
    return Run(len(events), seconds, count, sum(e[2] for e in emitted), late, late_value)


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


# --- checks and report -----------------------------------------------------------------


def check(r: Results) -> list[str]:
    """Disagreements between the contenders' totals."""
    engine, ceiling, floor, sliding = r.engine, r.ceiling, r.floor, r.sliding
    errors = []
    if engine.count != ceiling.count - engine.late:
        errors.append(f"engine count {engine.count} != {ceiling.count} - {engine.late} late")
    if not math.isclose(engine.total + engine.late_value, ceiling.total, rel_tol=1e-9):
        errors.append(f"engine sum {engine.total} + late {engine.late_value} != {ceiling.total}")
    if floor.count + floor.late != floor.events:
        errors.append(f"floor count {floor.count} + late {floor.late} != {floor.events}")
    per_event = round(WINDOW_S / SLIDE_S)
    if sliding.count + sliding.late != per_event * ceiling.count:
        errors.append(f"sliding count {sliding.count} + {sliding.late} late pairs != 6 x N")
    if not math.isclose(sliding.total + sliding.late_value, per_event * ceiling.total):
        errors.append(f"sliding sum {sliding.total} + late != {per_event} x {ceiling.total}")
    for label, actor in (("one actor", r.ray), ("two actors", r.ray_pool)):
        same = (actor.count, actor.late) == (engine.count, engine.late)
        if not same or not math.isclose(actor.total, engine.total, rel_tol=1e-9):
            errors.append(f"Ray {label}: {actor} != the core's {engine}")
    for fmt, e2e in r.e2e.items():
        if e2e.error is None and e2e.lake_count != e2e.run.events - e2e.lake_late:
            errors.append(
                f"Lake windows ({fmt}) count {e2e.lake_count} != {e2e.run.events} "
                f"published - {e2e.lake_late} late"
            )
    return errors


def _rate(run: Run) -> str:
    return f"{run.rate:,.0f}"


def figures(r: Results) -> list[Figure]:
    engine, ceiling, floor = r.engine, r.ceiling, r.floor
    rows = [
        Figure("engine core (events/s)", _rate(engine), note=f"{engine.seconds:.2f} s"),
        Figure(
            "vs Arrow group_by ceiling",
            _rate(engine),
            _rate(ceiling),
            engine.rate / ceiling.rate,
            f"{ceiling.seconds:.2f} s",
        ),
        Figure(
            "vs per-event Python dict loop (floor)",
            _rate(engine),
            _rate(floor),
            engine.rate / floor.rate,
            f"{floor.seconds:.2f} s for {floor.events:_} events",
            end_section=True,
        ),
        Figure(
            f"sliding {WINDOW_S:g} s every {SLIDE_S:g} s (events/s)",
            _rate(r.sliding),
            _rate(engine),
            r.sliding.rate / engine.rate,
            f"{r.sliding.seconds:.2f} s; baseline: tumbling core",
        ),
        Figure(
            "one Ray partition actor (events/s)",
            _rate(r.ray),
            _rate(engine),
            r.ray.rate / engine.rate,
            f"{r.ray.seconds:.2f} s, {r.ray.note}, transfer included; baseline: core",
        ),
        Figure(
            "RayPartitions, 2 actors (events/s)",
            _rate(r.ray_pool),
            _rate(engine),
            r.ray_pool.rate / engine.rate,
            f"{r.ray_pool.seconds:.2f} s, split by key in the driver; 2 CPUs for all",
            end_section=True,
        ),
    ]
    rows += [_e2e_figure(fmt, e2e, engine, fmt == "arrow") for fmt, e2e in r.e2e.items()]
    rows += [
        Figure(
            "late events (engine)",
            f"{engine.late:_}",
            f"{floor.late:_}",
            note="floor: its prefix, watermark per event, not per batch",
        ),
        Figure("events in windows", f"{engine.count:_}", f"{ceiling.count:_}", note="= N - late"),
    ]
    return rows


def _e2e_figure(fmt: Format, e2e: E2E, engine: Run, last: bool) -> Figure:
    label = {"json": "JSON arrays", "arrow": "Arrow IPC"}[fmt]
    what = f"RabbitMQ -> Lake, {label} (events/s)"
    if e2e.error is not None:
        return Figure(what, "n/a", note=e2e.error, end_section=last)
    run = e2e.run
    note = (
        f"{run.events:_} events in {e2e.messages:_} messages, {run.seconds:.2f} s to the "
        f"last ack, {e2e.epochs} epochs, {run.note}; Lake: {e2e.lake_count:_} in windows "
        f"+ {e2e.lake_late:_} late; baseline: core"
    )
    return Figure(what, _rate(run), _rate(engine), run.rate / engine.rate, note, last)


def targets(r: Results) -> list[Target]:
    e2e = r.e2e["json"]
    return [
        Target("stream_core_vs_arrow_ceiling", r.engine.rate / r.ceiling.rate, ">=", 0.3),
        Target("stream_core_vs_python_floor", r.engine.rate / r.floor.rate, ">=", 10),
        RateTarget("stream_ray_actor_events_per_s", r.ray.rate, ">=", 1_000_000, digits=0),
        RateTarget("stream_sliding_events_per_s", r.sliding.rate, ">=", 300_000, digits=0),
        RateTarget(
            "stream_e2e_rabbitmq_events_per_s",
            0.0 if e2e.error is not None else e2e.run.rate,
            ">=",
            50_000,
            digits=0,
        ),
    ]


def measure(batches: list[pa.Table], n: int, e2e_events: int, url: str) -> Results:
    with console.status("engine core"):
        engine = run_engine(batches, n, stream_config())
    with console.status("Arrow ceiling"):
        ceiling = run_ceiling(batches, n)
    with console.status("Python floor"):
        floor = run_floor(floor_events(batches, min(n, FLOOR_EVENTS)))
    with console.status("sliding windows"):
        window = SlidingWindow(size_s=WINDOW_S, slide_s=SLIDE_S)
        sliding = run_engine(batches, n, stream_config(window))
    with console.status("Ray partition actors"), local_ray():
        ray_one, ray_pool = run_ray(batches, n, 1), run_ray(batches, n, 2)
    with console.status(f"RabbitMQ to Lake, {e2e_events:_} events"):
        e2e = run_e2e(batches, e2e_events, url)
    return Results(engine, ceiling, floor, sliding, ray_one, ray_pool, e2e)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=None, help=f"default {EVENTS:_}")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_EVENTS:_} events")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    n = args.events or (QUICK_EVENTS if args.quick else EVENTS)
    e2e_events = min(n, QUICK_E2E_EVENTS if args.quick else E2E_EVENTS)
    url = os.environ.get("DATAPUNK_BENCH_AMQP_URL") or AMQP_URL
    load = os.getloadavg()[0]
    with console.status(f"generating {n:_} events"):
        batches = make_batches(n, args.seed)
    results = measure(batches, n, e2e_events, url)
    errors = check(results)
    for error in errors:
        console.print(f"[red]check failed:[/red] {error}")
    if errors:
        return 2
    for fmt, e2e in results.e2e.items():
        if e2e.error is not None:
            console.print(f"[yellow]RabbitMQ to Lake ({fmt}) did not run:[/yellow] {e2e.error}")
    caption = (
        f"{n:_} events, {KEYS:_} keys, {BATCH_ROWS:_}-row batches, tumbling {WINDOW_S:g} s, "
        f"max delay {MAX_DELAY_S:g} s; Python floor timed on the first "
        f"{results.floor.events:_} events and scaled to events/s; RabbitMQ to Lake: "
        f"{PER_MESSAGE:_} events per message, checkpoint every 1 s or 200K events, acks "
        f"after checkpoint + Lake commit; {os.cpu_count()} CPUs, load average {load:.2f} at "
        "start"
    )
    table = figures_table("Stream", figures(results), caption=caption)
    table.columns[1].header = "measured"
    console.print(table)
    for target in targets(results):
        print(target.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
