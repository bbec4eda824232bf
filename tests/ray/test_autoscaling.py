"""The autoscaler adds worker nodes for Datapunk actors and gives them back when idle.

CPU demand (Lake pool actors) scales a CPU worker type; a GPU request (a Cortex actor)
scales a GPU worker type whose GPU is a resource count: no device is involved.

Ray's fake multi-node provider launches real raylets on this machine; the scenario runs
in its own process (tests/ray/autoscaling_scenario.py) because its head cannot share an
interpreter with the session cluster. What a real cloud adds (instances, SSH, setup
commands) is not exercised here; tests/unit/test_ray_cluster_config.py checks that part
of ray_cluster.yaml against Ray's validator.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.ray_runtime import marked_processes, stop_head
from tests.ray import autoscaling_scenario as scenario

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
# GCS port (and the next three): away from Redis (6379), `datapunk up` (6390, 8265,
# 8266, 10001, 52365), Ray's worker ports (10002-19999) and the session cluster's Serve
# ports (28100-28450, 43000+).
SCENARIO_PORT = 26390


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    marker = secrets.token_hex(8)
    token_file = Path.home() / ".ray" / "auth_token"
    token_existed = token_file.exists()
    # Nothing of a caller's cluster may steer the scenario's own head and driver.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    command = [sys.executable, "-m", "tests.ray.autoscaling_scenario"]
    command += ["--port", str(SCENARIO_PORT), "--marker", marker]
    try:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,  # the scenario bounds each wait itself; this is the backstop
        )
    finally:
        stop_head(marker)  # whatever a killed or failed run left behind
    leftovers = marked_processes(marker)
    assert not leftovers, f"processes left running: {[p.pid for p in leftovers]}"
    assert token_existed or not token_file.exists(), "the scenario created ~/.ray/auth_token"
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(loaded, dict)
    return loaded


def test_the_cluster_starts_with_the_head_alone(result: dict[str, Any]) -> None:
    assert result["nodes_before"] == [result["head_node"]]


def test_the_autoscaler_adds_workers_for_a_load_beyond_the_head(result: dict[str, Any]) -> None:
    head = result["head_node"]
    gpus = result["gpus_at_peak"]
    cpu_workers = {node for node in result["nodes_at_peak"] if node != head and gpus[node] == 0}
    # ACTORS one-CPU actors against a head of HEAD_CPUS: the rest needs new nodes.
    needed = (scenario.ACTORS - scenario.HEAD_CPUS) // scenario.WORKER_CPUS
    assert needed <= len(cpu_workers) <= scenario.MAX_WORKERS


def test_datapunk_lake_actors_run_on_the_new_workers(result: dict[str, Any]) -> None:
    head = result["head_node"]
    workers = set(result["nodes_at_peak"]) - {head}
    on_workers = [node for node in result["actor_nodes"] if node != head]
    assert len(on_workers) >= scenario.ACTORS - scenario.HEAD_CPUS
    assert set(on_workers) <= workers
    assert [p["service"] for p in result["pings"]] == ["lake"] * scenario.ACTORS
    assert [p["index"] for p in result["pings"]] == list(range(scenario.ACTORS))
    assert all(p["status"] == "ok" for p in result["pings"])
    assert len({p["pid"] for p in result["pings"]}) == scenario.ACTORS


def test_a_gpu_request_scales_the_gpu_worker_type_for_cortex(result: dict[str, Any]) -> None:
    gpus = result["gpus_at_peak"]
    cortex_node = result["cortex_node"]
    assert cortex_node != result["head_node"]
    assert gpus[cortex_node] >= 1
    gpu_nodes = [node for node, count in gpus.items() if count > 0]
    assert len(gpu_nodes) == scenario.GPU_WORKERS
    # CPU demand was met by cpu_worker nodes, not by the GPU node.
    assert all(gpus[node] == 0 for node in result["actor_nodes"])
    assert result["cortex_ping"]["service"] == "cortex"
    assert result["cortex_ping"]["status"] == "ok"


def test_idle_workers_are_removed_after_the_idle_timeout(result: dict[str, Any]) -> None:
    assert result["nodes_after"] == [result["head_node"]]
    # Not before the idle timeout has passed (seconds, polled once a second).
    assert result["scale_down_s"] >= scenario.IDLE_TIMEOUT_MINUTES * 60 - 1
    assert result["processes_stopped"] > 0
