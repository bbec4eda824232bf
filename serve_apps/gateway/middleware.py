"""Plain ASGI middleware: request id, JSON access log, metrics, and the one error body.

Written against ASGI directly rather than Starlette's ``BaseHTTPMiddleware``, which
copies every response body through an extra task and costs throughput on the hot path.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.logging import bind_request_id, new_request_id, redact, reset_request_id
from serve_apps.gateway.metrics import GatewayMetrics

logger = logging.getLogger(__name__)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# On every response unless the route set its own (OWASP API8): no MIME sniffing, no
# framing, no referrer leaking URLs, and no caching of answers that carry data.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
)


def with_security_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` plus each of ``SECURITY_HEADERS`` it does not set already."""
    present = {name.lower() for name, _ in headers}
    return headers + [h for h in SECURITY_HEADERS if h[0] not in present]


def request_id_from(scope: Scope) -> str:
    """Take the caller's ``X-Request-ID`` when it is a sane token; otherwise make one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _VALID_REQUEST_ID.match(candidate):
                return candidate
            break
    return new_request_id()


def error_body(code: str, message: str, request_id: str | None) -> bytes:
    """The one error body; the message passes ``redact`` (no secret leaves in an error)."""
    return json.dumps(
        {"error": {"code": code, "message": redact(message), "request_id": request_id}}
    ).encode()


def route_template(scope: Scope) -> str:
    """The matched route's whole path template, ``/api/v1/keys/{key_id}/grants`` (bounded
    label cardinality), or 'unmatched'.

    FastAPI keeps included routers nested, so ``scope["route"]`` is the innermost route
    with its own router's prefix only; the template as served is on the effective route
    context FastAPI records in ``scope["fastapi"]`` (read defensively: not public API).
    """
    context = (scope.get("fastapi") or {}).get("effective_route_context")
    full = getattr(context, "path_format", None)
    if isinstance(full, str) and full:
        return full
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"


class RequestContextMiddleware:
    """Binds the request id, echoes it in the response, logs and counts every request.

    Any exception that escapes the app becomes a 500 with the one error body; the
    traceback goes to the log with the request id, never to the client.
    """

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, echo_request_id: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        # Serve's own ingress already echoes X-Request-ID; a second copy would be noise.
        self.echo_request_id = echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        token = bind_request_id(request_id)
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = with_security_headers(list(message.get("headers", ())))
                if self.echo_request_id:
                    headers.append(header)
                message["headers"] = headers
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope.get("path")})
            if not status["sent"] and scope["type"] == "http":
                await self._internal_error(send_with_id, request_id)
            status["code"] = 500
        finally:
            self.metrics.in_flight.dec()
            self._observe(scope, status["code"], time.perf_counter() - started)
            reset_request_id(token)

    async def _internal_error(self, send: Send, request_id: str) -> None:
        body = error_body("internal_error", "internal error; quote the request id", request_id)
        await send(
            {
                "type": "http.response.start",
                "status": 500,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = route_template(scope)
        method: Any = scope.get("method", "WS")
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.latency.labels(route, method).observe(seconds)
        if status >= 400:
            self.metrics.errors.labels(route, str(status)).inc()
            logger.info(
                "request",
                extra={"method": method, "path": scope.get("path"), "status": status},
            )
