"""ray_cluster.yaml passes Ray's own cluster-config validation and matches Datapunk's settings.

``ray up`` runs ``prepare_config`` (fill in the provider's defaults, merge setup commands,
per-type worker bounds) and then ``validate_config`` (Ray's JSON schema plus its own
checks) before it talks to the cloud; both run here, with no cluster and no cloud SDK.
"""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from cluster.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PATH = ROOT / "ray_cluster.yaml"
TOKEN_MOUNT = "/opt/datapunk-data/ray/auth_token"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    loaded = yaml.safe_load(CONFIG_PATH.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(scope="module")
def head_settings() -> Settings:
    """What `datapunk up` on the head reads: the repo's YAML and the cluster data dir."""
    return load_settings(ROOT / "configs" / "datapunk.yaml", data_dir=TOKEN_MOUNT.rsplit("/", 2)[0])


def _commands(config: dict[str, Any]) -> list[str]:
    keys = ("setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    found = [cmd for key in keys for cmd in config[key]]
    for node_type in config["available_node_types"].values():
        found += node_type.get("worker_setup_commands", [])
    return found


def _ray_start(commands: list[str]) -> str:
    (start,) = [cmd for cmd in commands if "ray start" in cmd]
    return start


def _flag(command: str, name: str) -> str:
    match = re.search(rf"--{name}=(\S+)", command)
    assert match, f"{name} missing from {command!r}"
    return match.group(1)


def test_ray_accepts_the_config(prepared: dict[str, Any]) -> None:
    # The fixture ran Ray's validator; the prepared config is what `ray up` would use.
    assert prepared["head_node_type"] == "head"
    assert prepared["provider"]["type"] == "aws"
    assert "cluster_synced_files" in prepared  # filled in from Ray's AWS defaults


def test_ray_validator_rejects_a_broken_copy(raw: dict[str, Any]) -> None:
    """The check above has teeth: the same validator refuses a misspelt node-type key."""
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["cpu_worker"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        validate_config(prepare_config(broken))


def test_node_types_scale_from_zero_within_the_global_cap(prepared: dict[str, Any]) -> None:
    types = prepared["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"}
    assert types["head"]["max_workers"] == 0
    assert types["head"]["resources"].get("GPU", 0) == 0
    for name in ("cpu_worker", "gpu_worker"):
        assert types[name]["min_workers"] == 0
        assert types[name]["max_workers"] >= 1
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["cpu_worker"]["resources"].get("GPU", 0) == 0
    assert sum(t["max_workers"] for t in types.values()) <= prepared["max_workers"]
    assert prepared["idle_timeout_minutes"] > 0


def test_cpu_nodes_pin_the_cpu_torch_wheel_and_gpu_nodes_the_cuda_one(
    prepared: dict[str, Any],
) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (torch_pin,) = [dep for dep in project["dependencies"] if dep.startswith("torch")]
    cpu = prepared["setup_commands"]
    gpu = prepared["available_node_types"]["gpu_worker"]["worker_setup_commands"]
    (cpu_torch,) = [cmd for cmd in cpu if torch_pin in cmd]
    (gpu_torch,) = [cmd for cmd in gpu if torch_pin in cmd]
    assert "download.pytorch.org/whl/cpu" in cpu_torch
    assert "whl/cpu" not in gpu_torch
    for commands, torch in ((cpu, cpu_torch), (gpu, gpu_torch)):
        # torch goes in before Datapunk, so Datapunk's own pin finds it satisfied.
        (install,) = [cmd for cmd in commands if cmd.endswith("install -q /opt/datapunk")]
        assert commands.index(torch) < commands.index(install)


def test_head_uses_the_settings_ports_and_runs_the_autoscaler(
    prepared: dict[str, Any], head_settings: Settings
) -> None:
    head = prepared["head_start_ray_commands"]
    start = _ray_start(head)
    ray = head_settings.ray
    assert _flag(start, "port") == str(ray.port) != "6379"
    assert _flag(start, "dashboard-port") == str(ray.dashboard_port)
    assert _flag(start, "dashboard-host") == ray.dashboard_host
    assert _flag(start, "ray-client-server-port") == str(ray.client_server_port)
    assert _flag(start, "dashboard-agent-listen-port") == str(ray.dashboard_agent_port)
    assert _flag(start, "metrics-export-port") == str(ray.metrics_export_port)
    # Without it the head's monitor never launches a worker (Ray warns at `ray up`).
    assert _flag(start, "autoscaling-config") == "~/ray_bootstrap_config.yaml"
    (up,) = [cmd for cmd in head if cmd.endswith("datapunk up")]
    assert f"DATAPUNK_RAY__ADDRESS=$(hostname -I | awk '{{print $1}}'):{ray.port}" in up


def test_every_node_speaks_token_auth_with_the_mounted_token(
    prepared: dict[str, Any], head_settings: Settings
) -> None:
    assert prepared["file_mounts"][TOKEN_MOUNT].startswith("~/")
    # `datapunk up` on the head connects with the token under its data dir: the same file.
    assert str(head_settings.ray_token_path) == TOKEN_MOUNT
    worker = _ray_start(prepared["worker_start_ray_commands"])
    head = _ray_start(prepared["head_start_ray_commands"])
    for start in (head, worker):
        assert "RAY_AUTH_MODE=token" in start
        assert f"RAY_AUTH_TOKEN_PATH={TOKEN_MOUNT}" in start
    assert _flag(worker, "address") == f"$RAY_HEAD_IP:{head_settings.ray.port}"


def test_ray_start_flags_exist_in_this_ray(prepared: dict[str, Any]) -> None:
    """A misspelt flag would only fail on the node, after the instance was paid for."""
    from ray.scripts.scripts import start

    known = {opt for param in start.params for opt in param.opts}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        used = set(re.findall(r"(--[a-z-]+)", _ray_start(prepared[key])))
        assert used <= known, f"{key}: unknown flags {sorted(used - known)}"


def test_every_command_is_valid_shell(raw: dict[str, Any]) -> None:
    bad = {}
    for command in _commands(raw):
        checked = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        if checked.returncode != 0:
            bad[shlex.quote(command)] = checked.stderr
    assert not bad
