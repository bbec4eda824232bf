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
from datetime import UTC, datetime

import httpx
from rich.table import Table

from cluster import platform
from cluster.console import console, quiet_library_logs, stepper
from cluster.db.engine import create_engine, session_factory
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.security.keys import KeyStore
from cluster.settings import Settings, load_settings
from jobs import demo_forge
from jobs.demo_stream import stream_story
from jobs.demo_summary import summary_table


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


def model_story(settings: Settings, base: str, token: str) -> tuple[dict[str, str], bool]:
    """Ingest -> Forge training with Tune -> promotion through the gate -> a prediction
    from Cortex through the gateway with a ``service`` key. Returns summary rows, ok."""
    results: dict[str, str] = {}
    console.rule("[bold]Lake: ingest the diabetes dataset")
    data = demo_forge.ingest_now(settings)
    verb = "loaded" if data["created"] else "reused (already loaded)"
    results["ingest"] = (
        f"{data['table']}: {data['rows']} rows {verb}, snapshot {data['snapshot_id']}"
    )
    console.print(results["ingest"])
    console.rule("[bold]Forge: training with Tune (ASHA)")
    started = time.monotonic()
    record = demo_forge.train(settings, demo_forge.demo_spec())
    if record["state"] != "succeeded":
        results["training"] = f"[red]{record['state']}[/]: {record.get('error')}"
        return results, False
    results["training"] = (
        f"run {record['run_id']}: {record['model_name']} v{record['model_version']} "
        f"in {time.monotonic() - started:.0f} s"
    )
    console.rule("[bold]Registry: promote to production through the gate")
    decision = demo_forge.promote(base, token, record)
    console.print(demo_forge.decision_table(decision))
    serving = "promoted" if decision["promoted"] else "kept"
    results["promotion"] = f"v{decision['candidate_version']} {serving}: {decision['why']}"
    console.rule("[bold]Cortex: a prediction through the gateway")
    service_key = asyncio.run(demo_forge.create_service_key(settings))
    serving_version = int(
        decision["candidate_version"] if decision["promoted"] else decision["incumbent_version"]
    )
    table, body = demo_forge.predict(base, service_key, serving_version)
    console.print(table)
    results["prediction"] = f"{body['model']} v{body['version']} (alias {body['alias']})"
    return results, True


def main() -> int:
    configure_logging("WARNING")
    quiet_library_logs()
    began = time.monotonic()
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
    console.rule("[bold]Stream: windows and a pattern")
    try:
        stream_tables, stream_ok = stream_story(state.gateway_url, token)
        for stream_table in stream_tables:
            console.print(stream_table)
    except httpx.HTTPError as exc:
        console.print(f"[red]Stream step failed:[/] {exc}")
        stream_ok = False
    try:
        results, model_ok = model_story(settings, state.gateway_url, token)
    except (DatapunkError, httpx.HTTPError) as exc:
        message = exc.message if isinstance(exc, DatapunkError) else str(exc)
        console.print(f"[red]Model step failed:[/] {message}", highlight=False)
        results, model_ok = {"model story": f"[red]failed[/]: {message}"}, False
    story_ok = ok and lake_ok and stream_ok
    ok = story_ok and model_ok
    first = "[green]ok[/]" if story_ok else "[red]failed (see above)[/]"
    results = {"gateway calls, Lake SQL + time travel, stream": first, **results}
    results["elapsed"] = f"{time.monotonic() - began:.0f} s"
    console.print(summary_table(settings, state, results))
    console.print("For Ray's own CLI:")
    console.print(platform.export_line(settings, state), highlight=False, soft_wrap=True)
    console.print("Stop everything with [bold]datapunk down[/] (or `make down`).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
