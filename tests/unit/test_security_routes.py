"""Every route the gateway serves refuses no credentials, bad credentials and a role
without the permission: REST routes from the app's route table, each GraphQL root field
from the strawberry schema, each WebSocket route.

Nothing here names a route. What each route demands is read from its dependencies (the
``PermissionCheck`` or ``SocketGuard`` it declares, the API-key security scheme of the v1
router) and what each GraphQL field demands from its ``Needs``; so a route added later is
tested the day it is added, and one that declares no check fails here unless it is put
in ``PUBLIC`` or ``ANY_CREDENTIAL`` below with the reason it may be.

The second half: an open WebSocket is checked again while it lives, so a key revoked or
expired meanwhile closes it (4401), as does a grant withdrawn (4403/4404).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
)

from cluster.security.rbac import ROLE_PERMISSIONS, Permission, Role
from serve_apps.gateway.graphql import build_schema, root_fields
from serve_apps.gateway.openapi import (
    GatewayRoute,
    gateway_routes,
    is_authenticated,
    route_permissions,
)
from tests.stream_support import window_topology
from tests.unit.full_gateway import FullGateway, full_gateway
from tests.unit.test_gateway_streams import Socket

# Routes anyone may call, each with the reason it may be.
PUBLIC: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): "liveness probe for load balancers; answers 'ok' and the version",
    ("GET", "/readyz"): "readiness probe; names adapters and their state, never secrets",
    ("GET", "/metrics"): "Prometheus scrapes it; counters by route template, no data",
    ("GET", "/openapi.json"): "the API contract is deliberately public; it holds no data",
    ("GET", "/docs"): "Swagger UI over the public contract",
    ("GET", "/docs/oauth2-redirect"): "part of Swagger UI",
    ("GET", "/redoc"): "ReDoc over the public contract",
    ("POST", "/api/v1/auth/login"): "how a person gets credentials (password, TOTP); "
    "refusals count towards lockout",
    ("POST", "/api/v1/auth/refresh"): "trades a refresh token, its own credential checked "
    "by the route, for an access token",
}
# Routes any valid credential may call: they act on the caller itself, or check per item.
ANY_CREDENTIAL: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/whoami"): "tells a caller who it is",
    ("GET", "/api/v1/auth/me"): "a signed-in person's own account",
    ("POST", "/api/v1/auth/logout"): "ends the caller's own session",
    ("POST", "/api/v1/auth/mfa/enroll"): "enrols the caller's own second factor",
    ("POST", "/api/v1/auth/mfa/confirm"): "confirms the caller's own second factor",
    ("POST", "/api/v1/graphql"): "every field demands its own permission (tested per field)",
}
BAD_CREDENTIALS = {
    "unknown key": {"X-API-Key": "dp_" + "A" * 43},
    "malformed key": {"X-API-Key": "not-a-datapunk-key"},
    "wrong scheme": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    "forged token": {"Authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},
}


def lacking(permission: str) -> Role:
    """A role whose permissions do not include ``permission`` (the least privileged)."""
    for role in (Role.SERVICE, Role.ANALYST, Role.ENGINEER):
        if Permission(permission) not in ROLE_PERMISSIONS[role]:
            return role
    raise AssertionError(f"every role has {permission}; the test cannot refuse it")


def concrete(path: str) -> str:
    """``path`` with each ``{param}`` filled in (a name no test creates)."""
    parts = [("nosuchthing" if p.startswith("{") else p) for p in path.split("/")]
    return "/".join(parts)


def http_routes(gw: FullGateway) -> list[tuple[str, GatewayRoute]]:
    return [
        (method, route)
        for route in gateway_routes(gw.app)
        if route.kind in ("http", "plain")
        for method in sorted(route.methods - {"HEAD"})
    ]


@pytest.fixture
async def gw(data_dir: Path) -> AsyncIterator[FullGateway]:
    async with full_gateway(data_dir) as gateway:
        await gateway.streams.deploy(window_topology("orders"))
        yield gateway


# --- the inventory -------------------------------------------------------------------------


async def test_every_route_is_checked_or_deliberately_open(gw: FullGateway) -> None:
    unprotected, no_permission = [], []
    for method, route in http_routes(gw):
        key = (method, route.path)
        if not is_authenticated(route):
            if key not in PUBLIC:
                unprotected.append(key)
        elif not route_permissions(route) and key not in ANY_CREDENTIAL:
            no_permission.append(key)
    assert unprotected == [], f"routes without credentials, not in PUBLIC: {unprotected}"
    assert no_permission == [], f"routes demanding no permission: {no_permission}"
    served = {(m, r.path) for m, r in http_routes(gw)}
    stale = (set(PUBLIC) | set(ANY_CREDENTIAL)) - served
    assert stale == set(), f"allow-list entries for routes that do not exist: {stale}"


async def test_public_routes_answer_without_credentials(gw: FullGateway) -> None:
    async with gw.client() as http:
        for method, path in PUBLIC:
            if path.startswith("/api/"):
                continue  # login/refresh want a body; their refusals are S1's tests
            reply = await http.request(method, path)
            assert reply.status_code in (200, 503), (path, reply.status_code)


# --- REST ------------------------------------------------------------------------------------


async def test_every_route_refuses_no_credentials(gw: FullGateway) -> None:
    wrong = []
    async with gw.client() as http:
        for method, route in http_routes(gw):
            if not is_authenticated(route):
                continue
            reply = await http.request(method, concrete(route.path))
            if reply.status_code != 401 or reply.json()["error"]["code"] != "unauthenticated":
                wrong.append((method, route.path, reply.status_code))
    assert wrong == [], f"not 401 without credentials: {wrong}"


async def test_every_route_refuses_bad_credentials(gw: FullGateway) -> None:
    revoked, record = await gw.ident.keys.create(Role.ADMIN)
    await gw.ident.keys.revoke(record.id)
    expired, _ = await gw.ident.keys.create(Role.ADMIN, expires_in=timedelta(seconds=1))
    gw.clock.advance(2)
    cases = {
        **BAD_CREDENTIALS,
        "revoked": {"X-API-Key": revoked},
        "expired": {"X-API-Key": expired},
    }
    wrong = []
    async with gw.client() as http:
        for method, route in http_routes(gw):
            if not is_authenticated(route):
                continue
            for case, headers in cases.items():
                reply = await http.request(method, concrete(route.path), headers=headers)
                if reply.status_code != 401:
                    wrong.append((method, route.path, case, reply.status_code))
    assert wrong == [], f"not 401 with bad credentials: {wrong}"


async def test_every_route_refuses_a_role_without_its_permission(gw: FullGateway) -> None:
    wrong: list[tuple[Any, ...]] = []
    checked = 0
    async with gw.client() as http:
        for method, route in http_routes(gw):
            for needed in route_permissions(route):
                role = lacking(needed)
                reply = await http.request(
                    method, concrete(route.path), headers=gw.headers(role), json={}
                )
                checked += 1
                error = reply.json().get("error", {}) if reply.status_code == 403 else {}
                if error.get("code") != "permission_denied" or needed not in error["message"]:
                    wrong.append((method, route.path, role.value, needed, reply.status_code))
    assert wrong == [], f"not 403 for a role without the permission: {wrong}"
    assert checked >= 50, f"only {checked} routes declare a permission; is the table empty?"


# --- GraphQL ---------------------------------------------------------------------------------


def _literal(kind: GraphQLInputType) -> str:
    """A valid GraphQL literal of type ``kind`` (the permission check runs before use)."""
    if isinstance(kind, GraphQLNonNull):
        return _literal(kind.of_type)
    if isinstance(kind, GraphQLList):
        return f"[{_literal(kind.of_type)}]"
    if isinstance(kind, GraphQLEnumType):
        return next(iter(kind.values))
    if isinstance(kind, GraphQLInputObjectType):
        required = {
            name: f for name, f in kind.fields.items() if isinstance(f.type, GraphQLNonNull)
        }
        inner = ", ".join(f"{name}: {_literal(f.type)}" for name, f in required.items())
        return "{" + inner + "}"
    assert isinstance(kind, GraphQLScalarType), kind
    return {"Int": "1", "Float": "1.0", "Boolean": "true"}.get(kind.name, '"nosuchthing"')


def field_query(kind: str, name: str) -> str:
    """A document calling root field ``name`` with every required argument given."""
    schema = build_schema()._schema
    root = schema.query_type if kind == "query" else schema.mutation_type
    assert root is not None
    field = root.fields[name]
    args = [
        f"{arg}: {_literal(spec.type)}"
        for arg, spec in field.args.items()
        if isinstance(spec.type, GraphQLNonNull)
    ]
    call = f"{name}({', '.join(args)})" if args else name
    returned = field.type
    while isinstance(returned, GraphQLNonNull | GraphQLList):
        returned = returned.of_type
    selection = " { __typename }" if isinstance(returned, GraphQLObjectType) else ""
    return f"{'mutation ' if kind == 'mutation' else ''}{{ {call}{selection} }}"


async def test_every_graphql_field_declares_what_it_demands() -> None:
    fields = list(root_fields(build_schema()))
    assert len(fields) >= 15
    undeclared = [f"{f.kind} {f.name}" for f in fields if f.needs is None]
    assert undeclared == [], f"GraphQL fields without Needs(permission): {undeclared}"


async def test_every_graphql_field_refuses_no_bad_credentials_and_a_role_without_it(
    gw: FullGateway,
) -> None:
    wrong: list[tuple[Any, ...]] = []
    async with gw.client() as http:
        for field in root_fields(build_schema()):
            assert field.needs is not None
            body = {"query": field_query(field.kind, field.name)}
            for case, headers in {"none": {}, **BAD_CREDENTIALS}.items():
                reply = await http.post("/api/v1/graphql", json=body, headers=headers)
                if reply.status_code != 401:
                    wrong.append((field.name, case, reply.status_code))
            role = lacking(field.needs.permission)
            reply = await http.post("/api/v1/graphql", json=body, headers=gw.headers(role))
            errors = reply.json().get("errors") or [{}]
            extensions = errors[0].get("extensions", {})
            if (reply.status_code, extensions.get("code"), extensions.get("status")) != (
                200,
                "permission_denied",
                403,
            ):
                wrong.append((field.name, role.value, reply.status_code, errors[0]))
    assert wrong == [], f"GraphQL fields not refused: {wrong}"


# --- WebSockets ------------------------------------------------------------------------------


def socket_routes(gw: FullGateway) -> list[GatewayRoute]:
    routes = [r for r in gateway_routes(gw.app) if r.kind == "websocket"]
    assert routes, "no WebSocket routes: is the streams backend missing?"
    return routes


async def refusal(gw: FullGateway, path: str, headers: dict[str, str]) -> tuple[Any, int]:
    """Connect; the error frame and the close code the server answers with."""
    socket = Socket(gw.app, path, headers)
    accepted = await socket.connect()
    assert accepted["type"] == "websocket.accept", accepted
    frame = await socket.json()
    closed = await socket.next()
    assert closed["type"] == "websocket.close", closed
    assert socket.task is not None
    await asyncio.wait_for(socket.task, 5)
    return frame, int(closed["code"])


async def test_every_socket_refuses_no_bad_credentials_and_a_role_without_it(
    gw: FullGateway,
) -> None:
    wrong: list[tuple[Any, ...]] = []
    for route in socket_routes(gw):
        needed = route_permissions(route)
        if not needed:
            wrong.append((route.path, "declares no Depends(socket_guard(...))"))
            continue
        path = route.path.replace("{name}", "orders")
        for case, headers in {"none": {}, **BAD_CREDENTIALS}.items():
            frame, code = await refusal(gw, path, headers)
            if code != 4401 or frame["error"]["code"] != "unauthenticated":
                wrong.append((route.path, case, code))
        role = lacking(needed[0])
        frame, code = await refusal(gw, path, gw.headers(role))
        if code != 4403 or needed[0] not in frame["error"]["message"]:
            wrong.append((route.path, role.value, code))
    assert wrong == [], f"sockets not refused: {wrong}"


async def _closed_within(socket: Socket, seconds: float) -> tuple[Any, int]:
    """The error frame and close code the server sends within ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    frame = None
    while True:
        left = deadline - asyncio.get_running_loop().time()
        message = await asyncio.wait_for(socket.outbox.get(), max(left, 0.01))
        if message["type"] == "websocket.close":
            assert socket.task is not None
            await asyncio.wait_for(socket.task, 5)
            return frame, int(message["code"])
        frame = json.loads(message["text"])


