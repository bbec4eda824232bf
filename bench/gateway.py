"""Benchmark: an authenticated GET through the Serve gateway versus plain uvicorn.

Brings a private platform up exactly as ``datapunk up`` does (its own data dir in a
temp folder, its own ports, embedded adapters), creates an admin key, serves the same
FastAPI app (``serve_apps.gateway.asgi.create_app``, cached key auth on the same SQLite
DB) on plain uvicorn in a subprocess, and loads ``GET /api/v1/whoami`` from a separate
process at concurrency 1, 8 and 32, alternating the two servers. Ends with
``target gateway_vs_uvicorn_c8: RATIO (goal >= 0.3) met|missed``.

Run: ``python bench/gateway.py [--quick] [--requests-scale X] [--compare-serve-modes]``.
Exit 0 whether the goal is met or not; 1 when a request failed; 2 when the benchmark
could not run (the platform did not start, a port was taken).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cluster import platform
from cluster.console import console, stepper
from cluster.db.engine import create_engine, session_factory
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.ray_runtime import marked_processes, port_open
from cluster.security.keys import KeyStore
from cluster.settings import Settings, export_settings, load_settings

if __package__ in (None, ""):  # `python bench/gateway.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._measure import BenchError, Load, Target, run_loadgen
from bench._report import Row, cpu_table, error_lines, results_table, target_line

UVICORN_HELPER = Path(__file__).resolve().with_name("_uvicorn_gateway.py")
HOST = "127.0.0.1"
# Outside 10002-19999: `ray start` reserves that range for worker ports and refuses a
# GCS or dashboard port inside it; and away from the ports a developer's platform uses.
RAY_PORT, DASHBOARD_PORT, GATEWAY_PORT, UVICORN_PORT = 21400, 21465, 21480, 21490
# Serve binds fixed ports (HAProxy stats and metrics, fallback proxy, replica ports) and
# Ray its client server and dashboard agent: ours must not meet a developer's platform's
# or the Ray tests'. Settings carry them all (serve_env passes them to Ray).
SERVE_PORTS = {
    "haproxy_stats_port": 21404,
    "haproxy_metrics_port": 21405,
    "fallback_proxy_port": 21450,
    "replica_port_min": 41000,
}
RAY_SIDE_PORTS = {"client_server_port": 21401, "dashboard_agent_port": 21466}
ENDPOINT = "/api/v1/whoami"
PLAN = ((1, 1000), (8, 4000), (32, 6000))  # (concurrency, timed requests)
QUICK_SCALE = 0.1
UP_STEPS = 6


@dataclass(frozen=True)
class ServeMode:
    """Serve's two process-level switches, with a short name for the table."""

    throughput_optimized: bool
    ha_proxy: bool

    @property
    def name(self) -> str:
        if self.throughput_optimized and self.ha_proxy:
            return "serve/haproxy"
        if not (self.throughput_optimized or self.ha_proxy):
            return "serve/proxy"
        return f"serve/tput={int(self.throughput_optimized)},hap={int(self.ha_proxy)}"


@dataclass(frozen=True)
class Run:
    """What every measurement of one benchmark run shares."""

    token: str
    client: str
    requests_scale: float


# --- settings and the platform -------------------------------------------------------


def mode_of(settings: Settings) -> ServeMode:
    return ServeMode(settings.gateway.throughput_optimized, settings.gateway.ha_proxy)


def other_mode(mode: ServeMode) -> ServeMode:
    """The configuration to compare with: the default proxy path, or both switches on."""
    both = mode.throughput_optimized and mode.ha_proxy
    return ServeMode(throughput_optimized=not both, ha_proxy=not both)


def bench_settings(data_dir: Path, mode: ServeMode | None = None) -> Settings:
    """Private data dir and ports, embedded adapters; Serve switches from config or ``mode``."""
    gateway: dict[str, Any] = {"port": GATEWAY_PORT, **SERVE_PORTS}
    if mode is not None:
        gateway |= {"throughput_optimized": mode.throughput_optimized, "ha_proxy": mode.ha_proxy}
    return load_settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        amqp_url=None,
        consul_url=None,
        ray={
            "address": None,
            "port": RAY_PORT,
            "dashboard_port": DASHBOARD_PORT,
            **RAY_SIDE_PORTS,
        },
        gateway=gateway,
        # One key at full speed is the point here; its per-key bucket would cap it.
        rate_limits={"enabled": False},
    )


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks: platform down


