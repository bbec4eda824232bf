"""Start, find and stop the local Ray head that ``datapunk up`` owns.

The head is started with ``ray start`` from this interpreter's environment, so
``ray job submit`` later runs the project's ``python``. Token authentication is always
on: the token lives in the data directory (mode 0600) and reaches Ray's processes and
CLI through ``RAY_AUTH_TOKEN_PATH``. Every process of the head carries a marker
variable, which lets ``datapunk down`` stop exactly its own processes and no others.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from cluster.errors import PlatformStateError, ServiceUnavailableError
from cluster.ray_exposure import check_ray_exposure
from cluster.settings import Settings

logger = logging.getLogger(__name__)
MARKER_VAR = "DATAPUNK_CLUSTER_MARKER"


@dataclass(frozen=True)
class HeadAddresses:
    gcs_address: str
    dashboard_url: str


def ensure_token(path: Path) -> str:
    """Return the Ray auth token at ``path``, creating it (0600) when missing.

    A token file readable by others is tightened to 0600 rather than trusted as is.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("tightening Ray token permissions", extra={"path": str(path)})
        path.chmod(0o600)
    return path.read_text().strip()


def use_token_auth(token_path: Path) -> None:
    """Make this process speak token auth with the token at ``token_path``.

    Ray reads its auth mode and token when it is first imported; if something imported
    it before, refresh that cached config the way Ray's own token setup does.
    """
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    if "ray" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def head_addresses(settings: Settings) -> HeadAddresses:
    host = settings.ray.node_ip_address
    return HeadAddresses(
        gcs_address=f"{host}:{settings.ray.port}",
        dashboard_url=f"http://{settings.ray.dashboard_host}:{settings.ray.dashboard_port}",
    )


def temp_dir(settings: Settings) -> Path:
    """Ray's session directory root; short, because Ray's unix sockets live below it."""
    return Path(tempfile.gettempdir()) / f"datapunk-{settings.ray.port}"


def ray_env(settings: Settings, marker: str | None = None) -> dict[str, str]:
    """Environment for Ray processes and Ray's CLI: auth on, no usage stats, our python."""
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(settings.ray_token_path)
    # Jobs start in an uploaded working dir: a relative data dir would point elsewhere.
    env["DATAPUNK_DATA_DIR"] = str(settings.data_path)
    env.update(serve_env(settings))
    if marker:
        env[MARKER_VAR] = marker
    return env


def serve_env(settings: Settings) -> dict[str, str]:
    """Serve's process-level switches and ports; the controller reads them when it starts."""
    gateway = settings.gateway
    flags = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": gateway.throughput_optimized,
        "RAY_SERVE_ENABLE_HA_PROXY": gateway.ha_proxy,
        "RAY_SERVE_HAPROXY_METRICS_ENABLED": gateway.haproxy_metrics,
    }
    env = {name: "1" if on else "0" for name, on in flags.items()}
    low = gateway.replica_port_min
    ports = {
        "RAY_SERVE_HAPROXY_STATS_PORT": gateway.haproxy_stats_port,
        "RAY_SERVE_HAPROXY_METRICS_PORT": gateway.haproxy_metrics_port,
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": gateway.fallback_proxy_port,
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": gateway.fallback_proxy_port + 1000,
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": low,
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": low + 999,
        "RAY_SERVE_DIRECT_INGRESS_MIN_GRPC_PORT": low + 10000,
        "RAY_SERVE_DIRECT_INGRESS_MAX_GRPC_PORT": low + 10999,
    }
    env.update({name: str(port) for name, port in ports.items()})
    return env


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _busy_ports(settings: Settings) -> list[str]:
    wanted = {
        "ray.port": (settings.ray.node_ip_address, settings.ray.port),
        "ray.dashboard_port": (settings.ray.dashboard_host, settings.ray.dashboard_port),
        "gateway.port": (settings.gateway.host, settings.gateway.port),
        "ray.client_server_port": (settings.ray.node_ip_address, settings.ray.client_server_port),
        "ray.dashboard_agent_port": (
            settings.ray.node_ip_address,
            settings.ray.dashboard_agent_port,
        ),
    }
    return [f"{key}={port}" for key, (host, port) in wanted.items() if port_open(host, port)]


