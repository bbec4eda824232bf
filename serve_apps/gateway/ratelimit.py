"""Rate limits and request-size limits of the gateway.

Two places enforce them, because who the caller is is known only after authentication:

* ``LimitsMiddleware`` (plain ASGI, inside the request-context middleware) sees every
  HTTP request first. It refuses bodies over the size limit, by ``Content-Length`` and
  again while the body streams (a chunked upload has no length); it limits calls that
  carry no credentials per client address (sign-in attempts in their own, tighter
  bucket), and it counts refused credentials (401) per address: when that bucket is
  empty, calls with credentials from there get 429 before anything is checked, which
  makes guessing keys or passwords slow.
* ``key_limit`` (a dependency of the ``/api/v1`` router, after the caller is resolved)
  takes a token from the caller's bucket for the route's class (``read``, ``write``,
  ``predict``, ``sql``, ``auth``), keyed by key or user id, so one key cannot starve
  another.

Either way the answer is 429 with ``Retry-After`` (whole seconds, rounded up) and the
one error body naming the bucket and when to retry.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cluster.errors import DatapunkError, ServiceUnavailableError
from cluster.security.principal import Principal
from cluster.security.ratelimit import (
    BucketLimit,
    Decision,
    PayloadTooLargeError,
    RateLimitedError,
    RateLimiter,
    build_rate_limiter,
)
from cluster.settings import RateLimitSettings, Settings
from serve_apps.gateway.middleware import error_body

logger = logging.getLogger(__name__)

ROUTE_CLASSES = ("read", "write", "predict", "sql", "auth")
ADDRESS_CLASSES = ("anonymous", "login", "auth_failures")
# Probes and scrapers: limiting them would turn a busy gateway into a "down" one.
EXEMPT_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
_AUTH_PATH = re.compile(r"^/api/v1/auth(/|$)")
_SQL_PATH = re.compile(r"^/api/v1/lake/sql/?$")
_PREDICT_PATH = re.compile(r"/predict(/|$)")
_GRAPHQL_PATH = re.compile(r"^/api/v1/graphql(/|$)")
_UPLOAD_PATH = re.compile(r"^/api/v1/lake/tables/[^/]+/append/?$")
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def route_class(path: str, method: str) -> str:
    """The bucket class of a route, from its path (template or concrete) and method.

    GraphQL counts as ``read``: its queries arrive as POST, and the cost of one query is
    bounded by the GraphQL layer's own depth and cost limits.
    """
    if _AUTH_PATH.search(path):
        return "auth"
    if _SQL_PATH.search(path):
        return "sql"
    if _PREDICT_PATH.search(path):
        return "predict"
    if _GRAPHQL_PATH.search(path) or method.upper() in _READ_METHODS:
        return "read"
    return "write"


def bucket_limit(settings: RateLimitSettings, name: str) -> BucketLimit:
    """The bucket ``name`` (a route or address class) as configured."""
    rate: float = getattr(settings, f"{name}_per_s")
    burst: int = getattr(settings, f"{name}_burst")
    return BucketLimit(rate, burst)


@dataclass
class GatewayLimits:
    """What both enforcement points share: the settings and the bucket store."""

    settings: RateLimitSettings
    limiter: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayLimits:
        """Redis buckets when ``redis_url`` is set, else in-process; nothing connects yet."""
        return cls(settings.rate_limits, build_rate_limiter(settings))

    async def acquire(self, key: str, bucket: str) -> Decision | None:
        """A decision for one token of ``bucket``; None when the store is down and the
        settings say to fail open."""
        try:
            return await self.limiter.acquire(key, bucket_limit(self.settings, bucket))
        except ServiceUnavailableError as exc:
            self._store_down(exc)
            return None

    async def exhausted(self, key: str, bucket: str) -> Decision | None:
        """A refusal when ``bucket`` holds less than one token (nothing is taken)."""
        limit = bucket_limit(self.settings, bucket)
        try:
            tokens = await self.limiter.peek(key, limit)
        except ServiceUnavailableError as exc:
            self._store_down(exc)
            return None
        if tokens >= 1:
            return None
        return Decision(False, tokens, (1 - tokens) / limit.rate_per_s)

    def _store_down(self, exc: ServiceUnavailableError) -> None:
        """Fail open (log and allow) or closed (raise: 503), as the settings say."""
        if not self.settings.fail_open:
            raise exc
        logger.warning("rate limits not enforced: bucket store down", extra={"error": exc.message})


def client_address(scope: Scope, trusted_proxies: list[str]) -> str:
    """The caller's address; behind a trusted proxy, the nearest untrusted X-Forwarded-For."""
    client = scope.get("client")
    peer = str(client[0]) if client else "unknown"
    if peer not in trusted_proxies:
        return peer
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-for":
            hops = [hop.strip() for hop in value.decode("latin-1").split(",") if hop.strip()]
            for hop in reversed(hops):
                if hop not in trusted_proxies:
                    return hop
    return peer


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == wanted:
            return bytes(value)
    return None


def _has_credentials(scope: Scope) -> bool:
    return _header(scope, b"authorization") is not None or _header(scope, b"x-api-key") is not None


