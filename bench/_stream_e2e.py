"""``bench/stream.py``'s distributed phases: the partition actor on Ray, RabbitMQ to Lake.

* ``run_ray``: the topology's real ``StreamPartitionActor`` (one, or several behind
  ``RayPartitions``) on a fresh local Ray cluster with token auth, fed the benchmark's
  batches with at most ``max_in_flight`` ``process`` calls queued per actor, then
  ``flush``; events/s include the transfer of every batch and result.
* ``run_rabbitmq``: events published (untimed) as messages of ``per_message`` events to a
  fresh queue on the real broker, then the real ``TopologyRunner`` (``RabbitStreamSource``,
  ``LocalPartitions``, the SQL checkpoint store on SQLite, Lake sinks) timed from
  ``start`` until every message is acknowledged, which it does only after the epoch's
  checkpoint and Lake commits. A last one-event message far ahead in event time closes
  every window, so the Lake's window counts must equal the events minus the late ones.

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from actors.stream.operators import Outputs, split
from actors.stream.runner import newest_ticks
from actors.stream.topology import Topology, load_topology
from cluster.errors import DatapunkError

TICKS = 1_000_000  # microseconds per second, the engine's tick
WINDOW_S, MAX_DELAY_S = 60.0, 2.0
WINDOWS, LAKE_WINDOWS = "per_minute", "stream.bench_windows"
ARROW_STREAM = "application/vnd.apache.arrow.stream"
PER_MESSAGE = 1_000  # events per message
Format = Literal["json", "arrow"]


@dataclass(frozen=True)
class Run:
    """One contender's wall time and what it computed."""

    events: int
    seconds: float
    count: int
    total: float
    late: int = 0
    late_value: float = 0.0
    note: str = ""

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def topology(name: str, *, partitions: int = 1, **overrides: Any) -> Topology:
    """Tumbling 60 s sum/count per key over a queue of {key, value, ts} events."""
    spec: dict[str, Any] = {
        "name": name,
        "source": {"kind": "queue"},
        "schema": {"key": "long", "value": "double", "ts": "timestamptz"},
        "time_column": "ts",
        "key_by": ["key"],
        "partitions": partitions,
        "actor_cpus": 0,
        "operators": [
            {
                "kind": "window",
                "name": WINDOWS,
                "window": {"kind": "tumbling", "size_s": WINDOW_S},
                "aggregations": [
                    {"column": "value", "fn": "sum", "as": "total"},
                    {"fn": "count", "as": "n"},
                ],
                "max_delay_s": MAX_DELAY_S,
            }
        ],
    }
    return load_topology({**spec, **overrides})


def totals(outputs: Sequence[Outputs], events: int, seconds: float, note: str = "") -> Run:
    """A ``Run`` from the partitions' outputs: window counts and sums, late rows."""
    windows = [o[WINDOWS] for o in outputs if WINDOWS in o and o[WINDOWS].num_rows]
    lates = [o["late"] for o in outputs if "late" in o and o["late"].num_rows]
    count = sum(int(pc.sum(t["n"]).as_py() or 0) for t in windows)
    total = sum(float(pc.sum(t["total"]).as_py() or 0.0) for t in windows)
    late_value = sum(float(pc.sum(t["value"]).as_py() or 0.0) for t in lates)
    return Run(events, seconds, count, total, sum(t.num_rows for t in lates), late_value, note)


def seen_max(batch: pa.Table) -> int:
    """Newest event time of ``batch`` in ticks, as the runner computes it."""
    return newest_ticks(batch, "ts")


# --- Ray -------------------------------------------------------------------------------


@contextmanager
def local_ray(num_cpus: int = 2) -> Iterator[None]:
    """A fresh local Ray cluster with token auth (its own temporary token), shut down after."""
    from cluster.ray_runtime import private_local_cluster

    with private_local_cluster(num_cpus=num_cpus, namespace="datapunk-bench"):
        yield


