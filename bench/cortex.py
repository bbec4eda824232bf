"""Benchmark: Cortex online inference, batched (``@serve.batch``) versus unbatched.

Brings a private platform up exactly as ``datapunk up`` does (its own data dir and
ports, embedded adapters, one Cortex replica so the two modes meet the same hardware),
registers an MLP in the registry (16 inputs, three hidden layers of ``--hidden``, 4096
by default: a one-row forward pass is bound by reading its weights, as in real inference
of a large model, so batching has something to win),
points ``production`` at it and sends one-row predictions at concurrency 1, 16 and 64:

* through the Serve handle from this driver: ``predict`` (batched) versus
  ``predict_unbatched`` (one forward pass per request), on the same replica;
* through HTTP (``POST /api/v1/models/bench_mlp/predict`` with an API key, the gateway
  validating the body and routing by alias): Cortex deployed with the configured batch
  size, then redeployed with ``max_batch_size: 1``.

The compute time of one full batch is measured here, in this process, on the same
model. Targets (issue 7):

    target cortex_batched_vs_unbatched_handle_c64: RATIO (goal >= 5) met|missed
    target cortex_batched_vs_unbatched_http_c64: RATIO (goal >= 5) met|missed
    target cortex_p99_vs_batch_bound_c64: RATIO (goal <= 1) met|missed

the last being p99 (batched, handle, concurrency 64) over batch wait + 2 x full-batch
compute. Run: ``python bench/cortex.py [--quick] [--hidden N]``. Exit 0 whether goals
are met or not; 1 when a request failed; 2 when the benchmark could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
from rich.table import Table

if __package__ in (None, ""):  # `python bench/cortex.py`: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._targets import Target, median, percentile
from bench.gateway import create_admin_key
from cluster import platform
from cluster.console import console, stepper
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

RAY_PORT, DASHBOARD_PORT, GATEWAY_PORT = 21500, 21565, 21580
SERVE_PORTS = {
    "haproxy_stats_port": 21504,
    "haproxy_metrics_port": 21505,
    "fallback_proxy_port": 21550,
    "replica_port_min": 45000,
}
RAY_SIDE_PORTS = {"client_server_port": 21501, "dashboard_agent_port": 21566}
MODEL = "bench_mlp"
FEATURES = [f"x{i}" for i in range(16)]
LEVELS = ((1, 200), (16, 1200), (64, 2400))  # (concurrency, timed requests)
QUICK_SCALE = 0.25
WARMUP = 64
UP_STEPS = 6


@dataclass(frozen=True)
class Row:
    """One measured level."""

    path: str  # handle | http
    mode: str  # batched | unbatched
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def p50(self) -> float:
        return median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99(self) -> float:
        return percentile(self.latencies_ms, 99) if self.latencies_ms else float("nan")


def bench_settings(data_dir: Path, max_batch_size: int) -> Settings:
    return load_settings(
        data_dir=data_dir,
        database_url=None,
        redis_url=None,
        amqp_url=None,
        consul_url=None,
        ray={"address": None, "port": RAY_PORT, "dashboard_port": DASHBOARD_PORT, **RAY_SIDE_PORTS},
        gateway={"port": GATEWAY_PORT, **SERVE_PORTS},
        # One key at full speed is the point here; its per-key bucket would cap it.
        rate_limits={"enabled": False},
        cortex={
            "min_replicas": 1,
            "max_replicas": 1,
            "max_batch_size": max_batch_size,
            "batch_wait_timeout_s": 0.005,
        },
    )


# --- the model ------------------------------------------------------------------------


def model_spec(hidden: int) -> dict[str, Any]:
    return {
        "task": "regression",
        "type": "mlp",
        "hidden": [hidden, hidden, hidden],
        "dropout": 0.0,
        "class_path": None,
        "kwargs": {},
        "features": FEATURES,
        "label": "y",
        "in_features": len(FEATURES),
        "out_features": 1,
        "loss": "mse",
    }


async def register_model(settings: Settings, hidden: int) -> bytes:
    """Register the benchmark's MLP as version 1 with alias ``production``; its bytes."""
    import torch

    from actors.forge.artifacts import ArtifactStore, artifacts_root
    from actors.forge.nets import build_model, save_artifact
    from actors.forge.registry import ModelRegistry
    from cluster.db.engine import create_engine
    from cluster.db.forge_store import RegistryStore

    torch.manual_seed(0)
    spec = model_spec(hidden)
    artifact = save_artifact(build_model(spec), spec)
    engine = create_engine(settings)
    try:
        registry = ModelRegistry(
            RegistryStore.from_engine(engine, lambda: datetime.now(UTC)),
            ArtifactStore(artifacts_root(settings)),
        )
        await registry.register(
            MODEL,
            artifact=artifact,
            model_spec=spec,
            signature={
                "inputs": [{"name": f, "type": "double"} for f in FEATURES],
                "output": {"name": "y", "type": "double", "kind": "value"},
                "task": "regression",
            },
            metrics={},
            params={"hidden": hidden},
            lineage={
                "table": "bench.none",
                "snapshot_id": 0,
                "run_id": "bench",
                "config_hash": "0" * 16,
                "code_version": "bench",
            },
            created_by="bench",
        )
        await registry.set_alias(MODEL, "production", 1, actor="bench")
    finally:
        await engine.dispose()
    return artifact


