"""The Consul heartbeat on a real Ray cluster: pool actors' TTL checks follow their pings.

Consul itself is ``tests/unit/fake_consul.py`` (no Consul binary can be installed
here): a real HTTP server the heartbeat actor reaches over the network.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray

from cluster.consul import pool_check_id, register_platform
from cluster.pools import (
    HEARTBEAT_ACTOR,
    actor_name,
    start_heartbeat,
    start_pools,
    stop_pools,
)
from cluster.settings import load_settings
from tests.ray.conftest import TEST_GATEWAY_PORT, TEST_NAMESPACE, TEST_SERVE_PORTS
from tests.unit.fake_consul import FakeConsul


def test_heartbeat_passes_live_actors_and_fails_a_dead_one(
    ray_cluster: None, data_dir: Path
) -> None:
    with FakeConsul() as agent:
        settings = load_settings(
            data_dir=data_dir,
            consul_url=agent.url,
            ray={"namespace": TEST_NAMESPACE},
            gateway={"port": TEST_GATEWAY_PORT, **TEST_SERVE_PORTS},
            pools={"lake": 1, "stream": 0, "cortex": 0, "forge": 0},
        )
        check_id = pool_check_id("lake", 0)
        register_platform(settings, f"http://127.0.0.1:{TEST_GATEWAY_PORT}")
        assert agent.checks[check_id].status == "critical"  # until the first heartbeat
        start_pools(settings)
        try:
            assert start_heartbeat(settings) == {check_id: True}
            assert agent.checks[check_id].current() == "passing"
            ray.kill(ray.get_actor(actor_name("lake", 0), TEST_NAMESPACE), no_restart=True)
            beat: Any = ray.get_actor(HEARTBEAT_ACTOR, TEST_NAMESPACE).beat.remote()
            assert ray.get(beat, timeout=30) == {check_id: True}
            assert agent.checks[check_id].current() == "critical"
            # Dead and gone from the registry, or still named but failing its ping.
            output = agent.checks[check_id].output
            assert output == "actor not found" or output.startswith("ping failed ("), output
        finally:
            stop_pools(settings)
        with pytest.raises(ValueError):
            ray.get_actor(HEARTBEAT_ACTOR, TEST_NAMESPACE)
