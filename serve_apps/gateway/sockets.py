"""WebSocket admission and re-checking shared by the gateway's socket routes.

FastAPI's ``Request`` dependencies (the API-key check, permissions) do not run for
WebSockets, and a browser cannot set headers on one, so a socket authenticates at connect:
the key from ``?api_key=`` or the same headers HTTP reads. A refused socket gets one error
frame, then a close code of 4000 plus the HTTP status (4401, 4403, 4404, ...).

A connection outlives the check made at connect, so a ``SocketSession`` checks the same
key again every ``recheck_s`` seconds and before each message: a key revoked or expired
meanwhile closes the socket with 4401 (4403 when its permission went) once the auth
cache stops vouching for it, that is within the cache's TTL plus ``recheck_s``.
Routes declare the session as a dependency (``Depends(socket_guard(...))``), which keeps
the permission each socket needs readable from the route, as it is for HTTP routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request, WebSocket
from starlette.websockets import WebSocketDisconnect

from cluster.errors import DatapunkError
from cluster.security.principal import Authenticator, Principal
from cluster.security.rbac import require
from serve_apps.gateway.access import Target, TargetKind, authorize
from serve_apps.gateway.auth import credentials_from

DEFAULT_RECHECK_S = 1.0
T = TypeVar("T")


def error_frame(exc: DatapunkError, websocket: WebSocket) -> dict[str, Any]:
    request_id = websocket.scope.get("state", {}).get("request_id")
    return {"ok": False, **exc.to_dict(request_id)}


async def refuse(websocket: WebSocket, exc: DatapunkError) -> None:
    """One error frame, then close with 4000 + the HTTP status (4401, 4403, 4404 ...)."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json(error_frame(exc, websocket))
        await websocket.close(code=4000 + exc.http_status, reason=exc.code)


def socket_token(websocket: WebSocket) -> str:
    """``?api_key=`` (browsers cannot set headers), else the headers HTTP takes it from."""
    token = websocket.query_params.get("api_key", "").strip()
    # The HTTP rules and messages, applied to the handshake's headers.
    return token or credentials_from(
        Request({"type": "http", "headers": websocket.scope["headers"]})
    )


async def admit(websocket: WebSocket, authenticator: Authenticator, needs: str) -> bool:
    """Accept, then authenticate and authorize once; False after refusing the socket.

    Prefer ``socket_guard``: it also re-checks the key while the socket is open.
    """
    await websocket.accept()
    try:
        principal = await authenticator.authenticate(socket_token(websocket))
        require(principal, needs)
    except DatapunkError as exc:
        await refuse(websocket, exc)
        return False
    return True


@dataclass
class SocketSession:
    """One socket's caller: admitted at connect, checked again while the socket lives."""

    websocket: WebSocket
    authenticator: Authenticator
    permission: str
    recheck_s: float
    target_kind: TargetKind | None = None
    token: str = ""
    principal: Principal | None = None

    @property
    def target(self) -> Target | None:
        """The object this socket touches: the path's ``name`` as ``target_kind``."""
        name = self.websocket.path_params.get("name")
        if self.target_kind is None or not isinstance(name, str):
            return None
        return Target(self.target_kind, name)

    async def admit(self) -> bool:
        """Accept, authenticate and authorize; False after refusing the socket."""
        await self.websocket.accept()
        try:
            self.token = socket_token(self.websocket)
            await self.check()
        except DatapunkError as exc:
            await refuse(self.websocket, exc)
            return False
        return True

    async def check(self) -> Principal:
        """The connect-time key authenticated and authorized again (cached verdicts)."""
        principal = await self.authenticator.authenticate(self.token)
        authorize(principal, self.permission, self.target)
        self.principal = principal
        return principal

    async def guard(self, work: Awaitable[T]) -> T | None:
        """Run ``work`` while checking the caller every ``recheck_s`` seconds.

        A failed check cancels ``work`` and refuses the socket (4401, 4403, ...); then
        the answer is None. Whatever ``work`` raises propagates.
        """
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.recheck_s)
                if done:
                    return task.result()
                try:
                    await self.check()
                except DatapunkError as exc:
                    await _cancel(task)
                    await refuse(self.websocket, exc)
                    return None
        finally:
            await _cancel(task)


async def _cancel(task: asyncio.Future[Any]) -> None:
    if task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
        await task


@dataclass(frozen=True)
class SocketGuard:
    """A WebSocket route dependency: the ``SocketSession`` demanding ``permission``.

    Building the session does no I/O; the route calls ``admit`` then ``guard``. The
    permission (and what kind of object the path's ``name`` is) stays readable here.
    """

    authenticator: Authenticator
    permission: str
    recheck_s: float = DEFAULT_RECHECK_S
    target_kind: TargetKind | None = None

    def __call__(self, websocket: WebSocket) -> SocketSession:
        return SocketSession(
            websocket, self.authenticator, self.permission, self.recheck_s, self.target_kind
        )


def socket_guard(
    authenticator: Authenticator,
    permission: str,
    *,
    recheck_s: float = DEFAULT_RECHECK_S,
    target_kind: TargetKind | None = None,
) -> SocketGuard:
    """The dependency a socket route declares; see ``SocketGuard``."""
    if recheck_s <= 0:
        raise ValueError(f"recheck_s must be > 0 seconds, got {recheck_s}")
    return SocketGuard(authenticator, permission, recheck_s, target_kind)