def run_ray(batches: Sequence[pa.Table], n: int, partitions: int = 1) -> Run:
    """``partitions`` partition actors fed every batch (split by key when several)."""
    from actors.stream.partition_actor import RayPartitions, StreamPartitionActor

    spec = topology(f"bench_ray_{partitions}", partitions=partitions)
    dumped = spec.model_dump(mode="json", by_alias=True)
    handles = [
        StreamPartitionActor.options(num_cpus=0).remote(dumped, i)  # type: ignore[attr-defined]
        for i in range(partitions)
    ]
    pool = RayPartitions(handles, spec.max_in_flight)
    return asyncio.run(_feed(pool, batches, n, partitions, spec.max_in_flight))


async def _feed(
    pool: Any, batches: Sequence[pa.Table], n: int, partitions: int, in_flight: int
) -> Run:
    warm = batches[0].slice(0, 1000)
    await pool.submit(split(warm, ["key"], partitions), seen_max(warm))
    await pool.drain()
    await pool.restore([b""] * partitions)  # fresh state, warm processes
    start = time.perf_counter()
    for batch in batches:
        await pool.submit(split(batch, ["key"], partitions), seen_max(batch))
    outputs = [*await pool.drain(), *await pool.flush(batches[0].schema)]
    seconds = time.perf_counter() - start
    return totals(outputs, n, seconds, f"{in_flight} in flight per actor")


# --- RabbitMQ to Lake ------------------------------------------------------------------


@dataclass(frozen=True)
class E2E:
    """The runner's sustained rate and what the Lake holds afterwards."""

    run: Run
    messages: int
    epochs: int
    lake_count: int
    lake_late: int
    error: str | None = None


def run_e2e(batches: Sequence[pa.Table], n: int, url: str) -> dict[Format, E2E]:
    """RabbitMQ to Lake, JSON then Arrow IPC messages, each in a fresh data dir and queue."""
    out: dict[Format, E2E] = {}
    formats: tuple[Format, ...] = ("json", "arrow")
    for fmt in formats:
        messages = encode_messages(batches, n, PER_MESSAGE, fmt)
        with tempfile.TemporaryDirectory(prefix="datapunk-bench-stream-") as workdir:
            out[fmt] = asyncio.run(run_rabbitmq(url, messages, n, Path(workdir)))
    return out


def encode_messages(
    batches: Sequence[pa.Table], n: int, per_message: int, fmt: Format
) -> list[tuple[bytes, str]]:
    """The first ``n`` events as (body, content type) messages, plus a closing one."""
    table = pa.concat_tables(batches).slice(0, n)
    newest = int(pc.max(table["ts"].cast(pa.int64())).as_py())
    closer = {"key": -1, "value": 0.0, "ts": newest + int(3600 * TICKS)}
    chunks = [table.slice(lo, per_message) for lo in range(0, n, per_message)]
    chunks.append(pa.Table.from_pylist([closer], schema=pa.schema(table.schema)).cast(table.schema))
    if fmt == "arrow":
        return [(_ipc(chunk), ARROW_STREAM) for chunk in chunks]
    bodies = []
    for chunk in chunks:
        rows = chunk.set_column(2, "ts", chunk["ts"].cast(pa.int64())).to_pylist()
        bodies.append((json.dumps(rows, separators=(",", ":")).encode(), "application/json"))
    return bodies


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


async def run_rabbitmq(
    url: str, messages: Sequence[tuple[bytes, str]], events: int, workdir: Path
) -> E2E:
    """Publish (untimed), then time the runner until every message is acked."""
    from actors.stream.sources.rabbitmq import delete_queues

    queue = f"datapunk-bench-stream-{uuid.uuid4().hex[:12]}"
    try:
        await _publish(url, queue, messages)
        return await _consume(url, queue, len(messages), events, workdir)
    except (DatapunkError, OSError) as exc:
        reason = exc.message if isinstance(exc, DatapunkError) else str(exc)
        return E2E(Run(events, 1.0, 0, 0.0), len(messages), 0, 0, 0, reason.splitlines()[0])
    finally:
        with contextlib.suppress(DatapunkError, OSError):  # a broker gone holds nothing
            await delete_queues(url, queue)


