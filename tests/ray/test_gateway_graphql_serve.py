"""GraphQL and a WebSocket's re-check as Serve runs the gateway: real HTTP and a real
WebSocket client against the Serve endpoint, real stream actors behind it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
import yaml
from websockets.exceptions import ConnectionClosed

from tests.ray.test_gateway_serve import Deployed, deployed  # noqa: F401 - the fixture

pytestmark = pytest.mark.ray

STREAM = """
name: recheck_clicks
source: {kind: queue}
schema: {user: string, ts: double}
time_column: ts
key_by: [user]
actor_cpus: 0
operators:
  - kind: window
    name: per_10s
    window: {kind: tumbling, size_s: 10}
    aggregations: [{fn: count, as: clicks}]
sinks:
  - {kind: subscribe, from: per_10s}
"""


def _admin(deployed: Deployed) -> dict[str, str]:  # noqa: F811
    return {"X-API-Key": deployed.admin_key}


def test_graphql_through_serve(deployed: Deployed) -> None:  # noqa: F811
    url = f"{deployed.base_url}/api/v1/graphql"
    query = {"query": "{ namespaces models { name } }"}
    assert httpx.post(url, json=query, timeout=30).status_code == 401
    reply = httpx.post(url, json=query, headers=_admin(deployed), timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["data"]["models"] == []
    refused = httpx.post(
        url,
        json={"query": 'mutation { stopStream(name: "x") }'},
        headers={"X-API-Key": deployed.analyst_key},
        timeout=30,
    )
    error = refused.json()["errors"][0]
    assert error["extensions"]["code"] == "permission_denied"
    assert "Traceback" not in refused.text


def test_a_key_revoked_through_serve_closes_its_open_socket(deployed: Deployed) -> None:  # noqa: F811
    async def scenario() -> int:
        async with httpx.AsyncClient(base_url=deployed.base_url, timeout=60) as http:
            made = await http.post(
                "/api/v1/streams", json=yaml.safe_load(STREAM), headers=_admin(deployed)
            )
            assert made.status_code == 201, made.text
            key = await http.post(
                "/api/v1/keys", json={"role": "analyst"}, headers=_admin(deployed)
            )
            assert key.status_code == 201, key.text
            token, key_id = key.json()["key"], key.json()["id"]
            ws = deployed.base_url.replace("http://", "ws://")
            url = f"{ws}/api/v1/streams/recheck_clicks/subscribe?api_key={token}"
            try:
                async with websockets.connect(url) as socket:
                    await asyncio.sleep(1.0)  # open, and re-checked while the key is good
                    revoked = await http.delete(f"/api/v1/keys/{key_id}", headers=_admin(deployed))
                    assert revoked.status_code == 200, revoked.text
                    frame = json.loads(await asyncio.wait_for(socket.recv(), 10))
                    assert frame["ok"] is False and frame["error"]["code"] == "unauthenticated"
                    with pytest.raises(ConnectionClosed) as closed:
                        await asyncio.wait_for(socket.recv(), 10)
                    assert closed.value.rcvd is not None
                    return int(closed.value.rcvd.code)
            finally:
                await http.delete("/api/v1/streams/recheck_clicks", headers=_admin(deployed))

    assert asyncio.run(scenario()) == 4401
