"""The end-to-end demo behind ``make demo``: the platform up on embedded defaults, then
a key, an authenticated call and a refused one through the real gateway, a Lake table
with SQL and time travel, and a live stream of orders windowed by event time.

Run: ``python -m jobs.demo``. The platform keeps running afterwards; ``datapunk down``
stops it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from cluster import platform
from cluster.console import console, key_value_table, quiet_library_logs, stepper
from cluster.db.engine import create_engine, session_factory
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.security.keys import KeyStore
from cluster.settings import Settings, load_settings


@dataclass(frozen=True)
class Call:
    what: str
    path: str
    key: str | None
    expected: int


async def create_admin_key(settings: Settings) -> str:
    engine = create_engine(settings)
    try:
        store = KeyStore(session_factory(engine), now=lambda: datetime.now(UTC))
        token, _record = await store.create(
            role="admin", name="demo admin", expires_in=None, created_by="make demo"
        )
        return token
    finally:
        await engine.dispose()


def run_calls(base: str, calls: list[Call]) -> tuple[Table, bool]:
    table = Table(title="calls through the gateway", header_style="bold")
    for column in ("call", "request", "status", "expected", "request id"):
        table.add_column(column)
    all_ok = True
    with httpx.Client(base_url=base, timeout=10) as client:
        for call in calls:
            headers = {"Authorization": f"Bearer {call.key}"} if call.key else {}
            reply = client.get(call.path, headers=headers)
            ok = reply.status_code == call.expected
            all_ok &= ok
            colour = "green" if ok else "red"
            table.add_row(
                call.what,
                f"GET {call.path}",
                f"[{colour}]{reply.status_code}[/]",
                str(call.expected),
                reply.headers.get("x-request-id", "-"),
            )
    return table, all_ok


def lake_story(base: str, token: str) -> tuple[Table, bool]:
    """Create a partitioned Iceberg table, append twice, query it with SQL and time travel."""
    auth = {"Authorization": f"Bearer {token}"}
    name = f"demo.orders_{int(time.time())}"
    rows = [
        {"id": i, "region": region, "amount": float(amount)}
        for i, (region, amount) in enumerate([("eu", 10), ("us", 7), ("eu", 3), ("apac", 12)])
    ]
    with httpx.Client(base_url=f"{base}/api/v1/lake", headers=auth, timeout=60) as lake:
        lake.post("/namespaces", json={"name": "demo", "exist_ok": True}).raise_for_status()
        columns = [
            {"name": "id", "type": "long", "required": True},
            {"name": "region", "type": "string"},
            {"name": "amount", "type": "double"},
        ]
        lake.post(
            "/tables", json={"name": name, "columns": columns, "partition_by": ["region"]}
        ).raise_for_status()
        first = lake.post(f"/tables/{name}/append", json=rows[:2]).json()
        lake.post(f"/tables/{name}/append", json=rows[2:]).raise_for_status()
        # The name is ours (a timestamp), and the Lake only runs read-only SELECTs anyway.
        query = f"SELECT region, count(*) AS n, sum(amount) AS total FROM {name} GROUP BY region"  # noqa: S608
        totals = lake.post("/sql", json={"query": query + " ORDER BY region"}).json()
        then = lake.post(f"/tables/{name}/query", json={"snapshot_id": first["snapshot_id"]})
    table = Table(title=f"Lake: {name} (Iceberg, partitioned by region)", header_style="bold")
    for column in ("region", "rows", "total amount"):
        table.add_column(column)
    for row in totals:
        table.add_row(row["region"], str(row["n"]), f"{row['total']:.2f}")
    table.caption = f"time travel to the first snapshot sees {len(then.json())} of 4 rows"
    return table, len(then.json()) == 2 and sum(r["n"] for r in totals) == 4


DEMO_STREAM = Path(__file__).resolve().parent.parent / "configs" / "streams" / "orders_live.yaml"


def stream_story(base: str, token: str) -> tuple[Table, bool]:
    """Deploy the example topology, push a batch of orders over HTTP, tail the windows."""
    spec = yaml.safe_load(DEMO_STREAM.read_text())
    spec.update(name="demo_orders", partitions=1, actor_cpus=0)
    spec["sinks"] = [s for s in spec["sinks"] if s["kind"] != "lake" or s["from"] == "per_minute"]
    for sink in spec["sinks"]:
        if sink["kind"] == "lake":
            sink["table"] = "stream.demo_orders_per_minute"
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    orders = [
        {
            "order_id": i,
            "customer": f"c{i % 4}",
            "status": "new",
            "amount": float(20 + (i * 37) % 180),
            "ts": (start + timedelta(seconds=3 * i)).isoformat(),
        }
        for i in range(200)  # ten minutes of event time
    ]
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=base, headers=auth, timeout=90) as client:
        client.post("/api/v1/streams", params={"fresh": "true"}, json=spec).raise_for_status()
        client.post("/api/v1/streams/demo_orders/events", json=orders).raise_for_status()
        rows: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while len(rows) < 4 * 9 and time.monotonic() < deadline:  # 9 closed minutes x 4
            page = client.get(
                "/api/v1/streams/demo_orders/tail",
                params={"outputs": "per_minute", "timeout_s": 5},
            ).json()
            rows = [row for entry in page["entries"] for row in entry["rows"]]
        client.delete("/api/v1/streams/demo_orders").raise_for_status()
    table = Table(title="Stream: orders per customer per minute (event time)", header_style="bold")
    for column in ("customer", "window start", "orders", "revenue (EUR)"):
        table.add_column(column)
    for row in sorted(rows, key=lambda r: (r["window_start"], r["customer"]))[:8]:
        table.add_row(
            row["customer"], row["window_start"], str(row["orders"]), f"{row['revenue_eur']:.2f}"
        )
    table.caption = f"{len(rows)} windows closed by the watermark (first 8 shown)"
    return table, sum(r["orders"] for r in rows) > 0


def main() -> int:
    configure_logging("WARNING")
    quiet_library_logs()
    try:
        settings = load_settings()
        with stepper(7, "starting Datapunk") as step:
            result = platform.up(settings, step=step)
            step("creating an admin API key")
            token = asyncio.run(create_admin_key(settings))
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}")
        return 2
    state = result.state
    if result.already_running:
        console.print("[yellow]Datapunk was already running; using it.[/]")
    console.print(f"admin API key (shown once, keep it): [bold]{token}[/]", soft_wrap=True)
    table, ok = run_calls(
        state.gateway_url,
        [
            Call("liveness", "/healthz", None, 200),
            Call("readiness of every adapter and pool", "/readyz", None, 200),
            Call("authenticated", "/api/v1/whoami", token, 200),
            Call("platform status", "/api/v1/platform/status", token, 200),
            Call("no key", "/api/v1/whoami", None, 401),
            Call("wrong key", "/api/v1/whoami", "dp_not-a-real-key", 401),
        ],
    )
    console.print(table)
    try:
        lake_table, lake_ok = lake_story(state.gateway_url, token)
    except httpx.HTTPError as exc:
        console.print(f"[red]Lake step failed:[/] {exc}")
        lake_table, lake_ok = None, False
    if lake_table is not None:
        console.print(lake_table)
    try:
        stream_table, stream_ok = stream_story(state.gateway_url, token)
        console.print(stream_table)
    except httpx.HTTPError as exc:
        console.print(f"[red]Stream step failed:[/] {exc}")
        stream_ok = False
    ok = ok and lake_ok and stream_ok
    console.print(key_value_table("open these", platform.urls(settings, state), ("what", "where")))
    console.print("For Ray's own CLI:")
    console.print(platform.export_line(settings, state), highlight=False, soft_wrap=True)
    console.print("Stop everything with [bold]datapunk down[/] (or `make down`).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
