"""One local Ray cluster for the whole test session, with token auth on.

The token lives in a temporary file (never ``~/.ray``), and Serve runs with the same
switches production uses, so what these tests prove is what ``datapunk up`` deploys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.ray_runtime import private_local_cluster, serve_env
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
def ray_cluster() -> Iterator[None]:
    env = serve_env(load_settings(gateway=TEST_SERVE_PORTS))
    # A deleted app's direct-ingress replicas wait 30 s for a load balancer to notice them
    # draining; no balancer stands in front of the tests, and each test deletes its apps.
    env["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] = "1"
    with private_local_cluster(num_cpus=2, namespace=TEST_NAMESPACE, env=env):
        try:
            yield
        finally:
            from ray import serve

            serve.shutdown()


@pytest.fixture
def ray_settings(ray_cluster: None, data_dir: Path) -> Settings:
    """Settings for one test: its own data dir, the test namespace, one actor per pool."""
    return load_settings(
        data_dir=data_dir,
        ray={"namespace": TEST_NAMESPACE},
        gateway={"port": TEST_GATEWAY_PORT, **TEST_SERVE_PORTS},
    )
