"""``/api/v1/streams``: deploy, inspect, stop and feed stream topologies; tail their outputs.

Events are checked here with the stream's own decoder (``decode_body`` then ``conform``
against the topology's schema) before they are queued, so a client learns at once that a
body is not JSON or that a value does not fit its column, instead of finding it later
among the dead letters. A body is queued whole as one message: a batch stays a batch.

The HTTP routes sit under the v1 router (API key, then a permission per route); the
WebSocket ones live in ``routes_stream_sockets.py`` and authenticate at connect.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any, ClassVar, Protocol

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from actors.ingest.sources.messages import ARROW_STREAM, decode_body
from actors.stream.decode import SchemaViolation, conform
from actors.stream.topology import (
    BUILTIN_OUTPUTS,
    LakeReplaySource,
    LakeSinkSpec,
    QueueSource,
    Topology,
    load_topology,
)
from cluster.errors import DatapunkError, InvalidInputError, ServiceUnavailableError
from cluster.security import grants
from cluster.security.principal import Principal
from serve_apps.gateway import access
from serve_apps.gateway.middleware import error_body
from serve_apps.gateway.openapi import ErrorBody

READ_PERMISSION = "stream:read"
DEPLOY_PERMISSION = "stream:deploy"
PUBLISH_PERMISSION = "stream:publish"
# Every route under /streams/{name} is checked on that stream (scoped grants) as well.
READ = Depends(access.object_permission(READ_PERMISSION, "stream"))
DEPLOY = Depends(access.object_permission(DEPLOY_PERMISSION, "stream"))
PUBLISH = Depends(access.object_permission(PUBLISH_PERMISSION, "stream"))
MAX_EVENT_BYTES = 8 * 1024**2
MAX_TAIL_S = 30.0
SUBSCRIBE_POLL_S = 10.0
JSON = "application/json"
# Decoding a large body takes long enough to stall every other request on the loop.
_THREAD_ABOVE_BYTES = 256 * 1024
_IDEMPOTENCY_KEY_CHARS = 200


class StreamOps(Protocol):
    """What the routes call: ``actors.stream.control.StreamControl`` or a test double."""

    async def deploy(
        self, topology: Topology, *, fresh: bool = False, created_by: str | None = None
    ) -> dict[str, Any]: ...
    async def stop(self, name: str) -> dict[str, Any]: ...
    async def ls(self) -> list[dict[str, Any]]: ...
    async def status(self, name: str) -> dict[str, Any]: ...
    async def tail(
        self, name: str, after: int = 0, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]: ...
    async def topology(self, name: str) -> Topology: ...
    async def publish(
        self, name: str, body: bytes, *, content_type: str, message_id: str
    ) -> str: ...


class PayloadTooLargeError(DatapunkError):
    """A request body (or WebSocket frame) over the gateway's limit for it."""

    code: ClassVar[str] = "payload_too_large"
    http_status: ClassVar[int] = 413

    def __init__(self, *, size: int, limit: int) -> None:
        super().__init__(
            f"the body has {size} bytes, over the limit of {limit}; "
            "split the events into several smaller messages",
            size=size,
            limit=limit,
        )


class UnsupportedEventTypeError(DatapunkError):
    """Events in a content type the stream cannot decode."""

    code: ClassVar[str] = "unsupported_media_type"
    http_status: ClassVar[int] = 415

    def __init__(self, *, content_type: str) -> None:
        super().__init__(
            f"content type {content_type!r} is not one the stream decodes; send "
            f"{JSON} (an object or an array of objects) or {ARROW_STREAM}",
            content_type=content_type,
        )


class EventsRejectedError(InvalidInputError):
    """Events that decode but do not fit the topology's schema."""

    code: ClassVar[str] = "invalid_events"

    def __init__(self, *, stream: str, problem: str, schema: dict[str, str]) -> None:
        DatapunkError.__init__(
            self,
            f"events for stream {stream!r} do not fit its schema: {problem}; send rows of {schema}",
            stream=stream,
            problem=problem,
        )


