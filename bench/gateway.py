"""Benchmark: an authenticated GET through the Serve gateway versus plain uvicorn.

Brings a private platform up exactly as ``datapunk up`` does (own data dir in a temp
folder, own ports, embedded adapters), creates an admin key, serves the same FastAPI
app (``serve_apps.gateway.app.create_app``, cached key auth on the same SQLite DB) on
plain uvicorn in a subprocess, and loads ``GET /api/v1/whoami`` from a separate process
at concurrency 1, 8 and 32, alternating the two servers. Ends with
``target gateway_vs_uvicorn_c8: RATIO (goal >= 0.3) met|missed``.

Run: ``python bench/gateway.py [--quick] [--requests-scale X] [--compare-serve-modes]``.
Exit 0 whether the goal is met or not; 1 when a response failed; 2 when the benchmark
could not run (platform did not start, a port was taken).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import httpx
import psutil
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from cluster import platform
from cluster.console import console, stepper
from cluster.db.engine import create_engine, session_factory
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.ray_runtime import marked_processes, port_open
from cluster.security.keys import KeyStore
from cluster.settings import Settings, export_settings, load_settings

BENCH_DIR = Path(__file__).resolve().parent
LOADGEN = BENCH_DIR / "_loadgen.py"
UVICORN_HELPER = BENCH_DIR / "_uvicorn_gateway.py"
TOKEN_ENV = "DATAPUNK_BENCH_TOKEN"  # read by _loadgen.py
HOST = "127.0.0.1"
# Outside 10002-19999: `ray start` reserves that range for worker ports and refuses a
# GCS or dashboard port inside it; and away from the defaults a developer's platform uses.
RAY_PORT, DASHBOARD_PORT, GATEWAY_PORT, UVICORN_PORT = 21400, 21465, 21480, 21490
# Serve binds these on every head at fixed defaults (HAProxy stats 8404 and metrics
# 9101 on all interfaces, fallback proxy 8500/9500, replica ports from 30000): a
# developer's platform or the Ray tests would collide with us, or we with them.
SERVE_PORT_ENV = {
    "RAY_SERVE_HAPROXY_STATS_PORT": "21404",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "21405",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "21450",
    "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": "21451",
    "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": "21500",
    "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": "21599",
    "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": "21600",
    "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": "21699",
}
ENDPOINT = "/api/v1/whoami"
PLAN = ((1, 1000), (8, 4000), (32, 6000))  # (concurrency, timed requests)
QUICK_SCALE = 0.1
TARGET_NAME, TARGET_CONCURRENCY, GOAL = "gateway_vs_uvicorn_c8", 8, 0.3
UP_STEPS = 6
LOADGEN_TIMEOUT_S = 600.0


class BenchError(Exception):
    """The benchmark itself could not run (as opposed to a slow result)."""


@dataclass(frozen=True)
class ServeMode:
    label: str
    throughput_optimized: bool
    ha_proxy: bool


@dataclass(frozen=True)
class Target:
    """A server under load: its name, URL and the processes whose CPU it spends."""

    name: str
    url: str
    processes: Callable[[], list[psutil.Process]]
    serve: bool


@dataclass(frozen=True)
class Run:
    """What every measurement of one benchmark run shares."""

    token: str
    client: str
    requests_scale: float


@dataclass(frozen=True)
class Row:
    target: str
    serve: bool
    phase: int
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    first_error: str | None


# --- settings and the platform -------------------------------------------------------


def mode_of(settings: Settings) -> ServeMode:
    gw = settings.gateway
    fast = gw.throughput_optimized and gw.ha_proxy
    label = "HAProxy + throughput-optimized" if fast else "Serve proxy (default path)"
    if not fast and (gw.throughput_optimized or gw.ha_proxy):
        label = f"throughput_optimized={gw.throughput_optimized}, ha_proxy={gw.ha_proxy}"
    return ServeMode(label, gw.throughput_optimized, gw.ha_proxy)


def other_mode(mode: ServeMode) -> ServeMode:
    """The configuration to compare with: the default proxy path, or both switches on."""
    if mode.throughput_optimized and mode.ha_proxy:
        return ServeMode("Serve proxy (default path)", False, False)
    return ServeMode("HAProxy + throughput-optimized", True, True)


def bench_settings(data_dir: Path, mode: ServeMode | None = None) -> Settings:
    """Private data dir and ports, embedded adapters; Serve switches from config or ``mode``."""
    gateway: dict[str, Any] = {"port": GATEWAY_PORT}
    if mode is not None:
        gateway |= {"throughput_optimized": mode.throughput_optimized, "ha_proxy": mode.ha_proxy}
    return load_settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        amqp_url=None,
        consul_url=None,
        ray={"address": None, "port": RAY_PORT, "dashboard_port": DASHBOARD_PORT},
        gateway=gateway,
    )


@contextmanager
def platform_running(settings: Settings, mode: ServeMode) -> Iterator[str]:
    """``platform.up`` as ``datapunk up`` runs it; always ``platform.down``. Yields the marker."""
    try:
        with stepper(UP_STEPS, f"starting Datapunk ({mode.label})") as step:
            result = platform.up(settings, step=step)
        if result.already_running or not result.state.marker:
            raise BenchError(f"a platform already runs in {settings.data_path}; not ours")
        yield result.state.marker
    finally:
        with console.status(f"stopping Datapunk ({mode.label})"):
            platform.down(settings)


async def _create_admin_key(settings: Settings) -> str:
    engine = create_engine(settings)
    try:
        store = KeyStore(session_factory(engine), now=lambda: datetime.now(UTC))
        token, _ = await store.create(role="admin", name="bench admin", created_by="bench")
        return token
    finally:
        await engine.dispose()


def prepare_database(settings: Settings) -> str:
    """Migrate the private platform DB and mint the admin key both servers accept."""
    with console.status("migrating the benchmark's platform DB and creating an admin key"):
        asyncio.run(platform.preflight(settings))
        return asyncio.run(_create_admin_key(settings))


# --- the uvicorn baseline ------------------------------------------------------------


def wait_answering(url: str, token: str, proc: subprocess.Popen[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"uvicorn exited with {proc.returncode} before answering")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BenchError(f"uvicorn did not answer {url} with 200 within {timeout_s:g}s")


@contextmanager
def uvicorn_running(settings: Settings, token: str, workdir: Path) -> Iterator[Target]:
    if port_open(HOST, UVICORN_PORT):
        raise BenchError(f"port {UVICORN_PORT} is taken; the uvicorn baseline needs it")
    settings_file = workdir / "settings.json"
    settings_file.write_text(json.dumps(export_settings(settings), default=str))
    cmd = [sys.executable, str(UVICORN_HELPER), "--settings-json", str(settings_file)]
    cmd += ["--host", HOST, "--port", str(UVICORN_PORT)]
    with (workdir / "uvicorn.log").open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://{HOST}:{UVICORN_PORT}{ENDPOINT}"
        with console.status("starting the uvicorn baseline"):
            wait_answering(url, token, proc, timeout_s=60)
        server = psutil.Process(proc.pid)
        yield Target("uvicorn", url, lambda: [server, *server.children(recursive=True)], False)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_target(mode: ServeMode, marker: str) -> Target:
    url = f"http://{HOST}:{GATEWAY_PORT}{ENDPOINT}"
    return Target(f"serve: {mode.label}", url, lambda: marked_processes(marker), True)


# --- one measurement -----------------------------------------------------------------


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """User plus system CPU seconds of each process still alive, by pid."""
    seconds: dict[int, float] = {}
    for proc in processes:
        try:
            times = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        seconds[proc.pid] = times.user + times.system
    return seconds


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(after[pid] - before.get(pid, 0.0) for pid in after)


def _loadgen_cmd(url: str, concurrency: int, requests: int, warmup: int, client: str) -> list[str]:
    return [
        sys.executable,
        str(LOADGEN),
        f"--url={url}",
        f"--concurrency={concurrency}",
        f"--requests={requests}",
        f"--warmup={warmup}",
        f"--client={client}",
        "--wait-go",
    ]


def _expect_ready(proc: subprocess.Popen[str]) -> None:
    stdout: IO[str] | None = proc.stdout
    line = stdout.readline() if stdout else ""
    if line.strip() != "ready":
        _, err = proc.communicate(timeout=30)
        raise BenchError(f"load generator failed before the timed run: {line}{err[-2000:]}")


def run_loadgen(target: Target, cmd: list[str], token: str) -> tuple[dict[str, Any], float]:
    """Warm up, then the timed run; return the generator's summary and server CPU seconds."""
    env = {**os.environ, TOKEN_ENV: token}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        _expect_ready(proc)
        processes = target.processes()
        before = cpu_seconds(processes)
        out, err = proc.communicate("go\n", timeout=LOADGEN_TIMEOUT_S)
        spent = cpu_spent(before, cpu_seconds(processes))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"load generator exited {proc.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result, spent


