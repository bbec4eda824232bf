"""``/api/v1/streams`` on the real gateway app: real keys, a real in-process queue and
output hub behind a ``StreamControl`` stand-in, no Ray."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.ipc as pa_ipc
import pytest
from fastapi import FastAPI
from starlette.types import Message

from actors.ingest.sources.messages import ARROW_STREAM
from actors.stream.hub import OutputHub
from actors.stream.sources.queue import LocalQueueBackend, MessageQueue, QueuePublisher
from actors.stream.topology import Topology
from cluster.errors import NotFoundError
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.routes_streams import MAX_EVENT_BYTES
from tests.clock import FakeClock
from tests.stream_support import window_topology
from tests.unit.gateway_support import authenticator, client, error_of, key_store

STREAMS = "/api/v1/streams"
QUEUE = "stream.orders"
EVENT = {"seq": 1, "k": "a", "v": 2.5, "ts": 10.0}
EVENTS = [EVENT, {"seq": 2, "k": "b", "v": 1, "ts": 11.0}]
# The stand-in's long polls wake this often, so a test never waits on a parked thread.
_POLL_CAP_S = 0.2


class FakeStreams:
    """``StreamControl``'s methods over the real pure pieces: topology validation, the
    in-cluster ``MessageQueue`` (through ``QueuePublisher``) and the ``OutputHub``."""

    def __init__(self, max_ready: int = 100) -> None:
        self.specs: dict[str, Topology] = {}
        self.states: dict[str, str] = {}
        self.created_by: dict[str, str | None] = {}
        self.queues: dict[str, MessageQueue] = {}
        self.hub = OutputHub()
        self.publisher = QueuePublisher(lambda name: LocalQueueBackend(self.queue(name)))
        self.max_ready = max_ready

    def queue(self, name: str) -> MessageQueue:
        return self.queues.setdefault(name, MessageQueue(name, max_ready=self.max_ready))

    async def deploy(
        self, topology: Topology, *, fresh: bool = False, created_by: str | None = None
    ) -> dict[str, Any]:
        self.specs[topology.name] = topology
        self.states[topology.name] = "running"
        self.created_by[topology.name] = created_by
        return {"name": topology.name, "state": "running", "epoch": 0, "fresh": fresh}

    async def stop(self, name: str) -> dict[str, Any]:
        await self.topology(name)
        self.states[name] = "stopped"
        return {"name": name, "state": "stopped"}

    async def ls(self) -> list[dict[str, Any]]:
        return [{"name": n, "state": s} for n, s in sorted(self.states.items())]

    async def status(self, name: str) -> dict[str, Any]:
        topology = await self.topology(name)
        return {"name": name, "state": self.states[name], "queue": self.queue_stats(topology)}

    def queue_stats(self, topology: Topology) -> dict[str, int] | None:
        queue = self.queues.get(topology.queue_name)
        return None if queue is None else queue.stats()

    async def tail(
        self, name: str, after: int = 0, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]:
        if self.states.get(name) != "running":
            raise NotFoundError(kind="running stream", name=name)
        wait = min(timeout_s, _POLL_CAP_S)
        return await asyncio.to_thread(self.hub.read, after, outputs, wait)

    async def topology(self, name: str) -> Topology:
        if name not in self.specs:
            raise NotFoundError(kind="stream topology", name=name)
        return self.specs[name]

    async def publish(self, name: str, body: bytes, *, content_type: str, message_id: str) -> str:
        topology = await self.topology(name)
        await self.publisher.publish_events(
            topology.queue_name, body, content_type=content_type, message_id=message_id
        )
        return topology.queue_name


@dataclass
class Api:
    app: FastAPI
    http: httpx.AsyncClient
    keys: dict[Role, str]
    streams: FakeStreams

    async def call(
        self, method: str, path: str, role: Role | None = Role.SERVICE, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["X-API-Key"] = self.keys[role]
        return await self.http.request(method, STREAMS + path, headers=headers, **kwargs)

    async def events(
        self, body: bytes, content_type: str = "application/json", **headers: str
    ) -> httpx.Response:
        return await self.call(
            "POST",
            "/orders/events",
            content=body,
            headers={"Content-Type": content_type, **headers},
        )

    def queued(self) -> list[Any]:
        return self.streams.queue(QUEUE).get(100)


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    clock = FakeClock()
    streams = FakeStreams()
    async with key_store(Settings(data_dir=data_dir), clock) as store:
        keys = {role: (await store.create(role))[0] for role in Role}
        app = create_app(GatewayDeps(authenticator=authenticator(store, clock), streams=streams))
        async with client(app) as http:
            yield Api(app, http, keys, streams)


@pytest.fixture
async def deployed(api: Api) -> Api:
    await api.streams.deploy(window_topology("orders"))
    return api


def arrow_body(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# --- lifecycle and reads -----------------------------------------------------------------


async def test_no_key_is_401(api: Api) -> None:
    reply = await api.call("GET", "", role=None)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "unauthenticated"


async def test_engineer_deploys_and_analyst_reads_but_cannot_deploy(api: Api) -> None:
    spec = window_topology("orders").model_dump(mode="json", by_alias=True)
    refused = await api.call("POST", "", role=Role.ANALYST, json=spec)
    assert refused.status_code == 403
    assert "stream:deploy" in error_of(refused)["message"]
    assert "orders" not in api.streams.specs

    reply = await api.call("POST", "?fresh=true", role=Role.ENGINEER, json=spec)
    assert reply.status_code == 201, reply.text
    assert reply.json() == {"name": "orders", "state": "running", "epoch": 0, "fresh": True}
    assert api.streams.created_by["orders"] == await _key_id(api, Role.ENGINEER)

    listed = await api.call("GET", "", role=Role.ANALYST)
    assert listed.status_code == 200 and listed.json() == [{"name": "orders", "state": "running"}]
    status = await api.call("GET", "/orders", role=Role.ANALYST)
    assert status.status_code == 200 and status.json()["state"] == "running"
    assert (await api.call("GET", "", role=Role.SERVICE)).status_code == 403


async def _key_id(api: Api, role: Role) -> str:
    reply = await api.http.get("/api/v1/whoami", headers={"X-API-Key": api.keys[role]})
    key_id: str = reply.json()["key_id"]
    return key_id


async def test_invalid_topology_is_422_listing_the_problem(api: Api) -> None:
    spec = window_topology("orders").model_dump(mode="json", by_alias=True)
    spec["key_by"] = ["nope"]
    reply = await api.call("POST", "", role=Role.ENGINEER, json=spec)
    assert reply.status_code == 422
    error = error_of(reply)
    assert error["code"] == "invalid_topology"
    assert "unknown columns ['nope']" in error["message"]


async def test_stop_and_unknown_names(deployed: Api) -> None:
    assert (await deployed.call("DELETE", "/orders", role=Role.ANALYST)).status_code == 403
    reply = await deployed.call("DELETE", "/orders", role=Role.ADMIN)
    assert reply.status_code == 200 and reply.json()["state"] == "stopped"
    for method, path in (("GET", "/nope"), ("DELETE", "/nope"), ("GET", "/nope/tail")):
        missing = await deployed.call(method, path, role=Role.ENGINEER)
        assert missing.status_code == 404, (method, path)
        assert "'nope' does not exist" in error_of(missing)["message"]


async def test_tail_filters_outputs_and_refuses_unknown_ones(deployed: Api) -> None:
    deployed.streams.hub.publish(1, {"per_10s": pa.table({"k": ["a"], "n": [2]})})
    deployed.streams.hub.publish(1, {"events": pa.table({"k": ["a"], "v": [1.0]})})
    reply = await deployed.call("GET", "/orders/tail?outputs=per_10s", role=Role.ANALYST)
    assert reply.status_code == 200, reply.text
    page = reply.json()
    assert page["cursor"] == 2 and page["missed"] == 0
    assert [(e["seq"], e["output"], e["rows"]) for e in page["entries"]] == [
        (1, "per_10s", [{"k": "a", "n": 2}])
    ]
    after = await deployed.call("GET", "/orders/tail?after=2&timeout_s=0.05", role=Role.ANALYST)
    assert after.json()["entries"] == []
    bad = await deployed.call("GET", "/orders/tail?outputs=per_10s,typo", role=Role.ANALYST)
    assert bad.status_code == 422
    assert "typo" in error_of(bad)["message"] and "per_10s" in error_of(bad)["message"]


# --- events over HTTP ----------------------------------------------------------------------


async def test_json_object_is_queued_with_the_idempotency_key(deployed: Api) -> None:
    body = json.dumps(EVENT).encode()
    reply = await deployed.events(body, **{"Idempotency-Key": "order-1"})
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": 1, "message_id": "order-1", "queue": QUEUE}
    [delivery] = deployed.queued()
    assert (delivery.message_id, delivery.body, delivery.content_type) == (
        "order-1",
        body,
        "application/json",
    )


async def test_json_array_is_one_message_with_a_new_id(deployed: Api) -> None:
    body = json.dumps(EVENTS).encode()
    reply = await deployed.events(body, "application/json; charset=utf-8")
    assert reply.status_code == 202, reply.text
    accepted = reply.json()
    assert accepted["accepted"] == 2 and len(accepted["message_id"]) == 32
    [delivery] = deployed.queued()
    assert delivery.body == body and delivery.message_id == accepted["message_id"]


async def test_arrow_ipc_is_queued_as_sent(deployed: Api) -> None:
    body = arrow_body(pa.Table.from_pylist(EVENTS * 3))
    reply = await deployed.events(body, ARROW_STREAM, **{"Idempotency-Key": "batch-7"})
    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == 6
    [delivery] = deployed.queued()
    assert (delivery.message_id, delivery.content_type, delivery.body) == (
        "batch-7",
        ARROW_STREAM,
        body,
    )


@pytest.mark.parametrize(
    ("body", "content_type", "code", "says"),
    [
        (b'{"seq": 1,', "application/json", "undecodable_message", "not JSON"),
        (b"[1, 2]", "application/json", "undecodable_message", "not an object or an array"),
        (b"not arrow", ARROW_STREAM, "undecodable_message", "not an Arrow IPC stream"),
        (b"[]", "application/json", "invalid_events", "no events"),
        (
            json.dumps({**EVENT, "v": "lots"}).encode(),
            "application/json",
            "invalid_events",
            "column 'v' (string) does not fit double",
        ),
        (
            json.dumps({"seq": 1, "k": "a", "v": 1.0}).encode(),
            "application/json",
            "invalid_events",
            "missing required columns ['ts']",
        ),
    ],
)
async def test_poison_is_refused_with_the_problem_and_not_queued(
    deployed: Api, body: bytes, content_type: str, code: str, says: str
) -> None:
    reply = await deployed.events(body, content_type)
    assert reply.status_code == 422, reply.text
    error = error_of(reply)
    assert error["code"] == code
    assert says in error["message"]
    assert deployed.queued() == []


async def test_oversize_is_413_and_unknown_type_is_415(deployed: Api) -> None:
    huge = await deployed.events(b"[" + b" " * MAX_EVENT_BYTES + b"]")
    assert huge.status_code == 413
    assert error_of(huge)["code"] == "payload_too_large"
    text = await deployed.events(b"seq=1", "text/plain")
    assert text.status_code == 415
    assert "application/json" in error_of(text)["message"]
    assert deployed.queued() == []


async def test_events_need_a_known_stream_and_the_publish_permission(deployed: Api) -> None:
    body = json.dumps(EVENT).encode()
    unknown = await deployed.call("POST", "/nope/events", content=body)
    assert unknown.status_code == 404
    for role in (Role.ENGINEER, Role.ADMIN):
        ok = await deployed.call("POST", "/orders/events", role=role, content=body)
        assert ok.status_code == 202, (role, ok.text)
    refused = await deployed.call("POST", "/orders/events", role=Role.ANALYST, content=body)
    assert refused.status_code == 403
    assert (
        await deployed.call("POST", "/orders/events", role=None, content=body)
    ).status_code == 401


async def test_full_queue_is_503_with_retry_after(deployed: Api) -> None:
    deployed.streams.queues[QUEUE] = MessageQueue(QUEUE, max_ready=1)
    body = json.dumps(EVENT).encode()
    assert (await deployed.events(body)).status_code == 202
    reply = await deployed.events(body)
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert error_of(reply)["code"] == "queue_full"


# --- WebSockets ---------------------------------------------------------------------------


class Socket:
    """A WebSocket client driving the ASGI app in this event loop."""

    def __init__(self, app: FastAPI, path: str, headers: dict[str, str] | None = None) -> None:
        route, _, query = path.partition("?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "scheme": "ws",
            "path": route,
            "raw_path": route.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "server": ("t", 80),
            "client": ("127.0.0.1", 1234),
            "subprotocols": [],
        }
        self.app = app
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def connect(self) -> Message:
        """Start the handshake; the app's answer (accept, or close before accepting)."""
        self.task = asyncio.create_task(self.app(self.scope, self.inbox.get, self.outbox.put))
        await self.inbox.put({"type": "websocket.connect"})
        return await self.next()

    async def next(self) -> Message:
        return await asyncio.wait_for(self.outbox.get(), 5)

    async def send(self, data: str | bytes) -> None:
        key = "text" if isinstance(data, str) else "bytes"
        await self.inbox.put({"type": "websocket.receive", key: data})

    async def json(self) -> Any:
        message = await self.next()
        assert message["type"] == "websocket.send", message
        return json.loads(message["text"])

    async def disconnect(self) -> None:
        await self.inbox.put({"type": "websocket.disconnect", "code": 1000})
        assert self.task is not None
        await asyncio.wait_for(self.task, 5)