class EventsAccepted(BaseModel):
    accepted: int = Field(description="Events in the message.")
    message_id: str = Field(description="The Idempotency-Key, else a new id.")
    queue: str = Field(description="The queue the message went to.")


class TailEntry(BaseModel):
    seq: int
    epoch: int
    output: str
    rows: list[dict[str, Any]]


class TailPage(BaseModel):
    cursor: int = Field(description="Pass as `after` to read on.")
    missed: int = Field(description="Entries that fell out of the ring unread.")
    entries: list[TailEntry]


# --- events ----------------------------------------------------------------------------


def event_type(content_type: str | None) -> str:
    """``application/json`` (also when absent) or Arrow IPC; 415 for anything else."""
    kind = (content_type or JSON).split(";")[0].strip().lower()
    if kind in (JSON, ARROW_STREAM):
        return kind
    raise UnsupportedEventTypeError(content_type=kind)


def required_columns(topology: Topology) -> list[str]:
    """The time and key columns events must carry (derived ones are computed later)."""
    return [c for c in (topology.time_column, *topology.key_by) if c not in topology.derive]


def count_events(topology: Topology, body: bytes, content_type: str, message_id: str) -> int:
    """How many events ``body`` holds, checked as the stream will check them; 422 if poison."""
    table = decode_body(body, content_type, message_id, topology.queue_name)
    if table.num_rows == 0:
        raise EventsRejectedError(
            stream=topology.name, problem="the body holds no events", schema=topology.event_schema
        )
    try:
        conform(table, topology.arrow_schema(), required_columns(topology))
    except SchemaViolation as exc:
        raise EventsRejectedError(
            stream=topology.name, problem=str(exc), schema=topology.event_schema
        ) from None
    return int(table.num_rows)


def queue_fed(topology: Topology) -> Topology:
    if not isinstance(topology.source, QueueSource):
        raise InvalidInputError(
            field="stream",
            value=topology.name,
            allowed=f"a topology fed by a queue; {topology.name} replays a Lake table",
        )
    return topology


