"""The local head's pure parts: token, environment, addresses, and stopping marked processes."""

from __future__ import annotations

import logging
import os
import re
import socket
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster import ray_runtime
from cluster.errors import PlatformStateError, ServiceUnavailableError
from cluster.ray_runtime import (
    MARKER_VAR,
    ensure_token,
    head_addresses,
    marked_processes,
    ray_env,
    serve_env,
    start_head,
    stop_head,
    temp_dir,
    terminate,
)
from cluster.settings import Settings


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(
        data_dir=data_dir,
        ray={
            "port": free_port(),
            "dashboard_port": free_port(),
            # Busy-port checks cover these too: defaults would meet any other Ray head.
            "client_server_port": free_port(),
            "dashboard_agent_port": free_port(),
        },
        gateway={"port": free_port()},
    )


# --- token -------------------------------------------------------------------------------


def test_ensure_token_creates_a_private_random_token(tmp_path: Path) -> None:
    path = tmp_path / "ray" / "auth_token"
    token = ensure_token(path)
    assert re.fullmatch(r"[0-9a-f]{64}", token)
    assert path.read_text() == token
    assert mode_of(path) == 0o600
    assert mode_of(path.parent) & 0o077 == 0
    assert ensure_token(tmp_path / "other" / "auth_token") != token


def test_ensure_token_keeps_an_existing_token(tmp_path: Path) -> None:
    path = tmp_path / "auth_token"
    first = ensure_token(path)
    assert ensure_token(path) == first
    path.write_text("a" * 64 + "\n")
    assert ensure_token(path) == "a" * 64


def test_ensure_token_tightens_a_readable_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "auth_token"
    path.write_text("b" * 64)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="cluster.ray_runtime"):
        assert ensure_token(path) == "b" * 64
    assert mode_of(path) == 0o600
    assert any("tightening" in r.getMessage() for r in caplog.records)


# --- environment and addresses -----------------------------------------------------------


def test_ray_env_turns_auth_on_and_stats_off(settings: Settings) -> None:
    env = ray_env(settings, marker="m-123")
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == str(settings.ray_token_path)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert env[MARKER_VAR] == "m-123"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"


