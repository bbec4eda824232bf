"""Service checks against the real Redis and RabbitMQ on this machine (no Consul here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import ServiceUnavailableError
from cluster.health import check_amqp, check_configured_services, check_consul, check_redis
from cluster.settings import load_settings
from tests.integration.silent_server import silent_tcp_server

pytestmark = pytest.mark.integration

REFUSED_AMQP = "amqp://guest:guest@127.0.0.1:1/"


async def test_redis_ok(redis_url: str) -> None:
    await check_redis(redis_url)


async def test_redis_refused() -> None:
    with pytest.raises(ServiceUnavailableError, match="connection refused"):
        await check_redis("redis://127.0.0.1:1/0")


async def test_amqp_ok(amqp_url: str) -> None:
    await check_amqp(amqp_url)


async def test_amqp_bad_password_mentions_credentials_and_hides_password(amqp_url: str) -> None:
    bad = amqp_url.replace("guest:guest@", "guest:not-the-password@")
    with pytest.raises(ServiceUnavailableError) as caught:
        await check_amqp(bad)
    message = str(caught.value)
    assert "credentials" in message
    assert "ACCESS_REFUSED" in message
    assert "not-the-password" not in message
    assert "guest:***@" in message


async def test_amqp_unknown_vhost_is_named(amqp_url: str) -> None:
    with pytest.raises(ServiceUnavailableError, match="vhost 'no-such-vhost' not found"):
        await check_amqp(amqp_url.rstrip("/") + "/no-such-vhost")


async def test_amqp_refused() -> None:
    with pytest.raises(ServiceUnavailableError, match="connection refused") as caught:
        await check_amqp(REFUSED_AMQP)
    assert "amqp://guest:***@127.0.0.1:1/" in str(caught.value)


async def test_amqp_silent_server_times_out() -> None:
    async with silent_tcp_server() as port:
        with pytest.raises(ServiceUnavailableError, match="timed out"):
            await check_amqp(f"amqp://guest:guest@127.0.0.1:{port}/", timeout_s=0.3)


async def test_consul_refused() -> None:
    with pytest.raises(ServiceUnavailableError, match="connection refused") as caught:
        await check_consul("http://127.0.0.1:1")
    assert "Consul at http://127.0.0.1:1" in str(caught.value)


async def test_configured_services_against_real_and_missing_servers(
    tmp_path: Path, redis_url: str, amqp_url: str
) -> None:
    settings = load_settings(
        data_dir=tmp_path, redis_url=redis_url, amqp_url=amqp_url, consul_url="http://127.0.0.1:1"
    )
    redis_row, amqp_row, consul_row = await check_configured_services(settings)
    assert redis_row.ok and redis_row.mode == "external"
    assert amqp_row.ok and amqp_row.target == "amqp://guest:***@127.0.0.1:5672/"
    assert not consul_row.ok
    assert "connection refused" in consul_row.detail
