"""Shared pieces of the Stream tests: a topology, numbered events, a drained run."""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pyarrow as pa

from actors.stream.topology import Topology, load_topology

SCHEMA = {"seq": "long", "k": "string", "v": "double", "ts": "double"}


def window_topology(name: str = "orders", partitions: int = 1, **overrides: Any) -> Topology:
    """Tumbling count/sum per key with 5 s disorder allowed, raw events to Lake too."""
    spec: dict[str, Any] = {
        "name": name,
        "source": {"kind": "queue"},
        "schema": SCHEMA,
        "time_column": "ts",
        "key_by": ["k"],
        "partitions": partitions,
        "operators": [
            {
                "kind": "window",
                "name": "per_10s",
                "window": {"kind": "tumbling", "size_s": 10},
                "aggregations": [
                    {"fn": "count", "as": "n"},
                    {"column": "v", "fn": "sum", "as": "total"},
                    {"column": "seq", "fn": "max", "as": "last_seq"},
                ],
                "max_delay_s": 5,
            },
            {
                "kind": "pattern",
                "name": "low_then_high",
                "steps": [
                    {"column": "v", "op": "<", "value": 1},
                    {"column": "v", "op": ">", "value": 3},
                ],
                "within_s": 5,
                "max_delay_s": 5,
            },
        ],
        "sinks": [
            {"kind": "lake", "from": "per_10s", "table": f"stream.{name}_per_10s"},
            {"kind": "lake", "from": "events", "table": f"stream.{name}_events"},
        ],
        "checkpoint": {"interval_s": 0.05, "max_events": 250},
    }
    spec.update(overrides)
    return load_topology(spec)


def numbered_events(
    n: int, *, keys: int = 7, seed: int = 1, disorder_s: float = 3.0
) -> list[dict[str, Any]]:
    """``n`` events, ``seq`` 0..n-1, ~10 events/s of event time, shuffled within ``disorder_s``."""
    rng = random.Random(seed)
    return [
        {
            "seq": i,
            "k": f"k{rng.randrange(keys)}",
            "v": float(rng.randrange(5)),
            "ts": round(i * 0.1 + rng.uniform(-disorder_s, disorder_s), 3),
        }
        for i in range(n)
    ]


def messages(events: list[dict[str, Any]], per_message: int = 1) -> list[tuple[bytes, str]]:
    """JSON bodies (an object, or arrays of ``per_message``) with their message ids."""
    out = []
    for start in range(0, len(events), per_message):
        chunk = events[start : start + per_message]
        body = chunk[0] if per_message == 1 else chunk
        out.append((json.dumps(body).encode(), f"m{chunk[0]['seq']}"))
    return out


def sorted_rows(table: pa.Table | None, *columns: str) -> list[dict[str, Any]]:
    if table is None or table.num_rows == 0:
        return []
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: tuple(str(r[c]) for c in columns))


async def until(
    check: Callable[[], Awaitable[bool]], step: Callable[[], Awaitable[Any]], limit: int = 2000
) -> None:
    """Run ``step`` until ``check`` holds (at most ``limit`` steps)."""
    for _ in range(limit):
        if await check():
            return
        await step()
    raise AssertionError(f"not done after {limit} steps")
