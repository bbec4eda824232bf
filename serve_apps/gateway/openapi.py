"""The gateway's OpenAPI document: error bodies, who may call what, and its WebSockets.

* ``ERROR_RESPONSES``: the 4xx answers every authenticated operation may give, each with
  the one error body's schema; the v1 router declares them for all its routes.
* ``install_openapi``: each operation's description says what it demands (the
  permission its ``PermissionCheck`` names, any valid key, or nothing), read from the
  route's dependencies rather than written by hand, so it cannot drift; and, since
  OpenAPI has no WebSockets, the document lists them under ``x-websockets`` (path,
  summary, permission) so the inventory is complete.

``gateway_routes``, ``route_permissions`` and ``is_authenticated`` are what the
every-route security test uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from fastapi.security.base import SecurityBase
from pydantic import BaseModel, Field

from serve_apps.gateway.auth import PermissionCheck
from serve_apps.gateway.sockets import SocketGuard


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine code: unauthenticated, permission_denied, ...")
    message: str = Field(description="What was wrong, naming the value and the fix.")
    request_id: str | None = Field(description="The request's id (also X-Request-ID).")


class ErrorBody(BaseModel):
    """The one error body of every gateway error."""

    error: ErrorDetail


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("No API key or token, or one that is malformed, unknown, expired or revoked."),
    403: _error("The caller's role (or its grants) lacks the permission this needs."),
    404: _error("What the path names does not exist, or the caller's grants hide it."),
    409: _error("The platform is not in a state where this makes sense."),
    422: _error("A parameter or the body has a value that is not allowed."),
    429: _error("Over the rate limit; retry after the Retry-After header's seconds."),
}


@dataclass(frozen=True)
class GatewayRoute:
    """One route as served: HTTP (``APIRoute``), WebSocket, or a plain one (the docs).

    ``dependant`` is the route's dependency tree with its routers' dependencies (the
    v1 router's API-key check) included; None for plain Starlette routes.
    """

    kind: Literal["http", "websocket", "plain"]
    path: str
    methods: frozenset[str]
    dependant: Dependant | None
    endpoint: Callable[..., Any] | None
    include_in_schema: bool


def gateway_routes(app: FastAPI) -> list[GatewayRoute]:
    """Every route of ``app``, included routers flattened, with its full path."""
    found = []
    for context in iter_route_contexts(app.routes):
        original = context.original_route
        kind: Literal["http", "websocket", "plain"] = "plain"
        if isinstance(original, APIRoute):
            kind = "http"
        elif isinstance(original, APIWebSocketRoute):
            kind = "websocket"
        found.append(
            GatewayRoute(
                kind=kind,
                path=str(context.path),
                methods=frozenset(getattr(context, "methods", None) or ()),
                dependant=getattr(context, "dependant", None) if kind != "plain" else None,
                endpoint=context.endpoint,
                include_in_schema=bool(getattr(context, "include_in_schema", False)),
            )
        )
    return found


def _dependants(dependant: Dependant | None) -> Iterator[Dependant]:
    for sub in dependant.dependencies if dependant is not None else ():
        yield sub
        yield from _dependants(sub)


def route_permissions(route: GatewayRoute) -> list[str]:
    """Every permission the route's dependencies demand, in declaration order."""
    found: list[str] = []
    for sub in _dependants(route.dependant):
        call = sub.call
        if isinstance(call, PermissionCheck | SocketGuard) and call.permission not in found:
            found.append(call.permission)
    return found


def is_authenticated(route: GatewayRoute) -> bool:
    """Whether the route demands credentials: a security scheme (HTTP) or a socket guard."""
    return any(
        isinstance(sub.call, SecurityBase | SocketGuard) for sub in _dependants(route.dependant)
    )


def demands(route: GatewayRoute) -> str:
    """What calling ``route`` demands, in words."""
    permissions = route_permissions(route)
    if permissions:
        return "Requires permission " + ", ".join(f"`{p}`" for p in permissions) + "."
    if is_authenticated(route):
        return "Any valid API key or access token."
    return "Public: no credentials."


def _first_line(text: str | None) -> str:
    stripped = (text or "").strip()
    return stripped.splitlines()[0] if stripped else ""


def websocket_inventory(routes: list[GatewayRoute]) -> list[dict[str, Any]]:
    """The WebSocket routes as ``x-websockets`` lists them."""
    return [
        {
            "path": route.path,
            "summary": _first_line(getattr(route.endpoint, "__doc__", None)),
            "permission": next(iter(route_permissions(route)), None),
            "credentials": "?api_key=, Authorization: Bearer, or X-API-Key at connect",
            "closes": "4401 (credentials), 4403 (permission), 4404 (unknown name), "
            "after one error frame; re-checked while open",
        }
        for route in routes
        if route.kind == "websocket"
    ]


def _describe(schema: dict[str, Any], routes: list[GatewayRoute]) -> None:
    for route in routes:
        if route.kind != "http" or not route.include_in_schema:
            continue
        for method in route.methods:
            operation = schema.get("paths", {}).get(route.path, {}).get(method.lower())
            if operation is None:
                continue
            said = demands(route)
            description = operation.get("description") or ""
            if said not in description:
                operation["description"] = f"{description}\n\n{said}" if description else said


def install_openapi(app: FastAPI) -> None:
    """Make ``app.openapi()`` say what each operation demands and list the WebSockets."""

    def openapi() -> dict[str, Any]:
        schema = FastAPI.openapi(app)  # FastAPI's own, cached until routes change
        if "x-websockets" not in schema:
            routes = gateway_routes(app)
            _describe(schema, routes)
            schema["x-websockets"] = websocket_inventory(routes)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
