"""One local Ray cluster for the whole test session, with token auth on.

The token lives in a temporary file (never ``~/.ray``), and Serve runs with the same
switches production uses, so what these tests prove is what ``datapunk up`` deploys.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.ray_runtime import serve_env, use_token_auth
from cluster.settings import Settings, load_settings

TEST_NAMESPACE = "datapunk-test"
TEST_GATEWAY_PORT = 28100  # outside Ray's worker-port range 10002-19999
# Serve's own fixed ports, moved so a developer's running platform never meets ours.
TEST_SERVE_PORTS = {
    "haproxy_stats_port": 28404,
    "haproxy_metrics_port": 28405,
    "fallback_proxy_port": 28450,
    "replica_port_min": 43000,
}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    token = tmp_path_factory.mktemp("ray-auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    # The local cluster's processes inherit this process's environment.
    env = {"RAY_USAGE_STATS_ENABLED": "0", **serve_env(load_settings(gateway=TEST_SERVE_PORTS))}
    saved = {key: os.environ.get(key) for key in [*env, "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"]}
    os.environ.update(env)
    use_token_auth(token)
    ray.init(
        num_cpus=2,
        namespace=TEST_NAMESPACE,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        yield
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def ray_settings(ray_cluster: None, data_dir: Path) -> Settings:
    """Settings for one test: its own data dir, the test namespace, one actor per pool."""
    return load_settings(
        data_dir=data_dir,
        ray={"namespace": TEST_NAMESPACE},
        gateway={"port": TEST_GATEWAY_PORT, **TEST_SERVE_PORTS},
    )
