"""One measurement of ``bench/gateway.py``: the load generator and the server CPU it costs.

The load generator (``_loadgen.py``) runs in its own process; it warms up, says
``ready``, and starts the timed run when told, so the CPU times of the server's
processes are read around exactly the timed requests.

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

LOADGEN = Path(__file__).resolve().with_name("_loadgen.py")
TOKEN_ENV = "DATAPUNK_BENCH_TOKEN"  # read by _loadgen.py
LOADGEN_TIMEOUT_S = 600.0
CpuSnapshot = dict[int, tuple[str, float]]  # pid -> (label, user + system CPU seconds)


class BenchError(Exception):
    """The benchmark itself could not run (as opposed to a slow result)."""


@dataclass(frozen=True)
class Target:
    """A server under load: its name, URL and the processes whose CPU it spends."""

    name: str
    url: str
    processes: Callable[[], list[psutil.Process]]
    serve: bool


@dataclass(frozen=True)
class Load:
    concurrency: int
    requests: int
    warmup: int
    client: str


def process_label(proc: psutil.Process) -> str:
    """``ray::ServeReplica:...`` for Ray workers, the script for Python, else the binary."""
    args = proc.cmdline() or [proc.name()]
    if args[0].startswith("ray::"):
        return args[0].split()[0]
    name = Path(args[0]).name
    if name.startswith("python"):
        rest = [a for a in args[1:] if not a.startswith("-")]
        return f"python {Path(rest[0]).name}" if rest else name
    return name


def cpu_snapshot(processes: list[psutil.Process]) -> CpuSnapshot:
    snapshot: CpuSnapshot = {}
    for proc in processes:
        try:
            times = proc.cpu_times()
            snapshot[proc.pid] = (process_label(proc), times.user + times.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return snapshot


def cpu_spent(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds spent between two snapshots, summed per process label."""
    spent: dict[str, float] = {}
    for pid, (label, seconds) in after.items():
        base = before.get(pid, (label, 0.0))[1]
        spent[label] = spent.get(label, 0.0) + seconds - base
    return spent


def loadgen_cmd(url: str, load: Load) -> list[str]:
    return [
        sys.executable,
        str(LOADGEN),
        f"--url={url}",
        f"--concurrency={load.concurrency}",
        f"--requests={load.requests}",
        f"--warmup={load.warmup}",
        f"--client={load.client}",
        "--wait-go",
    ]


def _expect_ready(proc: subprocess.Popen[str]) -> None:
    stdout: IO[str] | None = proc.stdout
    line = stdout.readline() if stdout else ""
    if line.strip() != "ready":
        _, err = proc.communicate(timeout=30)
        raise BenchError(f"load generator failed before the timed run: {line}{err[-2000:]}")


def run_loadgen(target: Target, load: Load, token: str) -> tuple[dict[str, Any], dict[str, float]]:
    """Warm up, then the timed run; the generator's summary and server CPU s per process."""
    proc = subprocess.Popen(
        loadgen_cmd(target.url, load),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, TOKEN_ENV: token},
    )
    try:
        _expect_ready(proc)
        processes = target.processes()
        before = cpu_snapshot(processes)
        out, err = proc.communicate("go\n", timeout=LOADGEN_TIMEOUT_S)
        spent = cpu_spent(before, cpu_snapshot(processes))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise BenchError(f"load generator exited {proc.returncode}: {err[-2000:]}")
    summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return summary, spent
