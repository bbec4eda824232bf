"""The gateway's cross-cutting security on the production adapters: the platform DB on
PostgreSQL (keys, grants, registry, run records, Lake catalog) and rate limits in Redis.

The same sweeps as the unit tests (every route, every GraphQL field, every socket),
run against a gateway whose state lives in the real services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pytest

from cluster.cache.redis_buckets import RedisRateLimiter
from cluster.security.rbac import Role
from cluster.settings import RateLimitSettings, Settings
from serve_apps.gateway.ratelimit import GatewayLimits
from tests.contracts.forge_store import MODEL, register
from tests.stream_support import window_topology
from tests.unit import test_security_routes as sweeps
from tests.unit.full_gateway import FullGateway, full_gateway
from tests.unit.identity_support import CHEAP_ARGON2

pytestmark = pytest.mark.integration


@pytest.fixture
async def gw(data_dir: Path, postgres_url: str) -> AsyncIterator[FullGateway]:
    settings = Settings(data_dir=data_dir, database_url=postgres_url, auth=CHEAP_ARGON2)
    async with full_gateway(data_dir, settings) as gateway:
        await gateway.streams.deploy(window_topology("orders"))
        await gateway.lake.create_namespace("sales")
        await gateway.lake.create_table("sales.a", schema=pa.schema([("id", pa.int64())]))
        await gateway.lake.append("sales.a", pa.table({"id": [1, 2]}))
        await register(gateway.registry)
        yield gateway


async def test_every_route_field_and_socket_refuses_on_postgresql(gw: FullGateway) -> None:
    await sweeps.test_every_route_is_checked_or_deliberately_open(gw)
    await sweeps.test_every_route_refuses_no_credentials(gw)
    await sweeps.test_every_route_refuses_a_role_without_its_permission(gw)
    await sweeps.test_every_graphql_field_refuses_no_bad_credentials_and_a_role_without_it(gw)
    await sweeps.test_every_socket_refuses_no_bad_credentials_and_a_role_without_it(gw)


async def test_graphql_reads_and_grants_on_postgresql(gw: FullGateway) -> None:
    token, record = await gw.ident.keys.create(Role.ANALYST)
    await gw.grants.add(record.id, "lake.table:read", "table:sales.a")
    gw.ident.key_cache.invalidate(record.id)
    async with gw.client() as http:
        reply = await http.post(
            "/api/v1/graphql",
            headers={"X-API-Key": token},
            json={"query": '{ tables preview(name: "sales.a") { rowCount } }'},
        )
        assert reply.json()["data"] == {"tables": ["sales.a"], "preview": {"rowCount": 2}}
        models = await http.post(
            "/api/v1/graphql",
            headers=gw.headers(Role.ANALYST),
            json={"query": f'{{ model(name: "{MODEL}") {{ versions {{ version }} }} }}'},
        )
        assert models.json()["data"]["model"]["versions"] == [{"version": 1}]


async def test_a_revoked_key_closes_its_socket_on_postgresql(gw: FullGateway) -> None:
    await sweeps.test_a_key_revoked_while_subscribed_closes_the_socket_within_the_cache_ttl(gw)
    await sweeps.test_a_key_revoked_through_the_api_closes_its_sockets_at_once(gw)


async def test_graphql_is_rate_limited_in_redis(gw: FullGateway, redis_url: str) -> None:
    limits = GatewayLimits(
        RateLimitSettings(read_per_s=1.0, read_burst=2, write_per_s=1.0, write_burst=2),
        RedisRateLimiter(redis_url),
    )
    app = gw.rebuild(limits=limits)
    body = {"query": "{ namespaces }"}
    try:
        async with gw.client(app) as http:
            codes = [
                (
                    await http.post("/api/v1/graphql", headers=gw.headers(Role.ADMIN), json=body)
                ).status_code
                for _ in range(4)
            ]
    finally:
        await limits.limiter.close()
    assert codes[:2] == [200, 200] and codes[-1] == 429, codes