def full_batch_compute_ms(artifact: bytes, batch: int) -> float:
    """Median forward-pass time of one full batch, in this process."""
    import torch

    from actors.forge.nets import load_artifact

    net = load_artifact(artifact)
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(batch, len(FEATURES))))
    x = x.to(torch.float32)
    times = []
    with torch.inference_mode():
        for _ in range(5):
            net(x)
        for _ in range(30):
            start = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - start) * 1000)
    return median(times)


# --- load -----------------------------------------------------------------------------


async def drive(call: Callable[[], Awaitable[bool]], concurrency: int, requests: int) -> Row:
    """``requests`` calls from ``concurrency`` workers after a warm-up; a Row sans labels."""
    latencies: list[float] = []
    errors = 0
    left = WARMUP

    async def worker(record: bool) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            start = time.perf_counter()
            ok = await call()
            if not record:
                continue
            if ok:
                latencies.append((time.perf_counter() - start) * 1000)
            else:
                errors += 1

    await asyncio.gather(*(worker(False) for _ in range(min(concurrency, WARMUP))))
    left = requests
    start = time.perf_counter()
    await asyncio.gather(*(worker(True) for _ in range(concurrency)))
    seconds = time.perf_counter() - start
    return Row("", "", concurrency, requests, errors, seconds, latencies)


def one_row(rng: np.random.Generator) -> dict[str, float]:
    return {f: float(v) for f, v in zip(FEATURES, rng.normal(size=len(FEATURES)), strict=True)}


def handle_caller(method: str) -> Callable[[], Awaitable[bool]]:
    from ray import serve

    from serve_apps.cortex import CORTEX_APP, CORTEX_DEPLOYMENT

    handle = serve.get_deployment_handle(CORTEX_DEPLOYMENT, CORTEX_APP).options(
        multiplexed_model_id=f"{MODEL}:1"
    )
    rng = np.random.default_rng(1)
    tables = [pa.Table.from_pylist([one_row(rng)]) for _ in range(256)]
    counter = iter(range(10**9))

    async def call() -> bool:
        table = tables[next(counter) % len(tables)]
        try:
            await getattr(handle, method).remote(table)
            return True
        except Exception:
            return False

    return call


def http_caller(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[bool]]:
    rng = np.random.default_rng(2)
    bodies = [{"instances": [one_row(rng)]} for _ in range(256)]
    counter = iter(range(10**9))

    async def call() -> bool:
        try:
            response = await client.post(url, json=bodies[next(counter) % len(bodies)])
            return response.status_code == 200
        except httpx.HTTPError:
            return False

    return call


async def measure_handle(scale: float) -> list[Row]:
    rows = []
    for concurrency, requests in LEVELS:
        for mode, method in (("unbatched", "predict_unbatched"), ("batched", "predict")):
            row = await drive(handle_caller(method), concurrency, max(50, int(requests * scale)))
            rows.append(_label(row, "handle", mode))
            console.print(_line(rows[-1]), highlight=False)
    return rows


async def measure_http(base: str, token: str, mode: str, scale: float) -> list[Row]:
    url = f"{base}/api/v1/models/{MODEL}/predict"
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    headers = {"Authorization": f"Bearer {token}"}
    rows = []
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0) as client:
        probe = await client.post(url, json={"instances": [one_row(np.random.default_rng(3))]})
        if probe.status_code != 200:
            raise DatapunkError(f"predict answered {probe.status_code}: {probe.text[:300]}")
        for concurrency, requests in LEVELS:
            row = await drive(http_caller(client, url), concurrency, max(50, int(requests * scale)))
            rows.append(_label(row, "http", mode))
            console.print(_line(rows[-1]), highlight=False)
    return rows


def _label(row: Row, path: str, mode: str) -> Row:
    return Row(path, mode, row.concurrency, row.requests, row.errors, row.seconds, row.latencies_ms)


