"""Consul registration, TTL heartbeats and ``consul://`` resolution, over real HTTP.

No Consul binary can be installed here: ``tests/unit/fake_consul.py`` is a small real
HTTP server implementing the agent and health endpoints used, as Consul documents
them; py-consul talks to it exactly as it would to an agent.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import consul
import pytest

from cluster import consul as dp_consul
from cluster import platform
from cluster.consul import (
    GATEWAY_SERVICE,
    ConsulRegistry,
    deregister_platform,
    heartbeat,
    pool_check_id,
    register_platform,
    resolve_service_urls,
)
from cluster.errors import ConfigError, ServiceUnavailableError
from cluster.settings import Settings, export_settings, load_settings
from tests.unit.fake_consul import FakeConsul

POOL_SERVICES = ["datapunk-lake", "datapunk-stream", "datapunk-cortex", "datapunk-forge"]


class Readyz:
    """A stand-in gateway: ``GET /readyz`` answers ``status`` (200 until told otherwise)."""

    def __init__(self) -> None:
        self.status = 200
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code = owner.status if self.path == "/readyz" else 404
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *_: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def agent() -> Iterator[FakeConsul]:
    with FakeConsul() as fake:
        yield fake


@pytest.fixture
def gateway() -> Iterator[Readyz]:
    stub = Readyz()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


@pytest.fixture
def settings(agent: FakeConsul, tmp_path: Any) -> Settings:
    return Settings(consul_url=agent.url, data_dir=tmp_path)


def passing(agent: FakeConsul, service: str) -> list[dict[str, Any]]:
    """What any Consul client asking for healthy instances would get."""
    _, entries = consul.Consul(
        host="127.0.0.1", port=int(agent.url.rsplit(":", 1)[1])
    ).health.service(service, passing=True)
    return list(entries)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_up_registers_the_gateway_with_a_readyz_http_check(
    agent: FakeConsul, gateway: Readyz, settings: Settings
) -> None:
    ids = register_platform(settings, gateway.url)
    assert ids[0] == f"{GATEWAY_SERVICE}-{settings.gateway.port}"
    service = agent.services[ids[0]]
    assert (service["Service"], service["Port"], service["Tags"]) == (
        GATEWAY_SERVICE,
        settings.gateway.port,
        ["datapunk"],
    )
    check = agent.checks[f"{ids[0]}:readyz"]
    assert check.http == f"{gateway.url}/readyz"
    [entry] = passing(agent, GATEWAY_SERVICE)  # the agent ran the check: 200
    assert entry["Service"]["ID"] == ids[0]
    assert ("PUT", "/v1/agent/service/register") in agent.requests


def test_a_gateway_that_is_not_ready_is_not_passing(
    agent: FakeConsul, gateway: Readyz, settings: Settings
) -> None:
    gateway.status = 503
    register_platform(settings, gateway.url)
    assert passing(agent, GATEWAY_SERVICE) == []
    status = agent.checks[f"{GATEWAY_SERVICE}-{settings.gateway.port}:readyz"].status
    assert status == "critical"


def test_pool_ttl_checks_follow_the_heartbeat(
    agent: FakeConsul, gateway: Readyz, settings: Settings
) -> None:
    register_platform(settings, gateway.url)
    assert {s["Service"] for s in agent.services.values()} == {GATEWAY_SERVICE, *POOL_SERVICES}
    # A new TTL check is critical until the first heartbeat.
    assert passing(agent, "datapunk-lake") == []
    registry = ConsulRegistry(agent.url)
    lake, forge = pool_check_id("lake", 0), pool_check_id("forge", 0)
    assert heartbeat(registry, {lake: None, forge: "ping failed (RayActorError)"}) == {
        lake: True,
        forge: True,
    }
    [entry] = passing(agent, "datapunk-lake")
    assert entry["Service"]["Meta"] == {"actor": "lake-0", "namespace": "datapunk"}
    assert passing(agent, "datapunk-forge") == []
    assert agent.checks[forge].output == "ping failed (RayActorError)"
    assert ("PUT", f"/v1/agent/check/fail/{forge}") in agent.requests


def test_a_ttl_check_without_heartbeats_turns_critical(
    agent: FakeConsul, gateway: Readyz, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dp_consul, "POOL_TTL_S", 0.2)
    register_platform(settings, gateway.url)
    heartbeat(ConsulRegistry(agent.url), {pool_check_id("stream", 0): None})
    assert len(passing(agent, "datapunk-stream")) == 1
    time.sleep(0.3)
    assert passing(agent, "datapunk-stream") == []


def test_down_deregisters_everything_once(
    agent: FakeConsul, gateway: Readyz, settings: Settings
) -> None:
    ids = register_platform(settings, gateway.url)
    assert sorted(deregister_platform(settings)) == sorted(ids)
    assert agent.services == {} and agent.checks == {}
    assert deregister_platform(settings) == []  # already gone: nothing, no error
    # A heartbeat racing the deregistration learns the check is gone.
    assert heartbeat(ConsulRegistry(agent.url), {pool_check_id("lake", 0): None}) == {
        pool_check_id("lake", 0): False
    }


def test_platform_teardown_step_deregisters(
    agent: FakeConsul, gateway: Readyz, settings: Settings
) -> None:
    register_platform(settings, gateway.url)
    platform._deregister(settings)  # what `datapunk down` runs before stopping Ray
    assert agent.services == {}


def test_without_consul_nothing_is_registered(tmp_path: Any) -> None:
    plain = Settings(data_dir=tmp_path)
    assert register_platform(plain, "http://127.0.0.1:8000") == []
    assert deregister_platform(plain) == []


def test_an_unreachable_agent_names_target_and_fix(tmp_path: Any) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(consul_url=url, data_dir=tmp_path)
    with pytest.raises(ServiceUnavailableError) as caught:
        register_platform(settings, "http://127.0.0.1:8000")
    assert url in caught.value.message
    assert "DATAPUNK_CONSUL_URL" in caught.value.message


def test_down_goes_on_when_consul_is_away(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    settings = Settings(consul_url=url, data_dir=tmp_path)
    logging.getLogger("cluster").propagate = True  # restored by the unit conftest
    with caplog.at_level(logging.WARNING, logger="cluster.platform"):
        platform._deregister(settings)
    assert "could not deregister from Consul" in caplog.text


# --- consul://SERVICE URLs -------------------------------------------------------------


def register_backend(agent: FakeConsul, name: str, address: str, port: int) -> None:
    """A backing service as its own Consul registration would put it, with a TTL check."""
    client = consul.Consul(host="127.0.0.1", port=int(agent.url.rsplit(":", 1)[1]))
    check = {"CheckID": f"{name}:ttl", "TTL": "60s"}
    client.agent.service.register(name, service_id=name, address=address, port=port, check=check)
    client.agent.check.ttl_pass(f"{name}:ttl")


def test_consul_urls_resolve_to_a_passing_instance(agent: FakeConsul, tmp_path: Any) -> None:
    register_backend(agent, "pg", "10.0.0.5", 5432)
    register_backend(agent, "cache", "10.0.0.6", 6380)
    register_backend(agent, "mq", "", 5672)  # no address: the node's, as Consul documents
    settings = Settings(
        data_dir=tmp_path,
        consul_url=agent.url,
        database_url="consul://dp:p%40ss@pg/datapunk",
        redis_url="consul://cache/0?scheme=rediss",
        amqp_url="consul://guest:guest@mq/%2F?heartbeat=30",
    )
    resolved = resolve_service_urls(settings)
    assert resolved.platform_db_url() == "postgresql+asyncpg://dp:p%40ss@10.0.0.5:5432/datapunk"
    assert resolved.secret("redis_url") == "rediss://10.0.0.6:6380/0"
    assert resolved.secret("amqp_url") == "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=30"
    assert resolved.consul_url == settings.consul_url
    assert ("GET", "/v1/health/service/pg") in agent.requests


def test_an_instance_with_a_failing_check_is_not_used(agent: FakeConsul, tmp_path: Any) -> None:
    register_backend(agent, "pg", "10.0.0.5", 5432)
    ConsulRegistry(agent.url).report("pg:ttl", "disk full")
    settings = Settings(
        data_dir=tmp_path, consul_url=agent.url, database_url="consul://pg/datapunk"
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        resolve_service_urls(settings)
    assert "'pg'" in caught.value.message and "database_url" in caught.value.message
    assert "no instance with all health checks passing" in caught.value.message


def test_load_settings_resolves_consul_urls_from_the_environment(
    agent: FakeConsul, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_backend(agent, "cache", "10.0.0.6", 6379)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_CONSUL_URL", agent.url)
    monkeypatch.setenv("DATAPUNK_REDIS_URL", "consul://cache")
    settings = load_settings()
    assert settings.secret("redis_url") == "redis://10.0.0.6:6379"
    # Ray processes get the concrete URL, not a second lookup.
    assert export_settings(settings)["redis_url"] == "redis://10.0.0.6:6379"


def test_a_consul_url_without_an_agent_is_a_config_error(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATAPUNK_CONSUL_URL", raising=False)
    monkeypatch.setenv("DATAPUNK_AMQP_URL", "consul://user:secret@mq")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = caught.value.message
    assert "amqp_url" in message and "DATAPUNK_CONSUL_URL" in message
    assert "secret" not in message


def test_consul_is_no_scheme_for_the_agent_itself(tmp_path: Any) -> None:
    with pytest.raises(ConfigError):
        load_settings(consul_url="consul://agent", data_dir=tmp_path)


# --- the fake keeps to Consul's documented API ------------------------------------------


def test_fake_default_check_ids_and_unknown_ids_as_consul_documents(agent: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=int(agent.url.rsplit(":", 1)[1]))
    ttl = consul.Check.ttl("10s")
    client.agent.service.register("one", service_id="one", check=ttl)
    client.agent.service.register("two", service_id="two", check=ttl, extra_checks=[ttl])
    assert set(agent.checks) == {"service:one", "service:two:1", "service:two:2"}
    # Without ?passing every instance comes back, with its checks' states.
    index, [entry] = client.health.service("one")
    assert int(index) > 0
    assert [c["Status"] for c in entry["Checks"]] == ["passing", "critical"]  # serfHealth first
    assert client.agent.check.ttl_pass("service:one") is True
    assert client.health.service("one", passing=True)[1][0]["Service"]["ID"] == "one"
    # Unknown ids: 404, which py-consul turns into False.
    assert client.agent.service.deregister("nope") is False
    assert client.agent.check.ttl_pass("nope") is False


def test_fake_refuses_what_consul_refuses(agent: FakeConsul) -> None:
    client = consul.Consul(host="127.0.0.1", port=int(agent.url.rsplit(":", 1)[1]))
    client.agent.service.register(
        "web", service_id="web", check=consul.Check.http("http://127.0.0.1:9/", "10s")
    )
    with pytest.raises(consul.ConsulException, match="does not have associated TTL"):
        client.agent.check.ttl_pass("service:web")  # a TTL update on an HTTP check: 500
    with pytest.raises(consul.exceptions.BadRequest):  # an HTTP check without an interval: 400
        client.agent.service.register("bad", check={"HTTP": "http://127.0.0.1:9/"})
