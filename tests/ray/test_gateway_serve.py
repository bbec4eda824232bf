"""The gateway as Serve runs it: real HTTP through HAProxy and straight at the replica.

These prove that authentication, the error body and the request id survive Serve's
ingress path, and that a replica's own direct-ingress port is no way around the keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import psutil
import pytest
import ray

from cluster.pools import actor_name, start_pools
from cluster.settings import Settings
from serve_apps.gateway import build
from tests.ray.conftest import TEST_SERVE_PORTS
from tests.ray.serve_support import bearer, create_keys, deployed_apps, serve_settings

APP_NAME = "gateway-test"


@dataclass(frozen=True)
class Deployed:
    settings: Settings
    base_url: str
    admin_key: str
    analyst_key: str


@pytest.fixture(scope="module")
def deployed(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    settings = serve_settings(tmp_path_factory.mktemp("gateway"), gateway={"auth_cache_ttl_s": 0.5})
    admin, analyst = asyncio.run(
        create_keys(settings, ("admin", "test admin"), ("analyst", "test analyst"))
    )
    with deployed_apps(settings, [(APP_NAME, build, "/")]) as base:
        yield Deployed(settings, base, admin, analyst)


def test_authenticated_call_succeeds_and_names_the_caller(deployed: Deployed) -> None:
    reply = httpx.get(f"{deployed.base_url}/api/v1/whoami", headers=bearer(deployed.admin_key))
    assert reply.status_code == 200
    assert reply.json()["role"] == "admin"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer dp_wrong"}, {"X-API-Key": "nope"}, {"Authorization": "Basic x"}],
)
def test_missing_or_bad_key_is_refused_with_the_error_body(
    deployed: Deployed, headers: dict[str, str]
) -> None:
    reply = httpx.get(f"{deployed.base_url}/api/v1/whoami", headers=headers)
    assert reply.status_code == 401
    error = reply.json()["error"]
    assert error["code"] == "unauthenticated"
    assert error["request_id"] == reply.headers["x-request-id"]


def test_request_id_is_taken_from_the_caller_and_returned_once(deployed: Deployed) -> None:
    reply = httpx.get(
        f"{deployed.base_url}/api/v1/whoami", headers={"X-Request-ID": "trace-abc-123"}
    )
    assert reply.headers.get_list("x-request-id") == ["trace-abc-123"]
    assert reply.json()["error"]["request_id"] == "trace-abc-123"


def _replica_ports() -> list[int]:
    """Ports the Serve replicas listen on for direct ingress (HAProxy's backends)."""
    ports = set()
    for conn in psutil.net_connections(kind="tcp"):
        low = TEST_SERVE_PORTS["replica_port_min"]
        # laddr is typed "addr or ()"; a listening TCP socket always has an address.
        if conn.status == psutil.CONN_LISTEN and conn.laddr:
            port = conn.laddr.port
            if low <= port < low + 1000:
                ports.add(port)
    return sorted(ports)


def test_a_replica_port_reached_directly_still_demands_a_key(deployed: Deployed) -> None:
    ports = _replica_ports()
    assert ports, "expected Serve's direct-ingress replica port (HAProxy mode)"
    answered = 0
    for port in ports:
        try:
            refused = httpx.get(f"http://127.0.0.1:{port}/api/v1/whoami", timeout=5)
        except httpx.HTTPError:
            continue
        answered += 1
        assert refused.status_code == 401
        allowed = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/whoami", headers=bearer(deployed.admin_key)
        )
        assert allowed.status_code == 200
    assert answered, f"no replica port among {ports} answered HTTP"


def test_role_without_permission_gets_403(deployed: Deployed) -> None:
    reply = httpx.get(f"{deployed.base_url}/api/v1/keys", headers=bearer(deployed.analyst_key))
    assert reply.status_code == 403
    assert "keys:manage" in reply.json()["error"]["message"]


def test_platform_status_reports_pools_and_replicas(deployed: Deployed) -> None:
    reply = httpx.get(
        f"{deployed.base_url}/api/v1/platform/status", headers=bearer(deployed.analyst_key)
    )
    assert reply.status_code == 200
    body = reply.json()
    assert set(body["pools"]) == {"lake", "stream", "cortex", "forge"}
    gateway = body["serve"]["applications"][APP_NAME]["deployments"]["Gateway"]
    assert gateway["replicas"].get("RUNNING") == 1


def test_readyz_names_a_dead_pool_then_recovers(deployed: Deployed) -> None:
    settings = deployed.settings
    ray.kill(ray.get_actor(actor_name("forge", 0), settings.ray.namespace), no_restart=True)
    reply = httpx.get(f"{deployed.base_url}/readyz", timeout=10)
    assert reply.status_code == 503
    assert "forge pool" in reply.json()["error"]["message"]
    start_pools(settings)
    assert httpx.get(f"{deployed.base_url}/readyz", timeout=10).status_code == 200


def test_metrics_count_requests_by_route_template(deployed: Deployed) -> None:
    httpx.get(f"{deployed.base_url}/api/v1/whoami", headers=bearer(deployed.admin_key))
    text = httpx.get(f"{deployed.base_url}/metrics").text
    assert 'route="/api/v1/whoami"' in text
    assert "datapunk_gateway_request_duration_seconds_bucket" in text