async def test_socket_ingest_answers_every_frame_and_stays_open(deployed: Api) -> None:
    socket = Socket(deployed.app, f"{STREAMS}/orders/ingest?api_key={deployed.keys[Role.SERVICE]}")
    assert (await socket.connect())["type"] == "websocket.accept"
    await socket.send(json.dumps(EVENT))
    good = await socket.json()
    assert good["ok"] is True and good["accepted"] == 1 and good["queue"] == QUEUE
    await socket.send("{broken")
    bad = await socket.json()
    assert bad["ok"] is False
    assert bad["error"]["code"] == "undecodable_message" and "not JSON" in bad["error"]["message"]
    await socket.send(json.dumps([{**EVENT, "v": "x"}]))
    assert (await socket.json())["error"]["code"] == "invalid_events"
    await socket.send(arrow_body(pa.Table.from_pylist(EVENTS)))
    arrow = await socket.json()
    assert arrow["ok"] is True and arrow["accepted"] == 2
    await socket.disconnect()
    queued = deployed.queued()
    assert [d.message_id for d in queued] == [good["message_id"], arrow["message_id"]]
    assert [d.content_type for d in queued] == ["application/json", ARROW_STREAM]


async def test_socket_ingest_with_header_key(deployed: Api) -> None:
    headers = {"Authorization": f"Bearer {deployed.keys[Role.ENGINEER]}"}
    socket = Socket(deployed.app, f"{STREAMS}/orders/ingest", headers)
    assert (await socket.connect())["type"] == "websocket.accept"
    await socket.send(json.dumps(EVENTS))
    assert (await socket.json())["accepted"] == 2
    await socket.disconnect()


