"""WebSocket admission shared by the gateway's socket routes.

FastAPI's ``Request`` dependencies (the API-key check, permissions) do not run for
WebSockets, and a browser cannot set headers on one, so a socket authenticates at connect:
the key from ``?api_key=`` or the same headers HTTP reads. A refused socket gets one error
frame, then a close code of 4000 plus the HTTP status (4401, 4403, 4404, ...).
"""

from __future__ import annotations

import contextlib
from typing import Any

from fastapi import Request, WebSocket
from starlette.websockets import WebSocketDisconnect

from cluster.errors import DatapunkError
from cluster.security.principal import Authenticator
from cluster.security.rbac import require
from serve_apps.gateway.auth import credentials_from


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
    """Accept, then authenticate and authorize; False after refusing the socket."""
    await websocket.accept()
    try:
        principal = await authenticator.authenticate(socket_token(websocket))
        require(principal, needs)
    except DatapunkError as exc:
        await refuse(websocket, exc)
        return False
    return True
