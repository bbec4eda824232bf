"""Autoscaling on Ray's fake multi-node provider, run as a process of its own.

``python -m tests.ray.autoscaling_scenario --port 26390 --marker M`` starts a private Ray
head whose autoscaler launches worker nodes on this machine, places Datapunk Lake pool
actors that need more CPUs than the head has and a Cortex actor that needs a (fake) GPU,
waits for the idle workers to be given back, stops everything it started and prints one
JSON line of observations.

It does what ``ray.cluster_utils.AutoscalingCluster`` does (``RAY_FAKE_CLUSTER=1 ray
start --head --autoscaling-config=...``) without that class, for two reasons: its
``start`` and ``shutdown`` run ``ray stop --force``, which kills every Ray process of
this user (other sessions' clusters, a running ``datapunk up``), and it reads
``fake_multi_node/example.yaml``, which the Ray 2.60 wheel does not ship. Processes are
tracked by ``MARKER_VAR`` instead and stopped with ``stop_head`` (ours only).

A separate process because a head of its own cannot share one interpreter with the
session cluster of tests/ray/conftest.py.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from actors.cortex.actor import CortexActor
from actors.lake.actor import LakeActor
from cluster.ray_runtime import MARKER_VAR, port_open, stop_head, use_token_auth
from cluster.settings import export_settings, load_settings

HEAD_CPUS = 1
WORKER_CPUS = 1
MAX_WORKERS = 3
ACTORS = 3  # one CPU each: the head holds one, the autoscaler must add two workers
GPU_WORKERS = 1  # one Cortex actor asks for a GPU: only a gpu_worker can take it
IDLE_TIMEOUT_MINUTES = 0.1  # 6 s; Ray's own fake-cluster example uses the same
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # small: every fake node's store is /dev/shm
NAMESPACE = "datapunk-autoscaling"


def fake_cluster_config(gcs_address: str) -> dict[str, Any]:
    """A complete fake-provider config (the monitor validates but does not fill defaults).

    The worker type mirrors ray_cluster.yaml's ``cpu_worker``: min 0, a max, an idle
    timeout. ``gcs_address`` matters: without it the provider joins workers to :6379.
    """
    return {
        "cluster_name": "datapunk-fake",
        "max_workers": MAX_WORKERS + GPU_WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": IDLE_TIMEOUT_MINUTES,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "available_node_types": {
            "ray.head.default": {
                "resources": {"CPU": HEAD_CPUS},
                "node_config": {},
                "max_workers": 0,
            },
            "cpu_worker": {
                "resources": {"CPU": WORKER_CPUS, "object_store_memory": OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": MAX_WORKERS,
            },
            # A fake GPU (a resource count, no device), as ray_cluster.yaml's gpu_worker
            # offers. No CPU, so CPU demand never lands here and the counts stay exact.
            "gpu_worker": {
                "resources": {"CPU": 0, "GPU": 1, "object_store_memory": OBJECT_STORE_BYTES},
                "node_config": {},
                "min_workers": 0,
                "max_workers": GPU_WORKERS,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        **{
            key: []
            for key in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },
    }


def start_fake_head(port: int, workdir: Path, token: Path, marker: str) -> None:
    """``ray start --head`` with the fake provider, token auth and ports of its own."""
    busy = [p for p in range(port, port + 4) if port_open("127.0.0.1", p)]
    if busy:
        raise SystemExit(f"ports {busy} are in use; pass another --port")
    config = workdir / "autoscaling.json"
    config.write_text(json.dumps(fake_cluster_config(f"127.0.0.1:{port}")))
    env = dict(os.environ)
    env.update(
        {
            "RAY_FAKE_CLUSTER": "1",
            "AUTOSCALER_UPDATE_INTERVAL_S": "1",
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token),
            MARKER_VAR: marker,
        }
    )
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--ray-client-server-port={port + 1}",
        f"--dashboard-agent-listen-port={port + 2}",
        f"--metrics-export-port={port + 3}",
        "--include-dashboard=false",
        f"--num-cpus={HEAD_CPUS}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        f"--temp-dir={workdir / 'ray'}",  # keeps ray_current_cluster out of /tmp/ray
        f"--autoscaling-config={config}",
        "--disable-usage-stats",
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)


def _alive_nodes() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node["Alive"]}


def _gpus_by_node() -> dict[str, float]:
    return {n["NodeID"]: n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"]}


def _actor_node(handle: Any) -> str:
    info = ray._private.state.actors(actor_id=handle._actor_id.hex())
    return str(info["Address"]["NodeID"])


def _wait(check: Callable[[], bool], timeout_s: float) -> float:
    """Poll ``check`` once a second; return the seconds it took (raise on timeout)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"not reached within {timeout_s} s")
        time.sleep(1.0)
    return round(time.monotonic() - start, 1)


def run_workload(port: int, data_dir: Path) -> dict[str, Any]:
    """Place the actors, record where they ran, release them, wait for scale-down."""
    ray.init(address=f"127.0.0.1:{port}", namespace=NAMESPACE, log_to_driver=False)
    head_node = ray.get_runtime_context().get_node_id()
    before = _alive_nodes()
    values = export_settings(load_settings(data_dir=data_dir, ray={"namespace": NAMESPACE}))
    started = time.monotonic()
    # num_cpus=1 instead of the pool's 0: each actor must own a CPU somewhere.
    actors = [
        LakeActor.options(num_cpus=1, name=f"lake-{i}").remote(values, i)  # type: ignore[attr-defined]
        for i in range(ACTORS)
    ]
    # Cortex serving on a GPU: the pool's actor asking for one, as `cortex.num_gpus` does.
    cortex = CortexActor.options(num_gpus=1, name="cortex-0").remote(values, 0)  # type: ignore[attr-defined]
    # Bounded so a stuck scale-up fails here, inside the test's own subprocess timeout.
    pings = ray.get(
        [a.ping.remote(request_id=f"autoscale-{i}") for i, a in enumerate(actors)], timeout=90
    )
    cortex_ping = ray.get(cortex.ping.remote(request_id="autoscale-gpu"), timeout=30)
    placed_s = round(time.monotonic() - started, 1)
    actor_nodes = [_actor_node(a) for a in actors]
    cortex_node = _actor_node(cortex)
    peak = _gpus_by_node()
    for actor in [*actors, cortex]:
        ray.kill(actor, no_restart=True)
    scale_down_s = _wait(lambda: _alive_nodes() == {head_node}, timeout_s=60)
    return {
        "head_node": head_node,
        "nodes_before": sorted(before),
        "nodes_at_peak": sorted(peak),
        "gpus_at_peak": peak,
        "actor_nodes": actor_nodes,
        "pings": pings,
        "cortex_node": cortex_node,
        "cortex_ping": cortex_ping,
        "placed_s": placed_s,
        "scale_down_s": scale_down_s,
        "nodes_after": sorted(_alive_nodes()),
        "worker_cpus": WORKER_CPUS,
        "head_cpus": HEAD_CPUS,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="GCS port; the next 3 too")
    parser.add_argument("--marker", default=secrets.token_hex(8), help="process marker")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="dp-as-"))  # short: Ray's sockets live below
    token = workdir / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    use_token_auth(token)
    try:
        start_fake_head(args.port, workdir, token, args.marker)
        result = run_workload(args.port, workdir / "data")
    finally:
        ray.shutdown()
        stopped = stop_head(args.marker)
        shutil.rmtree(workdir, ignore_errors=True)
    result["processes_stopped"] = stopped
    print(json.dumps(result))


if __name__ == "__main__":
    main()