def start_head(settings: Settings, marker: str) -> HeadAddresses:
    """Run ``ray start --head`` bound to loopback with token auth; raise on failure."""
    busy = _busy_ports(settings)
    if busy:
        raise PlatformStateError(
            f"ports already in use: {', '.join(busy)}; stop what holds them or choose "
            "other ports (e.g. DATAPUNK_RAY__PORT, DATAPUNK_GATEWAY__PORT)"
        )
    ensure_token(settings.ray_token_path)
    cmd = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        f"--node-ip-address={settings.ray.node_ip_address}",
        f"--port={settings.ray.port}",
        f"--dashboard-host={settings.ray.dashboard_host}",
        f"--dashboard-port={settings.ray.dashboard_port}",
        f"--ray-client-server-port={settings.ray.client_server_port}",
        f"--dashboard-agent-listen-port={settings.ray.dashboard_agent_port}",
        f"--metrics-export-port={settings.ray.metrics_export_port}",
        f"--temp-dir={temp_dir(settings)}",
        "--disable-usage-stats",
    ]
    if settings.ray.num_cpus is not None:
        cmd.append(f"--num-cpus={settings.ray.num_cpus}")
    env = ray_env(settings, marker)
    check_ray_exposure(settings, env)  # no dashboard beyond loopback without a token
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ServiceUnavailableError(
            service="Ray head",
            target=head_addresses(settings).gcs_address,
            reason=f"`ray start` exited {proc.returncode}: {last[0]}",
            fix=f"read {temp_dir(settings)}/session_latest/logs, then `datapunk down`",
        )
    return head_addresses(settings)


def marked_processes(marker: str) -> list[psutil.Process]:
    """Every live process whose environment carries our marker (and their children)."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(MARKER_VAR) == marker:
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    found.pop(os.getpid(), None)
    return list(found.values())


def terminate(processes: Iterable[psutil.Process], grace_s: float = 10.0) -> int:
    """SIGTERM, wait up to ``grace_s``, then SIGKILL what is left; return how many ended."""
    procs = list(processes)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=5)
    return len(procs)


def stop_head(marker: str, grace_s: float = 10.0) -> int:
    """Stop every process of the head that carries ``marker``; return the count."""
    deadline = time.monotonic() + grace_s + 10
    total = 0
    # Workers can be forked while we terminate; sweep until nothing marked is left.
    while time.monotonic() < deadline:
        procs = marked_processes(marker)
        if not procs:
            break
        total += terminate(procs, grace_s)
    return total


@contextmanager
def private_local_cluster(
    *, num_cpus: int, namespace: str, env: Mapping[str, str] | None = None
) -> Iterator[None]:
    """A throwaway local Ray cluster (tests, benchmarks): token auth on with a token of its
    own in a temporary file, usage stats off, loopback only; environment restored after.

    ``env`` goes to this process's environment first, so the cluster's processes inherit
    it (Serve's port settings, for one).
    """
    import ray

    extra = {"RAY_USAGE_STATS_ENABLED": "0", **(env or {})}
    keys = [*extra, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"]
    saved = {key: os.environ.get(key) for key in keys}
    with tempfile.TemporaryDirectory(prefix="datapunk-ray-auth-") as tmp:
        token = Path(tmp) / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        os.environ.update(extra)
        use_token_auth(token)
        ray.init(
            num_cpus=num_cpus,
            namespace=namespace,
            include_dashboard=False,
            log_to_driver=False,
            _node_ip_address="127.0.0.1",
        )
        try:
            yield
        finally:
            ray.shutdown()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
