"""check_configured_services without a network: embedded defaults and the extra-check hook."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cluster import health
from cluster.errors import ServiceUnavailableError
from cluster.health import ServiceCheck, ServiceStatus, check_configured_services
from cluster.settings import load_settings


async def test_all_embedded_reports_ok_without_connecting(tmp_path: Path) -> None:
    statuses = await check_configured_services(load_settings(data_dir=tmp_path))
    assert [s.name for s in statuses] == ["redis", "rabbitmq", "consul"]
    assert all(s.ok and s.mode == "embedded" for s in statuses)
    assert {s.target for s in statuses} == {"in-process cache", "in-cluster queue", "Ray registry"}


async def test_status_rows_are_frozen(tmp_path: Path) -> None:
    status = (await check_configured_services(load_settings(data_dir=tmp_path)))[0]
    with pytest.raises(AttributeError):
        status.ok = False  # type: ignore[misc]


async def test_configured_urls_are_checked_with_redacted_targets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    async def fake_ok(url: str) -> None:
        seen.append(url)

    async def fake_down(url: str) -> None:
        raise ServiceUnavailableError(
            service="RabbitMQ", target="amqp://u:***@mq:5672/", reason="connection refused", fix="x"
        )

    monkeypatch.setattr(health, "check_redis", fake_ok)
    monkeypatch.setattr(health, "check_amqp", fake_down)
    settings = load_settings(
        data_dir=tmp_path,
        redis_url="redis://:s3cret@cache:6379/0",
        amqp_url="amqp://u:pw@mq:5672/",
    )
    redis_row, amqp_row, consul_row = await check_configured_services(settings)
    assert seen == ["redis://:s3cret@cache:6379/0"]  # the check itself gets the real URL
    assert redis_row == ServiceStatus(
        "redis", "external", "redis://:***@cache:6379/0", True, "reachable"
    )
    assert not amqp_row.ok
    assert amqp_row.target == "amqp://u:***@mq:5672/"
    assert "connection refused" in amqp_row.detail
    assert consul_row.mode == "embedded"


async def test_extra_checks_come_first_and_failures_become_rows(tmp_path: Path) -> None:
    async def ok() -> None:
        return None

    async def broken() -> None:
        raise ValueError("bug in the check\nsecond line")

    async def hangs() -> None:
        await asyncio.sleep(60)

    statuses = await check_configured_services(
        load_settings(data_dir=tmp_path),
        extra_checks=[
            ("database", "sqlite:///x.db", ok()),
            ServiceCheck("embedded-db", "platform.db", ok(), mode="embedded"),
            ("broken", "t", broken()),
            ("slow", "t", hangs()),
        ],
        timeout_s=0.05,
    )
    by_name = {s.name: s for s in statuses}
    assert [s.name for s in statuses][:4] == ["database", "embedded-db", "broken", "slow"]
    assert by_name["database"].ok and by_name["database"].mode == "external"
    assert by_name["embedded-db"].mode == "embedded"
    assert not by_name["broken"].ok
    assert by_name["broken"].detail == "check failed: ValueError: bug in the check"
    assert not by_name["slow"].ok
    assert "did not answer within 0.05 s" in by_name["slow"].detail


async def test_checks_run_concurrently(tmp_path: Path) -> None:
    async def slow_ok() -> None:
        await asyncio.sleep(0.2)

    loop = asyncio.get_running_loop()
    started = loop.time()
    statuses = await check_configured_services(
        load_settings(data_dir=tmp_path),
        extra_checks=[(f"svc{i}", "t", slow_ok()) for i in range(5)],
    )
    # Five 0.2 s checks in sequence would take a full second.
    assert loop.time() - started < 0.8
    assert all(s.ok for s in statuses)