def catch_sigterm() -> None:
    """Make SIGTERM unwind (platform down, uvicorn stopped) instead of killing at once.

    Needed again after each Ray connection: after ``ray.init`` and ``ray.shutdown`` a
    SIGTERM kills this process outright, although ``signal.getsignal`` still names
    the Python handler ``ray.init`` installed.
    """
    signal.signal(signal.SIGTERM, _exit_on_sigterm)


@contextmanager
def sigterm_deferred() -> Iterator[None]:
    """Hold a SIGTERM until ``platform.up`` returns, then act on it.

    ``up`` saves the state that ``down`` needs (the head's marker) only after
    ``ray start`` returns; stopped inside ``ray start``, the half-started head would be
    out of ``down``'s reach. Once ``up`` connects, Ray's own handler (``sys.exit``) is
    in force, and ``up`` tears down what it started itself.
    """
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: received.append(signum))
    try:
        yield
    finally:
        catch_sigterm()
    if received:
        raise SystemExit(128 + received[0])


@contextmanager
def platform_running(settings: Settings) -> Iterator[Target]:
    """``platform.up`` as ``datapunk up`` runs it; ``platform.down`` always follows."""
    mode = mode_of(settings)
    try:
        with sigterm_deferred(), stepper(UP_STEPS, f"starting Datapunk ({mode.name})") as step:
            result = platform.up(settings, step=step)
        marker = result.state.marker
        if result.already_running or not marker:
            raise BenchError(f"a platform already runs in {settings.data_path}; not ours")
        url = f"{result.state.gateway_url}{ENDPOINT}"
        yield Target(mode.name, url, lambda: marked_processes(marker), serve=True)
    finally:
        with console.status(f"stopping Datapunk ({mode.name})"):
            platform.down(settings)


async def create_admin_key(settings: Settings) -> str:
    engine = create_engine(settings)
    try:
        store = KeyStore(session_factory(engine), now=lambda: datetime.now(UTC))
        token, _ = await store.create(role="admin", name="bench admin", created_by="bench")
        return token
    finally:
        await engine.dispose()


def prepare_database(settings: Settings) -> str:
    """Migrate the private platform DB and mint the admin key both servers accept."""
    with console.status("migrating the benchmark's platform DB, creating an admin key"):
        asyncio.run(platform.preflight(settings))
        return asyncio.run(create_admin_key(settings))


# --- the uvicorn baseline ------------------------------------------------------------


