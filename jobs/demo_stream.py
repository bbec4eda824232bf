"""The stream step of ``make demo``: ``configs/streams/orders_live.yaml`` deployed through
the gateway, ten minutes of orders pushed over HTTP, and its outputs tailed: tumbling
windows by event time and the ``cancel_after_big_order`` pattern (a big order, then a
cancellation by the same customer within five minutes, with no shipment between)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from cluster.errors import PlatformStateError

DEMO_STREAM = Path(__file__).resolve().parent.parent / "configs" / "streams" / "orders_live.yaml"
NAME = "demo_orders"
WINDOWS, PATTERN = "per_minute", "cancel_after_big_order"
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
CLOSED_WINDOWS = 4 * 9  # four customers x the nine minutes the watermark closes


def demo_topology() -> dict[str, Any]:
    """The example topology, one partition, only the windows' Lake sink (its own table)."""
    spec: dict[str, Any] = yaml.safe_load(DEMO_STREAM.read_text())
    operators = {op["name"]: op["kind"] for op in spec["operators"]}
    if operators.get(PATTERN) != "pattern":  # the demo tells the pattern's story
        raise PlatformStateError(
            f"{DEMO_STREAM} has no pattern operator named {PATTERN!r}; restore it there"
        )
    spec.update(name=NAME, partitions=1, actor_cpus=0)
    spec["sinks"] = [s for s in spec["sinks"] if s["kind"] != "lake" or s["from"] == WINDOWS]
    for sink in spec["sinks"]:
        if sink["kind"] == "lake":
            sink["table"] = "stream.demo_orders_per_minute"
    return spec


def demo_orders() -> list[dict[str, Any]]:
    """200 ordinary orders over ten minutes of event time, plus one customer who places
    a 1500 EUR order and cancels it two minutes later: the pattern's match."""

    def at(seconds: float) -> str:
        return (START + timedelta(seconds=seconds)).isoformat()

    orders = [
        {
            "order_id": i,
            "customer": f"c{i % 4}",
            "status": "new",
            "amount": float(20 + (i * 37) % 180),
            "ts": at(3 * i),
        }
        for i in range(200)
    ]
    big = {"order_id": 1000, "customer": "c_big", "amount": 1500.0}
    orders.insert(20, {**big, "status": "new", "ts": at(61)})
    orders.insert(60, {**big, "status": "cancelled", "ts": at(181)})
    return orders


def _tail_until(client: httpx.Client, done: Any, wait_s: float) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = {WINDOWS: [], PATTERN: []}
    cursor, deadline = 0, time.monotonic() + wait_s
    while not done(rows) and time.monotonic() < deadline:
        page = client.get(
            f"/api/v1/streams/{NAME}/tail",
            params={"outputs": f"{WINDOWS},{PATTERN}", "after": cursor, "timeout_s": 5},
        )
        page.raise_for_status()
        body = page.json()
        cursor = body["cursor"]
        for entry in body["entries"]:
            rows.setdefault(entry["output"], []).extend(entry["rows"])
    return rows


def stream_story(base: str, token: str) -> tuple[list[Table], bool]:
    """Deploy the topology, push the orders, tail windows and pattern matches, stop it."""
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=90) as client:
        client.post(
            "/api/v1/streams", params={"fresh": "true"}, json=demo_topology()
        ).raise_for_status()
        client.post(f"/api/v1/streams/{NAME}/events", json=demo_orders()).raise_for_status()
        rows = _tail_until(
            client,
            lambda got: len(got[WINDOWS]) >= CLOSED_WINDOWS and got[PATTERN],
            wait_s=60,
        )
        client.delete(f"/api/v1/streams/{NAME}").raise_for_status()
    windows = Table(
        title="Stream: orders per customer per minute (event time)", header_style="bold"
    )
    for column in ("customer", "window start", "orders", "revenue (EUR)"):
        windows.add_column(column)
    ordered = sorted(rows[WINDOWS], key=lambda r: (r["window_start"], r["customer"]))
    for row in ordered[:8]:
        windows.add_row(
            row["customer"], row["window_start"], str(row["orders"]), f"{row['revenue_eur']:.2f}"
        )
    windows.caption = f"{len(rows[WINDOWS])} windows closed by the watermark (first 8 shown)"
    matches = Table(title=f"Stream: pattern {PATTERN}", header_style="bold")
    for column in ("customer", "match"):
        matches.add_column(column)
    for row in rows[PATTERN]:
        detail = {k: v for k, v in row.items() if k != "customer"}
        matches.add_row(str(row.get("customer", "-")), str(detail))
    matches.caption = f"{len(rows[PATTERN])} match(es): big order then cancelled within 5 min"
    ok = sum(r["orders"] for r in rows[WINDOWS]) > 0 and len(rows[PATTERN]) > 0
    return [windows, matches], ok