def measure(target: Target, phase: int, level: tuple[int, int], run: Run) -> Row:
    concurrency, requests = level
    warmup = max(50, requests // 10)
    cmd = _loadgen_cmd(target.url, concurrency, requests, warmup, run.client)
    result, cpu_s = run_loadgen(target, cmd, run.token)
    errors = int(result["errors"]) + int(result["warmup_errors"])
    return Row(
        target=target.name,
        serve=target.serve,
        phase=phase,
        concurrency=concurrency,
        requests=requests,
        errors=errors,
        rps=float(result["rps"]),
        p50_ms=float(result["p50_ms"]),
        p99_ms=float(result["p99_ms"]),
        cpu_ms_per_request=1000 * cpu_s / requests,
        first_error=result["first_error"] or result["warmup_first_error"],
    )


# --- a phase: uvicorn and one Serve mode, alternating --------------------------------


def plan(requests_scale: float) -> list[tuple[int, int]]:
    return [(c, max(c * 10, round(n * requests_scale))) for c, n in PLAN]


def measure_phase(phase: int, targets: list[Target], run: Run, progress: Progress) -> list[Row]:
    """Every level on both targets; the order flips per level so drift hits both alike."""
    rows: list[Row] = []
    levels = plan(run.requests_scale)
    task = progress.add_task("measuring", total=len(levels) * len(targets))
    for index, level in enumerate(levels):
        for target in targets if index % 2 == 0 else targets[::-1]:
            what = f"{target.name}, c={level[0]}, {level[1]} requests"
            progress.update(task, description=what)
            rows.append(measure(target, phase, level, run))
            progress.advance(task)
    progress.remove_task(task)
    return rows


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def run_benchmark(args: argparse.Namespace, workdir: Path) -> list[Row]:
    os.environ.update(SERVE_PORT_ENV)
    settings = bench_settings(workdir)
    modes = [mode_of(settings)]
    if args.compare_serve_modes:
        modes.append(other_mode(modes[0]))
    rows: list[Row] = []
    scale = args.requests_scale * (QUICK_SCALE if args.quick else 1.0)
    run = Run(prepare_database(settings), args.client, scale)
    with ExitStack() as stack:
        baseline = stack.enter_context(uvicorn_running(settings, run.token, workdir))
        for phase, mode in enumerate(modes):
            with platform_running(bench_settings(workdir, mode), mode) as marker:
                targets = [baseline, serve_target(mode, marker)]
                with _progress() as progress:
                    rows += measure_phase(phase, targets, run, progress)
    return rows


# --- the report ----------------------------------------------------------------------


def ratio_of(row: Row, rows: list[Row]) -> float | None:
    """Serve req/s over uvicorn req/s at the same concurrency in the same phase."""
    if not row.serve:
        return None
    for base in rows:
        if not base.serve and (base.phase, base.concurrency) == (row.phase, row.concurrency):
            return row.rps / base.rps if base.rps > 0 else None
    return None


def results_table(rows: list[Row]) -> Table:
    table = Table(title=f"GET {ENDPOINT} (authenticated, cached key)", header_style="bold")
    for column in ("target", "concurrency", "requests", "errors", "req/s", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "target" else "right")
    table.add_column("server CPU ms/req", justify="right")
    table.add_column("serve/uvicorn", justify="right")
    ordered = sorted(rows, key=lambda r: (r.phase, r.serve, r.target, r.concurrency))
    for row in ordered:
        ratio = ratio_of(row, rows)
        table.add_row(
            row.target,
            str(row.concurrency),
            str(row.requests),
            f"[red]{row.errors}[/]" if row.errors else "0",
            f"{row.rps:,.0f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.cpu_ms_per_request:.2f}",
            "-" if ratio is None else f"{ratio:.2f}",
        )
    return table


def target_line(rows: list[Row]) -> str:
    primary = [r for r in rows if r.phase == 0 and r.concurrency == TARGET_CONCURRENCY]
    serve = next(r for r in primary if r.serve)
    ratio = ratio_of(serve, rows) or 0.0
    met = ratio >= GOAL and not any(r.errors for r in primary)
    return f"target {TARGET_NAME}: {ratio:.2f} (goal >= {GOAL}) {'met' if met else 'missed'}"


def report(rows: list[Row]) -> int:
    """Print the table, any errors, then the target line last; return the exit code."""
    console.print(results_table(rows))
    failed = [r for r in rows if r.errors]
    for row in failed:
        console.print(
            f"[red]errors[/]: {row.target} c={row.concurrency}: {row.errors} failed "
            f"responses; first: {row.first_error}",
            highlight=False,
        )
    console.print(target_line(rows), highlight=False, soft_wrap=True)
    return 1 if failed else 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--requests-scale", type=float, default=1.0, help="multiply every request count"
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SCALE}x requests")
    parser.add_argument(
        "--compare-serve-modes",
        action="store_true",
        help="also measure the other Serve configuration (another platform up/down; slow)",
    )
    parser.add_argument("--client", choices=("aiohttp", "httpx"), default="aiohttp")
    args = parser.parse_args(argv)
    if args.requests_scale <= 0:
        parser.error(f"--requests-scale must be > 0, got {args.requests_scale}")
    return args


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: platform down


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with tempfile.TemporaryDirectory(prefix="datapunk-bench-") as tmp:
        try:
            rows = run_benchmark(args, Path(tmp))
        except (DatapunkError, BenchError) as exc:
            message = exc.message if isinstance(exc, DatapunkError) else str(exc)
            console.print(f"[red]benchmark failed:[/] {message}", highlight=False)
            return 2
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
