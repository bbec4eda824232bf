"""Rate limits: the in-process token buckets (contract, fake clock) and the gateway's
enforcement (per key and route class, per client address, body sizes) on the real app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from actors.lake.service import LakeService
from cluster.errors import InvalidInputError, ServiceUnavailableError
from cluster.security.ratelimit import (
    BucketLimit,
    MemoryRateLimiter,
    RateLimiter,
    build_rate_limiter,
)
from cluster.security.rbac import Role
from cluster.settings import Settings, load_settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.ratelimit import GatewayLimits, client_address, route_class
from tests.clock import FakeClock
from tests.contracts.ratelimit import Advance, Elapsed, RateLimiterContract
from tests.unit.gateway_support import authenticator, error_of, key_store


class TestMemoryRateLimiterContract(RateLimiterContract):
    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def limiter(self, clock: FakeClock) -> AsyncIterator[RateLimiter]:
        limiter = MemoryRateLimiter(now=clock.monotonic)
        yield limiter
        await limiter.close()

    @pytest.fixture
    def advance(self, clock: FakeClock) -> Advance:
        async def move(seconds: float) -> None:
            clock.advance(seconds)

        return move

    @pytest.fixture
    def elapsed(self, clock: FakeClock) -> Elapsed:
        return clock.monotonic


def test_memory_limiter_satisfies_the_port() -> None:
    assert isinstance(MemoryRateLimiter(), RateLimiter)


def test_no_redis_means_in_process_buckets(data_dir: Path) -> None:
    assert isinstance(build_rate_limiter(Settings(data_dir=data_dir)), MemoryRateLimiter)


async def test_memory_limiter_forgets_full_buckets_and_bounds_the_rest() -> None:
    clock = FakeClock()
    limiter = MemoryRateLimiter(now=clock.monotonic, max_buckets=3)
    limit = BucketLimit(rate_per_s=1.0, burst=1)
    for key in "abcd":
        await limiter.acquire(key, limit)
    assert len(limiter) == 3  # the least recently used bucket went
    clock.advance(1.5)
    assert await limiter.peek("b", limit) == 1.0
    assert len(limiter) == 2  # a full bucket is the same as no bucket


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [
        ("/api/v1/whoami", "GET", "read"),
        ("/api/v1/lake/tables/{name}/append", "POST", "write"),
        ("/api/v1/lake/tables/{name}", "HEAD", "read"),
        ("/api/v1/lake/sql", "POST", "sql"),
        ("/api/v1/models/{name}/predict", "POST", "predict"),
        ("/api/v1/predict/{model}", "POST", "predict"),
        ("/api/v1/auth/login", "POST", "auth"),
        ("/api/v1/auth", "GET", "auth"),
        ("/api/v1/graphql", "POST", "read"),
        ("/api/v1/keys/{key_id}", "DELETE", "write"),
    ],
)
def test_route_classes(path: str, method: str, expected: str) -> None:
    assert route_class(path, method) == expected


def test_forwarded_for_is_believed_only_from_a_trusted_proxy() -> None:
    headers = [(b"x-forwarded-for", b"6.6.6.6, 10.0.0.9, 10.0.0.1")]
    direct = {"client": ("10.0.0.1", 5), "headers": headers}
    assert client_address(direct, []) == "10.0.0.1"
    assert client_address(direct, ["10.0.0.1"]) == "10.0.0.9"
    assert client_address(direct, ["10.0.0.1", "10.0.0.9"]) == "6.6.6.6"
    assert client_address({"client": None, "headers": []}, []) == "unknown"


# --- the gateway ------------------------------------------------------------------------


@dataclass
class Limited:
    """An app with limits on a fake clock, and a way to call it from any address."""

    app: FastAPI
    clock: FakeClock
    keys: dict[str, str]
    lake: LakeService | None = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None = None,
        address: str = "10.1.1.1",
        **kwargs: Any,
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {self.keys.get(key, key)}"
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            return await http.request(method, path, headers=headers, **kwargs)


@pytest.fixture
def limited(data_dir: Path) -> Iterator[Any]:
    """``build(**rate_limits)``: an app whose buckets use those settings."""

    @asynccontextmanager
    async def build(*, lake: bool = False, **rate_limits: Any) -> AsyncIterator[Limited]:
        settings = load_settings(data_dir=data_dir, rate_limits=rate_limits)
        clock = FakeClock()
        async with key_store(settings, clock) as store:
            keys = {}
            for name, role in (("a", Role.ADMIN), ("b", Role.ADMIN), ("analyst", Role.ANALYST)):
                keys[name], _ = await store.create(role, name=name)
            limits = GatewayLimits(settings.rate_limits, MemoryRateLimiter(now=clock.monotonic))
            service = LakeService.from_settings(settings) if lake else None
            deps = GatewayDeps(
                authenticator=authenticator(store, clock),
                lake=service,
                spool_dir=data_dir / "spool",
                limits=limits,
            )
            yield Limited(create_app(deps), clock, keys, service)

    yield build


async def test_per_key_rate_is_within_ten_percent_of_the_setting(limited: Any) -> None:
    """50/s for 2 s, asked four times as often: 100 (+ the burst of 5) get through."""
    async with limited(read_per_s=50, read_burst=5) as api:
        granted = refused = 0
        for _ in range(400):
            reply = await api.call("GET", "/api/v1/whoami", key="a")
            if reply.status_code == 200:
                granted += 1
            else:
                assert reply.status_code == 429, reply.text
                refused += 1
            api.clock.advance(0.005)
    rate = (granted - 5) / 2.0
    assert abs(rate - 50) <= 5, granted
    assert granted + refused == 400


async def test_429_carries_retry_after_and_names_the_limit(limited: Any) -> None:
    async with limited(read_per_s=0.4, read_burst=1) as api:
        assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 200
        reply = await api.call("GET", "/api/v1/whoami", key="a")
        assert reply.status_code == 429
        assert reply.headers["retry-after"] == "3"  # 2.5 s for one token, rounded up
        error = error_of(reply)
        assert error["code"] == "rate_limited"
        assert "'read'" in error["message"]
        assert "0.4/s, burst 1" in error["message"]
        assert "retry after 3 s" in error["message"]
        api.clock.advance(2.0)
        again = await api.call("GET", "/api/v1/whoami", key="a")
        assert again.headers["retry-after"] == "1"  # 0.5 s left, rounded up
        api.clock.advance(0.5)
        assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 200


async def test_each_key_and_each_route_class_has_its_own_bucket(limited: Any) -> None:
    limits = {"read_per_s": 0.01, "read_burst": 2, "write_per_s": 0.01, "write_burst": 1}
    async with limited(lake=True, **limits) as api:
        for _ in range(2):
            assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 200
        assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 429
        # Another key, same address: untouched.
        assert (await api.call("GET", "/api/v1/whoami", key="b")).status_code == 200
        # The same key on a write route: its own bucket.
        body = {"name": "sales"}
        assert (await api.call("POST", "/api/v1/lake/namespaces", key="a", json=body)).is_success
        again = await api.call("POST", "/api/v1/lake/namespaces", key="a", json=body)
        assert again.status_code == 429
        assert "'write'" in error_of(again)["message"]


async def test_calls_without_credentials_are_limited_per_address(limited: Any) -> None:
    async with limited(anonymous_per_s=0.5, anonymous_burst=3) as api:
        codes = [(await api.call("GET", "/api/v1/whoami")).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        refused = await api.call("GET", "/api/v1/whoami")
        assert refused.headers["retry-after"] == "2"
        assert "client 10.1.1.1" in error_of(refused)["message"]
        other = await api.call("GET", "/api/v1/whoami", address="10.2.2.2")
        assert other.status_code == 401
        # Probes are never limited.
        assert (await api.call("GET", "/healthz")).status_code == 200


async def test_sign_in_attempts_have_their_own_tighter_bucket(limited: Any) -> None:
    async with limited(login_per_s=0.1, login_burst=2, anonymous_burst=50) as api:
        attempts = [
            (await api.call("POST", "/api/v1/auth/login", json={})).status_code for _ in range(3)
        ]
        assert attempts[:2] != [429, 429]
        assert attempts[2] == 429
        assert (await api.call("GET", "/api/v1/whoami")).status_code == 401  # anonymous bucket


async def test_refused_credentials_slow_down_guessing_from_that_address(limited: Any) -> None:
    async with limited(auth_failures_per_s=0.2, auth_failures_burst=3) as api:
        guesses = [
            (await api.call("GET", "/api/v1/whoami", key="dp_guess")).status_code for _ in range(4)
        ]
        assert guesses == [401, 401, 401, 429]
        # While that bucket is empty even a good key from there waits...
        blocked = await api.call("GET", "/api/v1/whoami", key="a")
        assert blocked.status_code == 429
        assert blocked.headers["retry-after"] == "5"
        # ...but not from elsewhere, and not after the bucket refilled.
        assert (await api.call("GET", "/api/v1/whoami", key="a", address="10.9.9.9")).is_success
        api.clock.advance(5.0)
        assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 200


async def test_limits_can_be_switched_off(limited: Any) -> None:
    async with limited(enabled=False, read_per_s=0.01, read_burst=1) as api:
        for _ in range(5):
            assert (await api.call("GET", "/api/v1/whoami", key="a")).status_code == 200


async def test_an_unreachable_bucket_store_fails_open_or_closed(data_dir: Path) -> None:
    from cluster.cache.redis_buckets import RedisRateLimiter

    clock = FakeClock()
    for fail_open, expected in ((True, 200), (False, 503)):
        settings = load_settings(data_dir=data_dir, rate_limits={"fail_open": fail_open})
        async with key_store(settings, clock) as store:
            token, _ = await store.create(Role.ADMIN)
            limits = GatewayLimits(settings.rate_limits, RedisRateLimiter("redis://127.0.0.1:1/0"))
            app = create_app(GatewayDeps(authenticator=authenticator(store, clock), limits=limits))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                reply = await http.get("/api/v1/whoami", headers={"X-API-Key": token})
            assert reply.status_code == expected, reply.text
            await limits.limiter.close()


async def test_unlimited_app_has_no_buckets(data_dir: Path) -> None:
    """Without ``limits`` (tests, the uvicorn baseline) nothing is counted or refused."""
    clock = FakeClock()
    async with key_store(Settings(data_dir=data_dir), clock) as store:
        token, _ = await store.create(Role.ADMIN)
        app = create_app(GatewayDeps(authenticator=authenticator(store, clock)))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            for _ in range(300):
                reply = await http.get("/api/v1/whoami", headers={"X-API-Key": token})
                assert reply.status_code == 200


# --- body sizes ---------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_by_its_length(limited: Any) -> None:
    async with limited(max_body_bytes=2048) as api:
        reply = await api.call("POST", "/api/v1/whoami", key="a", content=b"x" * 4096)
        assert reply.status_code == 413
        error = error_of(reply)
        assert error["code"] == "payload_too_large"
        assert "over 2048 bytes (rate_limits.max_body_bytes)" in error["message"]


async def _chunks(total: int, size: int = 512) -> AsyncIterator[bytes]:
    for _ in range(total // size):
        yield b"y" * size


async def test_a_streamed_body_is_counted_as_it_arrives(limited: Any) -> None:
    async with limited(max_body_bytes=2048, lake=True) as api:
        reply = await api.call(
            "POST",
            "/api/v1/lake/tables",
            key="a",
            content=_chunks(8192),
            headers={"Content-Type": "application/json"},
        )
        assert "content-length" not in reply.request.headers  # chunked: no length to check
        assert reply.status_code == 413, reply.text
        assert "rate_limits.max_body_bytes" in error_of(reply)["message"]


async def test_a_streamed_upload_has_its_own_limit_and_leaves_no_spool_file(
    limited: Any, data_dir: Path
) -> None:
    async with limited(max_body_bytes=1024, max_upload_bytes=4096, lake=True) as api:
        create = {"name": "t", "columns": [{"name": "v", "type": "string"}]}
        assert (await api.call("POST", "/api/v1/lake/tables", key="a", json=create)).is_success
        small = b"v\n" + b"a\n" * 1000  # 2 KiB: over the body limit, under the upload one
        csv = {"Content-Type": "text/csv"}
        ok = await api.call(
            "POST", "/api/v1/lake/tables/t/append", key="a", content=small, headers=csv
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["rows"] == 1000
        big = await api.call(
            "POST", "/api/v1/lake/tables/t/append", key="a", content=_chunks(16384), headers=csv
        )
        assert big.status_code == 413, big.text
        assert "rate_limits.max_upload_bytes" in error_of(big)["message"]
        assert not any((data_dir / "spool").iterdir())


async def test_sql_text_over_the_limit_is_refused(data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, lake={"sql_max_query_chars": 64})
    lake = LakeService.from_settings(settings)
    query = "SELECT 1 AS a" + " " * 60 + "-- padding"
    with pytest.raises(InvalidInputError, match="sql_max_query_chars") as caught:
        await lake.sql(query)
    assert caught.value.http_status == 422


def test_service_unavailable_is_what_a_down_store_raises() -> None:
    # The middleware's fail-open path catches exactly this type; keep them in step.
    from cluster.cache.redis_buckets import RedisRateLimiter

    limiter = RedisRateLimiter("redis://127.0.0.1:1/0")
    with pytest.raises(ServiceUnavailableError, match="connection refused"):
        asyncio.run(limiter.acquire("k", BucketLimit(1.0, 1)))
