"""Actor pools on a real Ray cluster: start, find by name, ping, stop."""

from __future__ import annotations

import asyncio

import pytest
import ray

from cluster.errors import ServiceUnavailableError
from cluster.pools import actor_name, ping_pool, pool_sizes, start_pools, stop_pools
from cluster.settings import Settings


@pytest.fixture
def pools(ray_settings: Settings):
    start_pools(ray_settings)
    yield ray_settings
    stop_pools(ray_settings)


def test_every_pool_answers_with_its_identity(pools: Settings) -> None:
    for service, count in pool_sizes(pools).items():
        replies = asyncio.run(ping_pool(pools, service, request_id="req-1"))
        assert [r["service"] for r in replies] == [service] * count
        assert [r["index"] for r in replies] == list(range(count))
        assert all(r["status"] == "ok" for r in replies)


def test_start_is_idempotent_and_keeps_existing_actors(pools: Settings) -> None:
    before = ray.get_actor(actor_name("lake", 0), pools.ray.namespace)._actor_id
    start_pools(pools)
    after = ray.get_actor(actor_name("lake", 0), pools.ray.namespace)._actor_id
    assert before == after


def test_missing_actor_is_named_in_the_error(pools: Settings) -> None:
    ray.kill(ray.get_actor(actor_name("stream", 0), pools.ray.namespace), no_restart=True)
    with pytest.raises(ServiceUnavailableError, match="stream-0"):
        asyncio.run(ping_pool(pools, "stream"))


def test_stop_removes_every_actor(ray_settings: Settings) -> None:
    start_pools(ray_settings)
    assert stop_pools(ray_settings) == sum(pool_sizes(ray_settings).values())
    with pytest.raises(ValueError):
        ray.get_actor(actor_name("lake", 0), ray_settings.ray.namespace)