def wait_answering(url: str, token: str, proc: subprocess.Popen[Any], log: Path) -> None:
    deadline = time.monotonic() + 60
    headers = {"Authorization": f"Bearer {token}"}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise BenchError(f"uvicorn exited with {proc.returncode} before answering:\n{tail}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BenchError(f"uvicorn did not answer {url} with 200 within 60 s; see {log}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def uvicorn_running(settings: Settings, token: str, workdir: Path) -> Iterator[Target]:
    """The same app on one plain uvicorn worker, in a subprocess; its log in ``workdir``."""
    if port_open(HOST, UVICORN_PORT):
        raise BenchError(f"port {UVICORN_PORT} is taken; the uvicorn baseline needs it")
    settings_file = workdir / "settings.json"
    settings_file.write_text(json.dumps(export_settings(settings), default=str))
    cmd = [sys.executable, str(UVICORN_HELPER), "--settings-json", str(settings_file)]
    cmd += ["--host", HOST, "--port", str(UVICORN_PORT)]
    log = workdir / "uvicorn.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://{HOST}:{UVICORN_PORT}{ENDPOINT}"
        with console.status("starting the uvicorn baseline"):
            wait_answering(url, token, proc, log)
        server = psutil.Process(proc.pid)
        yield Target("uvicorn", url, lambda: [server, *server.children(recursive=True)], False)
    finally:
        _stop(proc)


# --- measuring -----------------------------------------------------------------------


def plan(requests_scale: float) -> list[tuple[int, int]]:
    return [(c, max(c * 10, round(n * requests_scale))) for c, n in PLAN]


def measure(target: Target, phase: int, level: tuple[int, int], run: Run) -> Row:
    concurrency, requests = level
    load = Load(concurrency, requests, warmup=max(50, requests // 10), client=run.client)
    summary, cpu_s = run_loadgen(target, load, run.token)
    return Row(
        target=target.name,
        serve=target.serve,
        phase=phase,
        concurrency=concurrency,
        requests=requests,
        errors=int(summary["errors"]) + int(summary["warmup_errors"]),
        rps=float(summary["rps"]),
        p50_ms=float(summary["p50_ms"]),
        p99_ms=float(summary["p99_ms"]),
        cpu_ms_by_process={label: 1000 * s / requests for label, s in cpu_s.items()},
        first_error=summary["first_error"] or summary["warmup_first_error"],
    )


def measure_phase(phase: int, targets: list[Target], run: Run, progress: Progress) -> list[Row]:
    """Every level on both targets; the order flips per level so drift hits both alike."""
    rows: list[Row] = []
    levels = plan(run.requests_scale)
    task = progress.add_task("measuring", total=len(levels) * len(targets))
    for index, level in enumerate(levels):
        for target in targets if index % 2 == 0 else targets[::-1]:
            progress.update(task, description=f"{target.name}: c={level[0]}, {level[1]} requests")
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
    """uvicorn for the whole run; per Serve mode one platform up, measured, down."""
    settings = bench_settings(workdir)
    modes = [mode_of(settings)]
    if args.compare_serve_modes:
        modes.append(other_mode(modes[0]))
    scale = args.requests_scale * (QUICK_SCALE if args.quick else 1.0)
    run = Run(prepare_database(settings), args.client, scale)
    rows: list[Row] = []
    with ExitStack() as stack:
        baseline = stack.enter_context(uvicorn_running(settings, run.token, workdir))
        for phase, mode in enumerate(modes):
            with platform_running(bench_settings(workdir, mode)) as serve, _progress() as bar:
                rows += measure_phase(phase, [baseline, serve], run, bar)
    return rows


# --- entry point ---------------------------------------------------------------------


def report(rows: list[Row], cpu_breakdown: bool) -> int:
    """Print the tables, any errors, then the target line last; return the exit code."""
    console.print(results_table(rows, ENDPOINT))
    if cpu_breakdown:
        console.print(cpu_table(rows))
    errors = error_lines(rows)
    for line in errors:
        console.print(line, highlight=False)
    console.print(target_line(rows), highlight=False, soft_wrap=True)
    return 1 if errors else 0


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests-scale", type=float, default=1.0, help="scale request counts")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_SCALE}x requests")
    parser.add_argument(
        "--compare-serve-modes",
        action="store_true",
        help="also measure the other Serve configuration (one more platform up/down; slow)",
    )
    parser.add_argument(
        "--cpu-breakdown", action="store_true", help="show server CPU per process at c=8"
    )
    parser.add_argument(
        "--client", choices=("aiohttp", "httpx"), default="aiohttp", help="load generator client"
    )
    args = parser.parse_args(argv)
    if args.requests_scale <= 0:
        parser.error(f"--requests-scale must be > 0, got {args.requests_scale}")
    return args


def _quiet_serve_driver_logs() -> None:
    """Serve installs an INFO stream logger on import; its lines would break the table."""
    import ray.serve  # noqa: F401 - importing is what installs the logger we turn down

    logging.getLogger("ray.serve").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING")
    _quiet_serve_driver_logs()
    catch_sigterm()
    with tempfile.TemporaryDirectory(prefix="datapunk-bench-") as tmp:
        try:
            rows = run_benchmark(args, Path(tmp))
        except (DatapunkError, BenchError) as exc:
            message = exc.message if isinstance(exc, DatapunkError) else str(exc)
            console.print(f"[bold red]benchmark failed:[/] {message}", highlight=False)
            return 2
        except KeyboardInterrupt:  # the platform is already down: finally blocks ran
            console.print("[bold red]interrupted[/]; the benchmark's platform is stopped")
            return 130
    return report(rows, args.cpu_breakdown)


if __name__ == "__main__":
    sys.exit(main())