async def _publish(url: str, queue: str, messages: Sequence[tuple[bytes, str]]) -> None:
    from actors.stream.sources.rabbitmq import RabbitPublisher

    publisher = RabbitPublisher(url)
    try:
        for index, (body, content_type) in enumerate(messages):
            await publisher.publish_events(
                queue, body, content_type=content_type, message_id=f"bench-{index}"
            )
    finally:
        await publisher.close()


async def _consume(url: str, queue: str, messages: int, events: int, workdir: Path) -> E2E:
    from actors.lake.service import LakeService
    from actors.stream.build import build_sinks
    from actors.stream.runner import LocalPartitions, TopologyRunner
    from actors.stream.sources.rabbitmq import RabbitStreamSource
    from cluster.cache.memory import MemoryCache
    from cluster.db.stream_store import open_stream_stores
    from cluster.settings import load_settings

    settings = load_settings(
        data_dir=workdir, database_url=None, catalog_url=None, amqp_url=url, redis_url=None
    )
    spec = topology(
        "bench_e2e",
        source={"kind": "queue", "queue": queue},
        sinks=[{"kind": "lake", "from": WINDOWS, "table": LAKE_WINDOWS}],
        checkpoint={"interval_s": 1.0, "max_events": 200_000},
    )
    lake = LakeService.from_settings(settings)
    async with open_stream_stores(settings) as stores:
        sinks = build_sinks(spec, settings, lake=lake, cache=MemoryCache())
        source = RabbitStreamSource(url, spec.queue_name, prefetch=_prefetch(spec))
        runner = TopologyRunner(spec, source, LocalPartitions(spec), stores.checkpoints, sinks)
        start = time.perf_counter()
        await runner.start()
        try:
            await _until_acked(runner, events + 1)
            seconds = time.perf_counter() - start
        finally:
            await runner.close()
    ready = await _ready(url, queue)
    if ready:
        raise OSError(f"{ready} messages back in the queue after close: not all were acked")
    count, late = await _lake_totals(lake, spec)
    stats = runner.stats.totals
    note = f"prefetch {_prefetch(spec)} messages"
    run = Run(events, seconds, count, 0.0, late, 0.0, note)
    return E2E(run, messages, stats["epochs"], count, late)


def _prefetch(spec: Topology) -> int:
    from actors.stream.topology import QueueSource

    assert isinstance(spec.source, QueueSource)
    return min(spec.source.prefetch, 65_535)


async def _until_acked(runner: Any, events: int, timeout_s: float = 900.0) -> None:
    """Step until ``events`` came in and the epoch that took the last one committed.

    A commit acks every delivery of its epoch after the checkpoint and the Lake writes,
    so once the epoch number moves past that epoch nothing is unacked.
    """
    deadline = time.monotonic() + timeout_s
    epoch = runner.describe()["epoch"]
    while runner.stats.totals["events_in"] < events:
        epoch = runner.describe()["epoch"]
        await _step(runner, deadline)
    while runner.describe()["epoch"] <= epoch:
        await _step(runner, deadline)


async def _step(runner: Any, deadline: float) -> None:
    await runner.step()
    stats = runner.stats.totals
    if stats["ack_failures"] or stats["rollbacks"]:
        raise OSError(f"the runner rolled back or failed an ack: {stats}")
    if time.monotonic() > deadline:
        raise OSError(f"not every message was acked in time: {stats}")


async def _ready(url: str, queue: str) -> int:
    """Messages ready in ``queue`` (a passive declare; unacked ones are not counted)."""
    import aio_pika

    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def _lake_totals(lake: Any, spec: Topology) -> tuple[int, int]:
    """Sum of window counts in the Lake table, and rows in the late table."""
    windows = await lake.scan(LAKE_WINDOWS, columns=["n"])
    count = int(pc.sum(windows["n"]).as_py() or 0)
    names = await lake.list_tables(spec.namespace)
    late = spec.late_table_name
    late_rows = (await lake.scan(late, columns=["key"])).num_rows if late in names else 0
    return count, late_rows


if __name__ == "__main__":
    raise SystemExit(0)
