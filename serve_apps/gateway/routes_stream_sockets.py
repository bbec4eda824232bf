"""WebSocket routes of ``/api/v1/streams``: ingest frames and subscribe to outputs.

Both authenticate at connect and re-check the key while open, at each frame and every
few seconds (``serve_apps/gateway/sockets.py``); include the router at the app under
``/api/v1``. Ingest frames are checked like HTTP event bodies
(``accept_events``); subscribers get committed output entries only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, WebSocket
from starlette.websockets import WebSocketDisconnect

from actors.ingest.sources.messages import ARROW_STREAM
from cluster.errors import DatapunkError
from cluster.security.principal import Authenticator
from serve_apps.gateway.routes_streams import (
    JSON,
    MAX_EVENT_BYTES,
    PUBLISH_PERMISSION,
    READ_PERMISSION,
    SUBSCRIBE_POLL_S,
    EventsAccepted,
    StreamOps,
    accept_events,
    queue_fed,
    wanted_outputs,
)
from serve_apps.gateway.sockets import (
    DEFAULT_RECHECK_S,
    SocketSession,
    error_frame,
    refuse,
    socket_guard,
)

Recheck = Callable[[], Awaitable[object]]


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned poll's outcome, so asyncio does not log it as lost."""
    if not future.cancelled():
        future.exception()


async def _until_disconnect(websocket: WebSocket) -> None:
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass  # a subscriber has nothing to say; ignore what it sends


async def _ingest_frame(
    streams: StreamOps, name: str, message: Mapping[str, Any], limit: int
) -> EventsAccepted:
    if message.get("text") is not None:
        body, content_type = message["text"].encode("utf-8"), JSON
    else:
        body, content_type = message.get("bytes") or b"", ARROW_STREAM
    return await accept_events(streams, name, body, content_type, uuid.uuid4().hex, limit)


async def _ingest_loop(
    websocket: WebSocket, streams: StreamOps, name: str, limit: int, recheck: Recheck
) -> None:
    while (message := await websocket.receive())["type"] != "websocket.disconnect":
        await recheck()  # a key revoked meanwhile ends the socket, not just this frame
        try:
            accepted = await _ingest_frame(streams, name, message, limit)
            reply = {"ok": True, **accepted.model_dump()}
        except DatapunkError as exc:  # bad input is answered, not fatal
            reply = error_frame(exc, websocket)
        await websocket.send_json(reply)


async def _forward(
    websocket: WebSocket,
    streams: StreamOps,
    name: str,
    after: int,
    outputs: list[str] | None,
    recheck: Recheck,
) -> None:
    """Long-poll ``tail`` and send each entry as a frame, until the client goes."""
    gone = asyncio.ensure_future(_until_disconnect(websocket))
    poll: asyncio.Future[dict[str, Any]] | None = None
    cursor = after
    try:
        while True:
            poll = asyncio.ensure_future(streams.tail(name, cursor, outputs, SUBSCRIBE_POLL_S))
            await asyncio.wait({poll, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone.done():
                return
            page = poll.result()
            await recheck()  # no entry goes to a caller whose key stopped working
            if page["missed"]:
                await websocket.send_json({"missed": page["missed"], "cursor": page["cursor"]})
            for entry in page["entries"]:
                await websocket.send_json(entry)
            # A cursor behind ours means the coordinator restarted with an empty ring.
            cursor = page["cursor"] if page["cursor"] >= cursor else 0
    finally:
        gone.cancel()
        if poll is not None and not poll.done():
            poll.cancel()
            poll.add_done_callback(_ignore_outcome)


def streams_socket_router(
    streams: StreamOps,
    authenticator: Authenticator,
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
    recheck_s: float = DEFAULT_RECHECK_S,
) -> APIRouter:
    """The WebSocket routes; include at the app under ``/api/v1`` (they authenticate).

    ``recheck_s``: how often an open socket's key is checked again (see ``sockets``).
    """
    router = APIRouter(prefix="/streams")
    publisher = socket_guard(
        authenticator, PUBLISH_PERMISSION, recheck_s=recheck_s, target_kind="stream"
    )
    reader = socket_guard(authenticator, READ_PERMISSION, recheck_s=recheck_s, target_kind="stream")

    @router.websocket("/{name}/ingest")
    async def ingest(
        websocket: WebSocket, name: str, session: SocketSession = Depends(publisher)
    ) -> None:
        """Each text (JSON) or binary (Arrow IPC) frame is one message; one reply each."""
        if not await session.admit():
            return
        try:
            queue_fed(await streams.topology(name))
            await session.guard(
                _ingest_loop(websocket, streams, name, max_event_bytes, session.check)
            )
        except DatapunkError as exc:
            await refuse(websocket, exc)
        except WebSocketDisconnect:
            return

    @router.websocket("/{name}/subscribe")
    async def subscribe(
        websocket: WebSocket,
        name: str,
        outputs: str | None = None,
        after: int = 0,
        session: SocketSession = Depends(reader),
    ) -> None:
        """Committed output entries as JSON frames, from ``after`` on."""
        if not await session.admit():
            return
        try:
            wanted = wanted_outputs(await streams.topology(name), outputs)
            await session.guard(
                _forward(websocket, streams, name, max(after, 0), wanted, session.check)
            )
        except DatapunkError as exc:
            await refuse(websocket, exc)
        except WebSocketDisconnect:
            return

    return router
