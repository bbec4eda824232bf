"""The end-to-end demo behind ``make demo``: the platform up on embedded defaults, then
a key, an authenticated call and a refused one through the real gateway.

Run: ``python -m jobs.demo``. The platform keeps running afterwards; ``datapunk down``
stops it.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
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
    console.print(key_value_table("open these", platform.urls(settings, state), ("what", "where")))
    console.print("For Ray's own CLI:")
    console.print(platform.export_line(settings, state), highlight=False, soft_wrap=True)
    console.print("Stop everything with [bold]datapunk down[/] (or `make down`).")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