async def _open(gw: FullGateway, path: str, token: str) -> Socket:
    socket = Socket(gw.app, f"{path}?api_key={token}")
    assert (await socket.connect())["type"] == "websocket.accept"
    return socket


async def test_a_key_revoked_while_subscribed_closes_the_socket_within_the_cache_ttl(
    gw: FullGateway,
) -> None:
    token, record = await gw.ident.keys.create(Role.ANALYST)
    socket = await _open(gw, "/api/v1/streams/orders/subscribe", token)
    await asyncio.sleep(0.2)  # several re-checks pass while the key is good
    assert socket.outbox.empty()
    await gw.ident.keys.revoke(record.id)  # straight in the DB: this replica's cache vouches
    await asyncio.sleep(0.2)
    assert socket.outbox.empty(), "closed before the cached verdict expired"
    gw.clock.advance(5.0)  # the auth cache's TTL
    frame, code = await _closed_within(socket, 2.0)
    assert code == 4401 and "revoked" in frame["error"]["message"]


async def test_a_key_revoked_through_the_api_closes_its_sockets_at_once(
    gw: FullGateway,
) -> None:
    token, record = await gw.ident.keys.create(Role.SERVICE)
    socket = await _open(gw, "/api/v1/streams/orders/ingest", token)
    async with gw.client() as http:
        reply = await http.delete(f"/api/v1/keys/{record.id}", headers=gw.headers(Role.ADMIN))
    assert reply.status_code == 200, reply.text
    frame, code = await _closed_within(socket, 2.0)  # the route forgot the cached verdict
    assert code == 4401 and frame["error"]["code"] == "unauthenticated"