@pytest.mark.parametrize(
    ("path", "role", "code"),
    [
        ("/orders/ingest", None, 4401),
        ("/orders/subscribe", None, 4401),
        ("/orders/ingest?api_key=dp_wrong", None, 4401),
        ("/orders/ingest", Role.ANALYST, 4403),
        ("/orders/subscribe", Role.SERVICE, 4403),
        ("/nope/ingest", Role.SERVICE, 4404),
        ("/nope/subscribe", Role.ANALYST, 4404),
    ],
)
async def test_socket_refusals_say_why_and_close_with_a_code(
    deployed: Api, path: str, role: Role | None, code: int
) -> None:
    headers = {} if role is None else {"X-API-Key": deployed.keys[role]}
    socket = Socket(deployed.app, STREAMS + path, headers)
    assert (await socket.connect())["type"] == "websocket.accept"
    frame = await socket.json()
    assert frame["ok"] is False and frame["error"]["message"]
    closed = await socket.next()
    assert closed["type"] == "websocket.close" and closed["code"] == code
    assert socket.task is not None
    await asyncio.wait_for(socket.task, 5)


async def test_socket_subscribe_streams_entries_until_disconnect(deployed: Api) -> None:
    hub = deployed.streams.hub
    hub.publish(1, {"per_10s": pa.table({"k": ["a"], "n": [1]})})
    hub.publish(1, {"events": pa.table({"k": ["a"]})})
    key = deployed.keys[Role.ANALYST]
    socket = Socket(deployed.app, f"{STREAMS}/orders/subscribe?outputs=per_10s&api_key={key}")
    assert (await socket.connect())["type"] == "websocket.accept"
    first = await socket.json()
    assert (first["seq"], first["output"], first["rows"]) == (1, "per_10s", [{"k": "a", "n": 1}])
    hub.publish(2, {"per_10s": pa.table({"k": ["b"], "n": [5]})})
    second = await socket.json()
    assert (second["seq"], second["epoch"], second["rows"]) == (3, 2, [{"k": "b", "n": 5}])
    await socket.disconnect()
    assert socket.outbox.empty()
