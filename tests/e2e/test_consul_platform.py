"""`datapunk up` and `datapunk down` with `DATAPUNK_CONSUL_URL` set: the gateway and every
pool actor register with health checks that pass, and `down` deregisters them all.

No Consul binary can be installed here: the agent is ``tests/unit/fake_consul.py``, a
real HTTP server implementing the agent and health endpoints Datapunk uses, as Consul's
API documentation describes them. This platform is a second one, on its own ports and
data dir, beside the package's shared platform.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import consul

from tests.e2e.conftest import BIN, platform_env, run
from tests.unit.fake_consul import FakeConsul

# Away from the shared e2e platform's ports (tests/e2e/conftest.py PORTS).
OWN_PORTS = {
    "DATAPUNK_RAY__PORT": "26600",
    "DATAPUNK_RAY__DASHBOARD_PORT": "28465",
    "DATAPUNK_GATEWAY__PORT": "28600",
    "DATAPUNK_RAY__CLIENT_SERVER_PORT": "26601",
    "DATAPUNK_RAY__DASHBOARD_AGENT_PORT": "28466",
    "DATAPUNK_RAY__METRICS_EXPORT_PORT": "28467",
    "DATAPUNK_GATEWAY__HAPROXY_STATS_PORT": "26414",
    "DATAPUNK_GATEWAY__HAPROXY_METRICS_PORT": "26415",
    "DATAPUNK_GATEWAY__FALLBACK_PROXY_PORT": "26460",
    "DATAPUNK_GATEWAY__REPLICA_PORT_MIN": "47000",
}


def _passing(agent: FakeConsul, service: str) -> list[dict[str, Any]]:
    """What any Consul client asking for healthy instances gets."""
    port = int(agent.url.rsplit(":", 1)[1])
    _, entries = consul.Consul(host="127.0.0.1", port=port).health.service(service, passing=True)
    return list(entries)


def test_up_registers_healthy_services_and_down_deregisters_them(tmp_path: Path) -> None:
    with FakeConsul() as agent:
        env = platform_env(tmp_path / "data") | OWN_PORTS | {"DATAPUNK_CONSUL_URL": agent.url}
        up = run([str(BIN / "datapunk"), "up"], env, timeout=300)
        try:
            assert up.returncode == 0, up.stdout + up.stderr
            names = {s["Service"] for s in agent.services.values()}
            assert {"datapunk-gateway", "datapunk-lake", "datapunk-stream"} <= names, names
            [gateway] = _passing(agent, "datapunk-gateway")  # the agent ran GET /readyz
            assert gateway["Service"]["Port"] == int(OWN_PORTS["DATAPUNK_GATEWAY__PORT"])
            # The pools' TTL checks were passed by the heartbeat actor before `up` returned.
            assert _passing(agent, "datapunk-lake"), agent.checks
        finally:
            down = run([str(BIN / "datapunk"), "down"], env, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        assert agent.services == {}
        assert not _passing(agent, "datapunk-gateway")