async def test_a_key_that_expires_while_connected_is_closed(gw: FullGateway) -> None:
    token, _ = await gw.ident.keys.create(Role.SERVICE, expires_in=timedelta(seconds=30))
    socket = await _open(gw, "/api/v1/streams/orders/ingest", token)
    await socket.send('{"seq": 1, "k": "a", "v": 1.0, "ts": 1.0}')
    assert (await socket.json())["ok"] is True
    gw.clock.advance(31)
    frame, code = await _closed_within(socket, 2.0)
    assert code == 4401 and "expired" in frame["error"]["message"]


async def test_each_frame_is_checked_even_between_periodic_checks(gw: FullGateway) -> None:
    app = gw.rebuild(socket_recheck_s=3600.0)  # only the per-frame check can catch it
    token, record = await gw.ident.keys.create(Role.SERVICE)
    socket = Socket(app, f"/api/v1/streams/orders/ingest?api_key={token}")
    assert (await socket.connect())["type"] == "websocket.accept"
    await socket.send('{"seq": 1, "k": "a", "v": 1.0, "ts": 1.0}')
    assert (await socket.json())["ok"] is True
    await gw.ident.keys.revoke(record.id)
    gw.clock.advance(5.0)
    await socket.send('{"seq": 2, "k": "a", "v": 1.0, "ts": 2.0}')
    frame, code = await _closed_within(socket, 2.0)
    assert code == 4401 and frame["ok"] is False
    queued = gw.streams.queue("stream.orders").get(10)
    assert len(queued) == 1, "the frame after the revocation was queued"


async def test_a_grant_withdrawn_while_connected_closes_the_socket(gw: FullGateway) -> None:
    await gw.streams.deploy(window_topology("other"))
    token, record = await gw.ident.keys.create(Role.ANALYST)
    await gw.grants.add(record.id, "stream:read", "stream:orders")
    gw.ident.key_cache.invalidate(record.id)
    socket = await _open(gw, "/api/v1/streams/orders/subscribe", token)
    await asyncio.sleep(0.2)
    assert socket.outbox.empty()
    await gw.grants.replace(record.id, [])
    await gw.grants.add(record.id, "stream:read", "stream:other")
    gw.ident.key_cache.invalidate(record.id)
    frame, code = await _closed_within(socket, 2.0)
    assert code in (4403, 4404) and frame["ok"] is False