class LimitsMiddleware:
    """Body-size limits, per-address buckets and the refused-credentials bucket (ASGI)."""

    def __init__(self, app: ASGIApp, limits: GatewayLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes, setting = self._body_limit(scope)
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await _reply(send, scope, _too_large(max_bytes, setting))
            return
        path, credentials = scope.get("path", ""), _has_credentials(scope)
        address = client_address(scope, self.limits.settings.trusted_proxies)
        if self.limits.settings.enabled and path not in EXEMPT_PATHS:
            try:
                refusal = await self._address_check(path, address, credentials)
            except DatapunkError as exc:  # the bucket store is down and fail_open is off
                refusal = exc
            if refusal is not None:
                await _reply(send, scope, refusal)
                return
        await self._forward(scope, receive, send, max_bytes, setting, address)

    async def _address_check(
        self, path: str, address: str, credentials: bool
    ) -> DatapunkError | None:
        who = f"client {address}"
        if credentials:
            bucket = "auth_failures"
            decision = await self.limits.exhausted(f"addr:{address}:{bucket}", bucket)
        else:
            bucket = "login" if _AUTH_PATH.search(path) else "anonymous"
            decision = await self.limits.acquire(f"addr:{address}:{bucket}", bucket)
        if decision is None or decision.allowed:
            return None
        limit = bucket_limit(self.limits.settings, bucket)
        return RateLimitedError(
            who=who, route_class=bucket, limit=limit, retry_after_s=decision.retry_after_s
        )

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, max_bytes: int, setting: str, address: str
    ) -> None:
        seen = {"bytes": 0, "over": False, "replied": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                if seen["bytes"] > max_bytes:
                    seen["over"] = True
                    raise _too_large(max_bytes, setting)
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of the oversized body (a parse error, a 500), the
            # client gets the one 413 that says why.
            if seen["over"]:
                if not seen["replied"] and message["type"] == "http.response.start":
                    seen["replied"] = True
                    await _reply(send, scope, _too_large(max_bytes, setting))
                return
            if message["type"] == "http.response.start" and message["status"] == 401:
                await self._count_refusal(address)
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except PayloadTooLargeError:
            if not seen["replied"]:
                seen["replied"] = True
                await _reply(send, scope, _too_large(max_bytes, setting))

    async def _count_refusal(self, address: str) -> None:
        if self.limits.settings.enabled:
            await self.limits.acquire(f"addr:{address}:auth_failures", "auth_failures")

    def _body_limit(self, scope: Scope) -> tuple[int, str]:
        settings = self.limits.settings
        media = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        if _UPLOAD_PATH.search(scope.get("path", "")) and media != b"application/json":
            return settings.max_upload_bytes, "rate_limits.max_upload_bytes"
        return settings.max_body_bytes, "rate_limits.max_body_bytes"


def _too_large(max_bytes: int, setting: str) -> PayloadTooLargeError:
    fix = (
        "split the upload into smaller appends"
        if setting.endswith("upload_bytes")
        else "send less per request (large tables: upload a CSV/Parquet file to "
        "/api/v1/lake/tables/{name}/append)"
    )
    return PayloadTooLargeError(limit_bytes=max_bytes, setting=setting, fix=fix)


async def _reply(send: Send, scope: Scope, error: DatapunkError) -> None:
    request_id = scope.get("state", {}).get("request_id")
    headers = [(b"content-type", b"application/json")]
    if isinstance(error, RateLimitedError):
        headers.append((b"retry-after", error.headers["Retry-After"].encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    body = error_body(error.code, error.message, request_id)
    await send({"type": "http.response.body", "body": body})


def key_limit(limits: GatewayLimits) -> Callable[[Request], Awaitable[None]]:
    """A dependency taking one token from the caller's bucket for the route's class.

    Put it after the dependency that resolves the caller (``request.state.principal``).
    """

    async def check(request: Request) -> None:
        if not limits.settings.enabled:
            return
        principal: Principal = request.state.principal
        route = request.scope.get("route")
        template = getattr(route, "path", None) or request.url.path
        bucket = route_class(template, request.method)
        kind = getattr(principal, "kind", "key")
        decision = await limits.acquire(f"{kind}:{principal.key_id}:{bucket}", bucket)
        if decision is not None and not decision.allowed:
            raise RateLimitedError(
                who=f"{kind} {principal.key_id}",
                route_class=bucket,
                limit=bucket_limit(limits.settings, bucket),
                retry_after_s=decision.retry_after_s,
            )

    return check


def install_limits(app: FastAPI, limits: GatewayLimits) -> None:
    """Add the middleware and the 429 handler (with ``Retry-After``) to ``app``.

    Call before the request-context middleware is added, so that one stays outermost
    (request ids, metrics and logs cover refused calls too).
    """
    app.add_middleware(LimitsMiddleware, limits=limits)

    @app.exception_handler(RateLimitedError)
    async def _rate_limited(request: Request, exc: Any) -> Response:
        body = error_body(exc.code, exc.message, getattr(request.state, "request_id", None))
        return Response(
            body, status_code=exc.http_status, media_type="application/json", headers=exc.headers
        )
