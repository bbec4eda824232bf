"""The whole platform as a user runs it: the `datapunk` command in subprocesses.

Ports and the data directory are private to the test run, so a developer's own
running platform is neither used nor disturbed.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
# Outside Ray's default worker-port range (10002-19999) and the developer defaults.
PORTS = {
    "ray": 26500,
    "dashboard": 28365,
    "gateway": 28500,
    "client": 26501,
    "agent": 28366,
    "metrics": 28367,
}


@dataclass(frozen=True)
class Platform:
    env: dict[str, str]
    data_dir: Path
    gateway: str
    up_output: str

    def datapunk(self, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return run([str(BIN / "datapunk"), *args], self.env, timeout)

    def ray_env(self) -> dict[str, str]:
        """The environment a user gets by evaluating the `export` line `up` printed."""
        line = next(x for x in self.up_output.splitlines() if x.startswith("export "))
        env = dict(self.env)
        for pair in shlex.split(line.removeprefix("export ")):
            key, _, value = pair.partition("=")
            env[key] = value
        return env


def run(cmd: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def platform_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATAPUNK_", "RAY_"))}
    env.update(
        DATAPUNK_DATA_DIR=str(data_dir),
        DATAPUNK_RAY__PORT=str(PORTS["ray"]),
        DATAPUNK_RAY__DASHBOARD_PORT=str(PORTS["dashboard"]),
        DATAPUNK_GATEWAY__PORT=str(PORTS["gateway"]),
        DATAPUNK_RAY__CLIENT_SERVER_PORT=str(PORTS["client"]),
        DATAPUNK_RAY__DASHBOARD_AGENT_PORT=str(PORTS["agent"]),
        DATAPUNK_RAY__METRICS_EXPORT_PORT=str(PORTS["metrics"]),
        DATAPUNK_GATEWAY__HAPROXY_STATS_PORT="26404",
        DATAPUNK_GATEWAY__HAPROXY_METRICS_PORT="26405",
        DATAPUNK_GATEWAY__FALLBACK_PROXY_PORT="26450",
        DATAPUNK_GATEWAY__REPLICA_PORT_MIN="45000",
        RAY_USAGE_STATS_ENABLED="0",
        COLUMNS="200",
    )
    return env


PIPELINE = """
name: orders
source:
  type: files
  path: {inbox}/*.csv
  format: csv
expectations:
  - rule: not_null
    column: order_id
    action: quarantine
sink:
  table: e2e_ingest.orders
  mode: append
"""


# One platform for the package. test_platform.py's last test stops it (that `down` leaves
# nothing behind is a test), so every other e2e file must sort before test_platform.py.
@pytest.fixture(scope="package")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("e2e")
    data_dir = root / "data"
    env = platform_env(data_dir)
    pipelines, inbox = root / "pipelines", root / "inbox"
    pipelines.mkdir()
    inbox.mkdir()
    (pipelines / "orders.yaml").write_text(PIPELINE.format(inbox=inbox))
    env["DATAPUNK_PIPELINES_DIR"] = str(pipelines)
    up = run([str(BIN / "datapunk"), "up"], env, timeout=300)
    assert up.returncode == 0, f"datapunk up failed:\n{up.stdout}\n{up.stderr}"
    try:
        yield Platform(env, data_dir, f"http://127.0.0.1:{PORTS['gateway']}", up.stdout)
    finally:
        run([str(BIN / "datapunk"), "down"], env, timeout=120)
