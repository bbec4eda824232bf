"""Load generator of ``bench/gateway.py``, run in its own process.

Sends ``--requests`` GETs to ``--url`` from ``--concurrency`` workers, each worker on
its own keep-alive connection, after ``--warmup`` untimed requests on the same
connections. Prints one JSON object: requests, errors, the first error, req/s, p50 and
p99 latency in ms. The API key comes from ``$DATAPUNK_BENCH_TOKEN`` (not argv, which
``ps`` shows to everyone).

With ``--wait-go`` it prints ``ready`` after the warm-up and waits for a line on
stdin, so the parent can snapshot server CPU times around the timed part only.

Without arguments it does nothing and exits 0 (``make bench`` runs every bench/*.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

TOKEN_ENV = "DATAPUNK_BENCH_TOKEN"
CLIENTS = ("aiohttp", "httpx")
REQUEST_TIMEOUT_S = 10.0
Fetch = Callable[[], Awaitable[tuple[int, bytes]]]


@dataclass
class Tally:
    """Latencies (seconds) of the 200s; count and first sample of everything else."""

    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    first_error: str | None = None

    def fail(self, what: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = what


class Budget:
    """Requests left to send, shared by the workers of one event loop."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


@asynccontextmanager
async def aiohttp_fetchers(url: str, headers: dict[str, str], n: int) -> AsyncIterator[list[Fetch]]:
    """One session with exactly one keep-alive connection per worker."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    sessions = [
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=1), headers=headers, timeout=timeout
        )
        for _ in range(n)
    ]

    def fetcher(session: aiohttp.ClientSession) -> Fetch:
        async def fetch() -> tuple[int, bytes]:
            async with session.get(url) as reply:
                return reply.status, await reply.read()

        return fetch

    try:
        yield [fetcher(session) for session in sessions]
    finally:
        await asyncio.gather(*(session.close() for session in sessions))


@asynccontextmanager
async def httpx_fetchers(url: str, headers: dict[str, str], n: int) -> AsyncIterator[list[Fetch]]:
    """One client with exactly one keep-alive connection per worker."""
    import httpx

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [
        httpx.AsyncClient(headers=headers, limits=limits, timeout=REQUEST_TIMEOUT_S)
        for _ in range(n)
    ]

    def fetcher(client: httpx.AsyncClient) -> Fetch:
        async def fetch() -> tuple[int, bytes]:
            reply = await client.get(url)
            return reply.status_code, reply.content

        return fetch

    try:
        yield [fetcher(client) for client in clients]
    finally:
        await asyncio.gather(*(client.aclose() for client in clients))


async def _worker(fetch: Fetch, budget: Budget, tally: Tally) -> None:
    while budget.take():
        started = time.perf_counter()
        try:
            status, body = await fetch()
        except Exception as exc:  # every failure is a data point, not a crash
            tally.fail(f"{type(exc).__name__}: {exc}")
            continue
        if status == 200:
            tally.latencies.append(time.perf_counter() - started)
        else:
            tally.fail(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")


async def run_phase(fetchers: list[Fetch], requests: int) -> tuple[Tally, float]:
    """Send ``requests`` GETs over all fetchers at once; return the tally and wall time."""
    budget, tally = Budget(requests), Tally()
    started = time.perf_counter()
    await asyncio.gather(*(_worker(fetch, budget, tally) for fetch in fetchers))
    return tally, time.perf_counter() - started


def summary(args: argparse.Namespace, tally: Tally, elapsed: float, warm: Tally) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    return {
        "client": args.client,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "ok": len(latencies),
        "errors": tally.errors,
        "first_error": tally.first_error,
        "warmup_errors": warm.errors,
        "warmup_first_error": warm.first_error,
        "elapsed_s": elapsed,
        "rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def _wait_for_go() -> None:
    print("ready", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    if not line:
        raise SystemExit("parent went away before the timed run")


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {os.environ.get(TOKEN_ENV, '')}"}
    pool = aiohttp_fetchers if args.client == "aiohttp" else httpx_fetchers
    async with pool(args.url, headers, args.concurrency) as fetchers:
        warm, _ = await run_phase(fetchers, args.warmup)
        if args.wait_go:
            await _wait_for_go()
        tally, elapsed = await run_phase(fetchers, args.requests)
    return summary(args, tally, elapsed, warm)


def _run(coro: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """On uvloop when installed (uvicorn[standard] brings it): a cheaper client."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", "-c", type=int, required=True)
    parser.add_argument("--requests", "-n", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--client", choices=CLIENTS, default="aiohttp")
    parser.add_argument("--wait-go", action="store_true", help="handshake with the parent")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    if not argv:
        print("bench/_loadgen.py: helper of bench/gateway.py; nothing to do on its own")
        return 0
    args = _parse(argv)
    print(json.dumps(_run(measure(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