def test_ray_env_without_marker_and_without_touching_os_environ(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOME_USER_VAR", "kept")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = ray_env(settings)
    assert MARKER_VAR not in env
    assert env["SOME_USER_VAR"] == "kept"
    assert env["RAY_AUTH_MODE"] == "token"
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


@pytest.mark.parametrize(
    ("throughput", "ha_proxy", "expected"),
    [(True, True, ("1", "1")), (False, True, ("0", "1")), (True, False, ("1", "0"))],
)
def test_serve_env_reflects_settings(
    data_dir: Path, throughput: bool, ha_proxy: bool, expected: tuple[str, str]
) -> None:
    settings = Settings(
        data_dir=data_dir, gateway={"throughput_optimized": throughput, "ha_proxy": ha_proxy}
    )
    env = serve_env(settings)
    assert (env["RAY_SERVE_THROUGHPUT_OPTIMIZED"], env["RAY_SERVE_ENABLE_HA_PROXY"]) == expected
    assert ray_env(settings)["RAY_SERVE_ENABLE_HA_PROXY"] == expected[1]


def test_head_addresses_and_temp_dir(data_dir: Path) -> None:
    settings = Settings(
        data_dir=data_dir,
        ray={"port": 16501, "node_ip_address": "10.0.0.5", "dashboard_port": 18265},
    )
    addresses = head_addresses(settings)
    assert addresses.gcs_address == "10.0.0.5:16501"
    assert addresses.dashboard_url == "http://127.0.0.1:18265"
    assert temp_dir(settings).name == "datapunk-16501"
    # Ray's unix sockets live below it; AF_UNIX paths are limited to ~107 bytes.
    assert len(str(temp_dir(settings))) < 40


# --- start_head --------------------------------------------------------------------------


@pytest.fixture
def no_ray_start(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Replace `ray start` with a recorder that fails, so no test starts a real head."""
    calls: list[dict[str, Any]] = []

    def fake_run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append({"cmd": cmd, **kwargs})
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="noise\nport clash")

    monkeypatch.setattr(ray_runtime.subprocess, "run", fake_run)
    return calls


@pytest.mark.parametrize("key", ["gateway.port", "ray.port", "ray.dashboard_port"])
def test_start_head_refuses_a_busy_port(
    settings: Settings, no_ray_start: list[dict[str, Any]], key: str
) -> None:
    group, field = key.split(".")
    port = getattr(getattr(settings, group), field)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(PlatformStateError) as info:
            start_head(settings, marker="m")
    assert f"{key}={port}" in info.value.message
    assert "DATAPUNK_" in info.value.message
    assert no_ray_start == []
    assert not settings.ray_token_path.exists()


def test_start_head_failure_names_the_last_line_and_the_logs(
    settings: Settings, no_ray_start: list[dict[str, Any]]
) -> None:
    with pytest.raises(ServiceUnavailableError) as info:
        start_head(settings, marker="m-1")
    message = info.value.message
    assert f"Ray head at 127.0.0.1:{settings.ray.port}" in message
    assert "exited 1: port clash" in message
    assert str(temp_dir(settings)) in message
    [call] = no_ray_start
    assert "--head" in call["cmd"]
    assert f"--port={settings.ray.port}" in call["cmd"]
    assert "--node-ip-address=127.0.0.1" in call["cmd"]
    assert call["env"][MARKER_VAR] == "m-1"
    assert call["env"]["RAY_AUTH_MODE"] == "token"
    assert mode_of(settings.ray_token_path) == 0o600  # the token exists before Ray starts


# --- marked processes --------------------------------------------------------------------


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_for(marker: str, count: int, timeout_s: float = 10.0) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = marked_processes(marker)
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"expected {count} processes with marker {marker}")


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; whatever is left is killed and reaped afterwards."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for popen in procs:
        try:
            for child in psutil.Process(popen.pid).children(recursive=True):
                child.kill()
        except psutil.NoSuchProcess:
            pass
        popen.kill()
        popen.wait(timeout=10)


def _spawn(
    spawned: list[subprocess.Popen[bytes]], script: str, marker: str | None
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != MARKER_VAR}
    if marker is not None:
        env[MARKER_VAR] = marker
    popen = subprocess.Popen(["bash", "-c", script], env=env)
    spawned.append(popen)
    return popen


def _unmarked_child(parent: subprocess.Popen[bytes], timeout_s: float = 10.0) -> psutil.Process:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for child in psutil.Process(parent.pid).children(recursive=True):
            try:
                if child.name() == "sleep" and MARKER_VAR not in child.environ():
                    return child
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.02)
    raise AssertionError("the unmarked child sleep did not start")


def test_stop_head_ends_the_marked_tree_and_nothing_else(
    spawned: list[subprocess.Popen[bytes]],
) -> None:
    marker = uuid.uuid4().hex
    # The first sleep drops the marker, as a process may clear its environment; it is
    # still stopped, being a child of a marked process.
    marked = _spawn(spawned, f"env -u {MARKER_VAR} sleep 60 & sleep 60", marker)
    unmarked = _spawn(spawned, "sleep 60", None)
    orphan_to_be = _unmarked_child(marked)
    tree = _wait_for(marker, 2)
    assert {marked.pid, orphan_to_be.pid} <= {p.pid for p in tree}
    assert unmarked.pid not in {p.pid for p in tree}
    assert os.getpid() not in {p.pid for p in tree}

    assert stop_head(marker, grace_s=5) >= 2
    marked.wait(timeout=10)
    assert not any(_alive(p) for p in tree)
    assert not _alive(orphan_to_be)
    assert marked_processes(marker) == []
    assert unmarked.poll() is None  # the unmarked sleep is left alone
    assert stop_head(marker, grace_s=1) == 0


def test_terminate_kills_what_ignores_sigterm(spawned: list[subprocess.Popen[bytes]]) -> None:
    marker = uuid.uuid4().hex
    stubborn = _spawn(spawned, "trap '' TERM; sleep 60 & sleep 60", marker)
    procs = _wait_for(marker, 2)
    started = time.monotonic()
    assert terminate(procs, grace_s=0.3) == len(procs)
    assert time.monotonic() - started < 8
    stubborn.wait(timeout=10)
    assert not any(_alive(p) for p in procs)


def test_marked_processes_never_include_the_caller() -> None:
    """`datapunk down` run from inside the marked cluster (a job) must not stop itself."""
    marker = uuid.uuid4().hex
    code = (
        "import os, sys\n"
        "from cluster.ray_runtime import marked_processes\n"
        "pids = {p.pid for p in marked_processes(sys.argv[1])}\n"
        "print(os.getpid() in pids)\n"
    )
    env = {**os.environ, MARKER_VAR: marker}
    done = subprocess.run(
        [sys.executable, "-c", code, marker],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