async def accept_events(
    streams: StreamOps, name: str, body: bytes, content_type: str, message_id: str, limit: int
) -> EventsAccepted:
    """Check ``body`` against the deployed topology and queue it as one message."""
    if len(body) > limit:
        raise PayloadTooLargeError(size=len(body), limit=limit)
    topology = queue_fed(await streams.topology(name))
    if len(body) > _THREAD_ABOVE_BYTES:
        count = await asyncio.to_thread(count_events, topology, body, content_type, message_id)
    else:
        count = count_events(topology, body, content_type, message_id)
    queue = await streams.publish(name, body, content_type=content_type, message_id=message_id)
    return EventsAccepted(accepted=count, message_id=message_id, queue=queue)


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) as soon as it is known to be over ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(size=int(declared), limit=limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(size=size, limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _message_id(idempotency_key: str | None) -> str:
    key = (idempotency_key or "").strip()
    if len(key) > _IDEMPOTENCY_KEY_CHARS:
        raise InvalidInputError(
            field="Idempotency-Key",
            value=key[:40] + "…",
            allowed=f"at most {_IDEMPOTENCY_KEY_CHARS} characters",
        )
    return key or uuid.uuid4().hex


def _unavailable(exc: DatapunkError, request: Request) -> Response:
    """The one error body with ``Retry-After``: a full queue empties within seconds."""
    body = error_body(exc.code, exc.message, getattr(request.state, "request_id", None))
    return Response(
        body, status_code=exc.http_status, media_type=JSON, headers={"Retry-After": "1"}
    )


def wanted_outputs(topology: Topology, raw: str | None) -> list[str] | None:
    """``a,b`` as a list of the topology's outputs (None: all); 422 naming the known ones."""
    names = [n.strip() for n in (raw or "").split(",") if n.strip()]
    if not names:
        return None
    known = [op.name for op in topology.operators] + list(BUILTIN_OUTPUTS)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise InvalidInputError(
            field="outputs", value=",".join(unknown), allowed=f"outputs of {topology.name}: {known}"
        )
    return names


def check_topology(request: Request, topology: Topology) -> None:
    """A deploy's objects: the stream, the Lake table it replays, the tables it sinks to
    (its own late and dead-letter tables come with the stream)."""
    access.check(request, DEPLOY_PERMISSION, grants.stream(topology.name))
    if isinstance(topology.source, LakeReplaySource):
        access.check_table(request, "lake.table:read", topology.source.table)
    sinks = [s.table for s in topology.sinks if isinstance(s, LakeSinkSpec)]
    access.check_tables(request, "lake.table:write", sinks)


# --- HTTP ------------------------------------------------------------------------------


def streams_router(streams: StreamOps, *, max_event_bytes: int = MAX_EVENT_BYTES) -> APIRouter:
    """The HTTP routes; include under the authenticated v1 router."""
    router = APIRouter(prefix="/streams", tags=["streams"])

    @router.get("", dependencies=[READ], summary="Deployed topologies and their live state.")
    async def list_streams(request: Request) -> list[dict[str, Any]]:
        listed = await streams.ls()
        return access.visible(request, READ_PERMISSION, listed, lambda s: grants.stream(s["name"]))

    @router.post(
        "",
        status_code=201,
        dependencies=[DEPLOY],
        summary="Deploy (or redeploy) a topology; resumes from its checkpoint unless fresh.",
    )
    async def deploy(
        request: Request,
        spec: Annotated[dict[str, Any], Body(description="The topology, as in its YAML file.")],
        fresh: Annotated[bool, Query(description="Drop its checkpoints first.")] = False,
    ) -> dict[str, Any]:
        caller: Principal = request.state.principal
        topology = load_topology(spec)
        check_topology(request, topology)
        return await streams.deploy(topology, fresh=fresh, created_by=caller.key_id)

    @router.get("/{name}", dependencies=[READ], summary="A topology's state, counters, queue.")
    async def stream_status(name: str) -> dict[str, Any]:
        return await streams.status(name)

    @router.delete(
        "/{name}", dependencies=[DEPLOY], summary="Stop after committing; checkpoints are kept."
    )
    async def stop(name: str) -> dict[str, Any]:
        return await streams.stop(name)

    @router.get(
        "/{name}/tail",
        dependencies=[READ],
        summary="Committed outputs after a cursor; long-polls up to timeout_s (30 s at most).",
        responses={200: {"model": TailPage}},
    )
    async def tail(
        name: str,
        after: Annotated[int, Query(ge=0, description="The cursor of the last page.")] = 0,
        outputs: Annotated[str | None, Query(description="Comma-separated outputs.")] = None,
        timeout_s: Annotated[float, Query(ge=0, description="Wait for an entry.")] = 0.0,
    ) -> dict[str, Any]:
        wanted = wanted_outputs(await streams.topology(name), outputs)
        return await streams.tail(name, after, wanted, min(timeout_s, MAX_TAIL_S))

    @router.post(
        "/{name}/events",
        status_code=202,
        response_model=EventsAccepted,
        dependencies=[PUBLISH],
        summary=f"Queue one message of events: JSON object/array or {ARROW_STREAM}.",
        responses={
            413: {"model": ErrorBody, "description": "Body over the limit."},
            415: {"model": ErrorBody, "description": "Neither JSON nor Arrow IPC."},
            422: {
                "model": ErrorBody,
                "description": "Not decodable, or rows that do not fit the schema.",
            },
            503: {
                "model": ErrorBody,
                "description": "The queue is full; retry after Retry-After seconds.",
            },
        },
    )
    async def post_events(
        name: str,
        request: Request,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> EventsAccepted | Response:
        message_id = _message_id(idempotency_key)
        await streams.topology(name)  # an unknown stream is a 404 before the body is read
        content_type = event_type(request.headers.get("content-type"))
        body = await _read_body(request, max_event_bytes)
        try:
            return await accept_events(
                streams, name, body, content_type, message_id, max_event_bytes
            )
        except ServiceUnavailableError as exc:
            return _unavailable(exc, request)

    return router
