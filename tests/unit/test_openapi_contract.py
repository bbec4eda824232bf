"""The OpenAPI document is complete and says what the gateway does.

Walks ``app.openapi()`` of the gateway with every backend and fails on any operation
without a summary, a description, tags, the security schemes (unless deliberately
public), or the documented error body on its 4xx answers; then checks the documented
error body against real refusals, and that every route (WebSockets included) is listed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cluster.security.rbac import Role
from serve_apps.gateway.openapi import ErrorBody, gateway_routes, route_permissions
from tests.unit.full_gateway import FullGateway, full_gateway
from tests.unit.test_security_routes import PUBLIC

ERROR_REF = "#/components/schemas/ErrorBody"
METHODS = {"get", "put", "post", "delete", "patch"}
# Client errors every authenticated operation documents with the error body.
EVERY_OPERATION = ("401", "403", "404", "409", "422", "429")


@pytest.fixture
async def gw(data_dir: Path) -> AsyncIterator[FullGateway]:
    async with full_gateway(data_dir) as gateway:
        yield gateway


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def error_schema_of(response: dict[str, Any]) -> str | None:
    content = response.get("content", {}).get("application/json", {})
    ref: str | None = content.get("schema", {}).get("$ref")
    return ref


async def test_both_security_schemes_are_declared(gw: FullGateway) -> None:
    schemes = gw.app.openapi()["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"


async def test_every_operation_is_documented_and_secured(gw: FullGateway) -> None:
    problems = []
    for method, path, operation in operations(gw.app.openapi()):
        where = f"{method} {path}"
        for key in ("summary", "description", "tags", "operationId"):
            if not operation.get(key):
                problems.append(f"{where}: no {key}")
        responses = operation["responses"]
        if not any(code.startswith("2") for code in responses):
            problems.append(f"{where}: no success response")
        client_errors = {c: r for c, r in responses.items() if c.startswith("4")}
        for code, response in client_errors.items():
            if not response.get("description") or error_schema_of(response) is None:
                problems.append(f"{where}: {code} without a description and body schema")
        if (method, path) in PUBLIC:
            if operation.get("security"):
                problems.append(f"{where}: public, yet documents security")
            continue
        if operation.get("security") != [{"bearer": []}, {"apiKey": []}]:
            problems.append(f"{where}: security is {operation.get('security')}")
        for code in EVERY_OPERATION:
            if error_schema_of(client_errors.get(code, {})) != ERROR_REF:
                problems.append(f"{where}: {code} not documented with the error body")
    assert problems == [], "\n".join(problems)


async def test_descriptions_say_what_each_operation_demands(gw: FullGateway) -> None:
    schema = gw.app.openapi()
    for route in gateway_routes(gw.app):
        if route.kind != "http" or not route.include_in_schema:
            continue
        for method in route.methods:
            description = schema["paths"][route.path][method.lower()]["description"]
            for permission in route_permissions(route):
                assert f"`{permission}`" in description, (method, route.path)
    login = schema["paths"]["/api/v1/auth/login"]["post"]["description"]
    assert "Public: no credentials." in login


async def test_the_documented_error_body_is_what_refusals_send(gw: FullGateway) -> None:
    async with gw.client() as http:
        replies = [
            await http.get("/api/v1/lake/tables"),  # 401
            await http.get("/api/v1/keys", headers=gw.headers(Role.ANALYST)),  # 403
            await http.get("/api/v1/models/ghost", headers=gw.headers(Role.ADMIN)),  # 404
            await http.get("/api/v1/forge/runs?limit=0", headers=gw.headers(Role.ADMIN)),  # 422
        ]
    assert [r.status_code for r in replies] == [401, 403, 404, 422]
    for reply in replies:
        ErrorBody.model_validate_json(reply.text)  # raises if the body breaks the schema
        assert reply.json()["error"]["request_id"] == reply.headers["x-request-id"]


async def test_every_served_route_is_in_the_document(gw: FullGateway) -> None:
    schema = gw.app.openapi()
    documented = {(m, p) for m, p, _ in operations(schema)}
    hidden = []
    for route in gateway_routes(gw.app):
        if route.kind == "http":
            for method in route.methods - {"HEAD"}:
                if (method, route.path) not in documented:
                    hidden.append(f"{method} {route.path}")
        elif route.kind == "plain" and route.path not in {
            "/openapi.json",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
        }:
            hidden.append(f"plain route {route.path}")
    assert hidden == [], f"served but not documented: {hidden}"
    sockets = {r.path for r in gateway_routes(gw.app) if r.kind == "websocket"}
    listed = {s["path"]: s for s in schema["x-websockets"]}
    assert set(listed) == sockets and sockets
    assert all(s["permission"] and s["summary"] for s in listed.values())


async def test_every_versioned_path_is_under_api_v1(gw: FullGateway) -> None:
    unversioned = [
        f"{m} {p}"
        for m, p, _ in operations(gw.app.openapi())
        if not p.startswith("/api/v1/") and (m, p) not in PUBLIC
    ]
    assert unversioned == []