def _line(row: Row) -> str:
    return (
        f"  {row.path:6} {row.mode:9} c={row.concurrency:<3} {row.rps:8.0f} req/s  "
        f"p50 {row.p50:7.2f} ms  p99 {row.p99:7.2f} ms  errors {row.errors}"
    )


# --- the run --------------------------------------------------------------------------


def redeploy_cortex(settings: Settings) -> None:
    """Cortex again, as ``datapunk up`` deploys it, with ``settings``' batch size."""
    from ray import serve

    from serve_apps.cortex import CORTEX_APP, build

    serve.run(build(settings), name=CORTEX_APP, route_prefix=None, blocking=False)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        app = serve.status().applications.get(CORTEX_APP)
        if app is not None and str(getattr(app.status, "value", app.status)) == "RUNNING":
            return
        time.sleep(0.5)
    raise DatapunkError("cortex did not come back RUNNING within 120 s after the redeploy")


def run(args: argparse.Namespace, data_dir: Path) -> tuple[list[Row], float, Settings]:
    settings = bench_settings(data_dir, args.batch)
    scale = QUICK_SCALE if args.quick else 1.0
    with console.status("migrating the platform DB, registering the model"):
        asyncio.run(platform.preflight(settings))
        artifact = asyncio.run(register_model(settings, args.hidden))
        token = asyncio.run(create_admin_key(settings))
    compute_ms = full_batch_compute_ms(artifact, args.batch)
    console.print(f"one full batch ({args.batch} rows) computes in {compute_ms:.2f} ms here")
    try:
        with stepper(UP_STEPS, "starting Datapunk") as step:
            result = platform.up(settings, step=step)
        base = result.state.gateway_url
        platform.connect(settings, result.state.gcs_address)  # `up` hands the driver back
        rows = asyncio.run(measure_http(base, token, "batched", scale))
        rows += asyncio.run(measure_handle(scale))
        with console.status("redeploying cortex with max_batch_size 1"):
            redeploy_cortex(bench_settings(data_dir, 1))
        rows += asyncio.run(measure_http(base, token, "unbatched", scale))
    finally:
        platform.disconnect()
        with console.status("stopping Datapunk"):
            platform.down(settings)
    return rows, compute_ms, settings


def results_table(rows: list[Row]) -> Table:
    table = Table(title="Cortex: one-row predictions, one replica")
    for column in ("path", "mode", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right" if column not in ("path", "mode") else "left")
    for row in sorted(rows, key=lambda r: (r.path, r.concurrency, r.mode)):
        table.add_row(
            row.path,
            row.mode,
            str(row.concurrency),
            f"{row.rps:.0f}",
            f"{row.p50:.2f}",
            f"{row.p99:.2f}",
            str(row.errors),
        )
    return table


def _find(rows: list[Row], path: str, mode: str, concurrency: int) -> Row | None:
    return next(
        (r for r in rows if (r.path, r.mode, r.concurrency) == (path, mode, concurrency)), None
    )


def targets(rows: list[Row], compute_ms: float, settings: Settings) -> list[Target]:
    found = []
    for path in ("handle", "http"):
        batched = _find(rows, path, "batched", 64)
        unbatched = _find(rows, path, "unbatched", 64)
        ratio = batched.rps / unbatched.rps if batched and unbatched and unbatched.rps else None
        found.append(Target(f"cortex_batched_vs_unbatched_{path}_c64", ratio, ">=", 5))
    batched = _find(rows, "handle", "batched", 64)
    bound_ms = settings.cortex.batch_wait_timeout_s * 1000 + 2 * compute_ms
    found.append(
        Target(
            "cortex_p99_vs_batch_bound_c64", batched.p99 / bound_ms if batched else None, "<=", 1
        )
    )
    return found


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SCALE:g}x the requests")
    parser.add_argument("--hidden", type=int, default=4096, help="width of each hidden layer")
    parser.add_argument("--batch", type=int, default=64, help="cortex.max_batch_size")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    configure_logging("WARNING")
    import ray.serve  # noqa: F401 - importing installs Serve's INFO logger, turned down here

    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="datapunk-bench-cortex-") as tmp:
        try:
            rows, compute_ms, settings = run(args, Path(tmp))
        except DatapunkError as exc:
            console.print(f"[bold red]benchmark failed:[/] {exc.message}", highlight=False)
            return 2
    console.print(results_table(rows))
    wait_ms = settings.cortex.batch_wait_timeout_s * 1000
    console.print(
        f"p99 bound at concurrency 64: batch wait {wait_ms:g} ms + 2 x {compute_ms:.2f} ms "
        f"(one full batch) = {wait_ms + 2 * compute_ms:.2f} ms"
    )
    lines = [t.line() for t in targets(rows, compute_ms, settings)]
    for line in lines:
        print(line)
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
