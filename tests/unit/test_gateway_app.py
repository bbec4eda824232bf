"""The gateway's FastAPI app, built as Serve builds it, on a SQLite platform DB (no Ray)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI

import serve_apps.gateway.asgi as gateway_app
from cluster.errors import NotFoundError, ServiceUnavailableError
from cluster.security.keys import KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import ROLE_PERMISSIONS, Permission, Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.auth import permission, principal_dependency
from serve_apps.gateway.middleware import request_id_from
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, client, error_of, key_store

HEX_ID = re.compile(r"^[0-9a-f]{32}$")
Check = Callable[[], Awaitable[None]]


async def _ok() -> None:
    return None


@dataclass
class Gateway:
    """The app under test and what the tests need to drive it."""

    store: KeyStore
    clock: FakeClock
    build: Callable[..., FastAPI]

    async def key(self, role: Role | str = Role.ANALYST, **kwargs: Any) -> str:
        token, _ = await self.store.create(role, **kwargs)
        return token


@pytest.fixture
async def gateway(data_dir: Path) -> AsyncIterator[Gateway]:
    clock = FakeClock()
    async with key_store(Settings(data_dir=data_dir), clock) as store:

        def build(
            readiness: Mapping[str, Check] | None = None,
            platform_status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
            *,
            echo_request_id: bool = True,
        ) -> FastAPI:
            deps = GatewayDeps(
                authenticator=authenticator(store, clock),
                readiness={"database": _ok} if readiness is None else readiness,
                platform_status=platform_status,
            )
            return create_app(deps, echo_request_id=echo_request_id)

        yield Gateway(store=store, clock=clock, build=build)


async def get(app: FastAPI, path: str, **kwargs: Any) -> httpx.Response:
    async with client(app) as http:
        return await http.get(path, **kwargs)


# --- health, metrics, docs -------------------------------------------------------------


async def test_healthz_needs_no_key(gateway: Gateway) -> None:
    reply = await get(gateway.build(), "/healthz")
    assert reply.status_code == 200
    assert reply.json()["status"] == "ok"
    assert HEX_ID.match(reply.headers["x-request-id"])


async def test_metrics_need_no_key_and_label_by_route_template(gateway: Gateway) -> None:
    app = gateway.build()

    @app.get("/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    async with client(app) as http:
        for thing_id in ("abc123", "def456"):
            assert (await http.get(f"/things/{thing_id}")).status_code == 200
        await http.get("/api/v1/whoami")  # 401
        await http.get("/no/such/path-xyz789")
        reply = await http.get("/metrics")
    assert reply.status_code == 200
    text = reply.text
    assert "datapunk_gateway_requests_total" in text
    assert (
        'datapunk_gateway_requests_total{method="GET",route="/things/{thing_id}",status="200"} 2.0'
        in text
    )
    assert 'route="/api/v1/whoami",status="401"' in text
    assert 'route="unmatched",status="404"' in text
    assert 'datapunk_gateway_errors_total{route="/api/v1/whoami",status="401"} 1.0' in text
    assert 'datapunk_gateway_errors_total{route="/things/{thing_id}"' not in text
    for raw in ("abc123", "def456", "xyz789"):
        assert raw not in text  # raw paths would make label cardinality unbounded
    assert "datapunk_gateway_request_duration_seconds_bucket" in text


async def test_each_app_counts_on_its_own_registry(gateway: Gateway) -> None:
    first, second = gateway.build(), gateway.build()
    await get(first, "/healthz")
    text = (await get(second, "/metrics")).text
    assert 'route="/healthz"' not in text


async def test_openapi_lists_the_api_and_docs_are_served(gateway: Gateway) -> None:
    app = gateway.build()
    spec = (await get(app, "/openapi.json")).json()
    assert "/api/v1/whoami" in spec["paths"]
    assert "/api/v1/platform/status" in spec["paths"]
    docs = await get(app, "/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


# --- readiness ---------------------------------------------------------------------------


async def test_readyz_200_when_every_check_passes(gateway: Gateway) -> None:
    app = gateway.build(readiness={"database": _ok, "cache": _ok})
    reply = await get(app, "/readyz")
    assert reply.status_code == 200
    assert reply.json() == {"status": "ready", "checks": {"database": "ok", "cache": "ok"}}


async def test_readyz_503_names_the_failing_check(gateway: Gateway) -> None:
    async def cache_down() -> None:
        raise ServiceUnavailableError(
            service="Redis", target="redis://h:1/0", reason="connection refused", fix="start it"
        )

    app = gateway.build(readiness={"database": _ok, "cache": cache_down})
    reply = await get(app, "/readyz")
    assert reply.status_code == 503
    body = reply.json()
    assert body["checks"]["database"] == "ok"
    assert "connection refused" in body["checks"]["cache"]
    error = error_of(reply)
    assert error["code"] == "service_unavailable"
    assert error["message"].startswith("not ready: cache: Redis at redis://h:1/0")
    assert "database" not in error["message"]


async def test_readyz_reports_a_hanging_check_as_timed_out(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_app, "READY_TIMEOUT_S", 0.05)

    async def hangs() -> None:
        await asyncio.sleep(60)

    app = gateway.build(readiness={"database": _ok, "lake pool": hangs})
    reply = await asyncio.wait_for(get(app, "/readyz"), timeout=10)
    assert reply.status_code == 503
    assert reply.json()["checks"]["lake pool"].startswith("timed out")
    assert "lake pool: timed out" in error_of(reply)["message"]


async def test_readyz_reports_an_unexpected_check_failure_by_type(gateway: Gateway) -> None:
    async def broken() -> None:
        raise KeyError("x")

    reply = await get(gateway.build(readiness={"broken": broken}), "/readyz")
    assert reply.status_code == 503
    assert reply.json()["checks"]["broken"].startswith("KeyError")


# --- authentication ----------------------------------------------------------------------


async def test_whoami_with_bearer_and_with_x_api_key(gateway: Gateway) -> None:
    token, record = await gateway.store.create(Role.ANALYST, name="ci")
    app = gateway.build()
    for headers in ({"Authorization": f"Bearer {token}"}, {"X-API-Key": token}):
        reply = await get(app, "/api/v1/whoami", headers=headers)
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert (body["key_id"], body["name"], body["role"]) == (record.id, "ci", "analyst")
        assert body["permissions"] == sorted(p.value for p in ROLE_PERMISSIONS[Role.ANALYST])


async def test_whoami_without_key_is_401(gateway: Gateway) -> None:
    reply = await get(gateway.build(), "/api/v1/whoami")
    assert reply.status_code == 401
    error = error_of(reply)
    assert error["code"] == "unauthenticated"
    assert "missing API key" in error["message"]


@pytest.mark.parametrize("header", ["Basic dXNlcjpwdw==", "Token dp_x", "Bearer", "Bearer   "])
async def test_bad_authorization_scheme_is_401(gateway: Gateway, header: str) -> None:
    reply = await get(gateway.build(), "/api/v1/whoami", headers={"Authorization": header})
    assert reply.status_code == 401
    assert "Bearer <api key>" in error_of(reply)["message"]


async def test_unknown_key_is_401_and_not_echoed(gateway: Gateway) -> None:
    token = "dp_" + "x" * 43
    reply = await get(gateway.build(), "/api/v1/whoami", headers={"X-API-Key": token})
    assert reply.status_code == 401
    message = error_of(reply)["message"]
    assert "unknown API key" in message
    assert token not in reply.text


async def test_revoked_key_is_401(gateway: Gateway) -> None:
    token, record = await gateway.store.create(Role.ADMIN)
    await gateway.store.revoke(record.id)
    reply = await get(gateway.build(), "/api/v1/whoami", headers={"X-API-Key": token})
    assert reply.status_code == 401
    assert "was revoked" in error_of(reply)["message"]


async def test_expired_key_is_401(gateway: Gateway) -> None:
    token = await gateway.key(Role.ADMIN, expires_in=timedelta(hours=1))
    app = gateway.build()
    assert (await get(app, "/api/v1/whoami", headers={"X-API-Key": token})).status_code == 200
    gateway.clock.advance(2 * 3600)
    reply = await get(app, "/api/v1/whoami", headers={"X-API-Key": token})
    assert reply.status_code == 401
    assert "expired" in error_of(reply)["message"]


async def test_unreachable_key_store_is_503_not_500(gateway: Gateway) -> None:
    class DatabaseDown:
        async def authenticate(self, token: str) -> Principal:
            raise ServiceUnavailableError(
                service="platform database", target="db", reason="connection refused", fix="x"
            )

    app = create_app(GatewayDeps(authenticator=DatabaseDown()))
    reply = await get(app, "/api/v1/whoami", headers={"X-API-Key": "dp_anything"})
    assert reply.status_code == 503
    error = error_of(reply)
    assert error["code"] == "service_unavailable"
    assert "platform database at db is unreachable" in error["message"]


# --- permissions -------------------------------------------------------------------------


def _roles_without(name: Permission) -> list[Role]:
    return [role for role, granted in ROLE_PERMISSIONS.items() if name not in granted]


async def test_platform_status_403_for_a_role_without_platform_read(gateway: Gateway) -> None:
    lacking = _roles_without(Permission.PLATFORM_READ)
    assert lacking, "every role grants platform:read; test 403 through another permission"
    token = await gateway.key(lacking[0])
    reply = await get(gateway.build(), "/api/v1/platform/status", headers={"X-API-Key": token})
    assert reply.status_code == 403
    error = error_of(reply)
    assert error["code"] == "permission_denied"
    assert f"role {lacking[0].value!r} lacks permission 'platform:read'" in error["message"]


async def test_platform_status_200_merges_checks_and_extra_status(gateway: Gateway) -> None:
    async def extra() -> dict[str, Any]:
        return {"pools": {"lake": {"size": 1}}}

    token = await gateway.key(Role.ANALYST)
    app = gateway.build(readiness={"database": _ok}, platform_status=extra)
    reply = await get(app, "/api/v1/platform/status", headers={"X-API-Key": token})
    assert reply.status_code == 200
    assert reply.json() == {"checks": {"database": "ok"}, "pools": {"lake": {"size": 1}}}


async def test_permission_dependency_on_an_added_route(gateway: Gateway) -> None:
    app = gateway.build()
    authenticated = Depends(principal_dependency(gateway.store))

    @app.get("/keys-admin", dependencies=[authenticated, Depends(permission("keys:manage"))])
    async def keys_admin() -> dict[str, bool]:
        return {"ok": True}

    engineer = await gateway.key(Role.ENGINEER)
    admin = await gateway.key(Role.ADMIN)
    denied = await get(app, "/keys-admin", headers={"X-API-Key": engineer})
    assert denied.status_code == 403
    assert "lacks permission 'keys:manage'" in error_of(denied)["message"]
    allowed = await get(app, "/keys-admin", headers={"X-API-Key": admin})
    assert allowed.status_code == 200


# --- errors and request ids --------------------------------------------------------------


async def test_unknown_route_is_404_with_the_error_body(gateway: Gateway) -> None:
    reply = await get(gateway.build(), "/nope")
    assert reply.status_code == 404
    error = error_of(reply)
    assert error["code"] == "not_found"
    assert error["message"] == "no route GET /nope"


async def test_wrong_method_is_405_with_the_error_body(gateway: Gateway) -> None:
    async with client(gateway.build()) as http:
        reply = await http.post("/healthz")
    assert reply.status_code == 405
    assert error_of(reply)["code"] == "method_not_allowed"


async def test_unexpected_exception_is_a_generic_500(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    app = gateway.build()

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret-internal-detail at /srv/app.py")

    reply = await get(app, "/boom", headers={"X-Request-ID": "trace-500"})
    assert reply.status_code == 500
    error = error_of(reply)
    assert error == {
        "code": "internal_error",
        "message": "internal error; quote the request id",
        "request_id": "trace-500",
    }
    assert "secret-internal-detail" not in reply.text
    assert "Traceback" not in reply.text
    assert "RuntimeError" not in reply.text
    # The traceback goes to the log instead, for whoever is quoted the request id.
    [record] = [r for r in caplog.records if r.getMessage() == "unhandled error"]
    assert record.exc_info is not None
    assert "secret-internal-detail" in str(record.exc_info[1])


async def test_datapunk_error_maps_to_its_status(gateway: Gateway) -> None:
    app = gateway.build()

    @app.get("/tables/{name}")
    async def table(name: str) -> None:
        raise NotFoundError(kind="table", name=name)

    reply = await get(app, "/tables/events")
    assert reply.status_code == 404
    assert error_of(reply) == {
        "code": "not_found",
        "message": "table 'events' does not exist",
        "request_id": reply.headers["x-request-id"],
    }


async def test_validation_error_is_422_with_the_error_body(gateway: Gateway) -> None:
    app = gateway.build()

    @app.get("/page")
    async def page(limit: int) -> dict[str, int]:
        return {"limit": limit}

    reply = await get(app, "/page", params={"limit": "many"})
    assert reply.status_code == 422
    error = error_of(reply)
    assert error["code"] == "invalid_input"
    assert "limit" in error["message"]


async def test_supplied_request_id_is_echoed_and_in_error_bodies(gateway: Gateway) -> None:
    app = gateway.build()
    ok = await get(app, "/healthz", headers={"X-Request-ID": "abc-123.4:5_6"})
    assert ok.headers["x-request-id"] == "abc-123.4:5_6"
    denied = await get(app, "/api/v1/whoami", headers={"X-Request-ID": "req-401"})
    assert denied.headers["x-request-id"] == "req-401"
    assert denied.json()["error"]["request_id"] == "req-401"


def test_request_id_of_128_characters_is_kept() -> None:
    assert request_id_from({"headers": [(b"x-request-id", b"a" * 128)]}) == "a" * 128


@pytest.mark.parametrize("bad", ["x" * 300, "y" * 129, "has spaces", "semi;colon", "new\tline"])
async def test_invalid_request_id_is_replaced(gateway: Gateway, bad: str) -> None:
    reply = await get(gateway.build(), "/nope", headers={"X-Request-ID": bad})
    replaced = reply.headers["x-request-id"]
    assert replaced != bad
    assert HEX_ID.match(replaced)
    assert error_of(reply)["request_id"] == replaced


async def test_echo_request_id_false_adds_no_header(gateway: Gateway) -> None:
    app = gateway.build(echo_request_id=False)
    reply = await get(app, "/nope", headers={"X-Request-ID": "kept-in-body"})
    assert "x-request-id" not in reply.headers
    assert reply.json()["error"]["request_id"] == "kept-in-body"
    assert (await get(app, "/healthz")).status_code == 200


async def test_every_error_response_has_the_one_body_shape(gateway: Gateway) -> None:
    async def down() -> None:
        raise ServiceUnavailableError(service="db", target="x", reason="down", fix="start it")

    app = gateway.build(readiness={"database": down})

    @app.get("/boom")
    async def boom() -> None:
        raise ValueError("nope")

    service = await gateway.key(Role.SERVICE)
    requests: list[tuple[str, str, dict[str, str]]] = [
        ("GET", "/nope", {}),
        ("DELETE", "/healthz", {}),
        ("GET", "/boom", {}),
        ("GET", "/readyz", {}),
        ("GET", "/api/v1/whoami", {}),
        ("GET", "/api/v1/whoami", {"Authorization": "Basic x"}),
        ("GET", "/api/v1/whoami", {"X-API-Key": "not-a-datapunk-key"}),
        ("GET", "/api/v1/platform/status", {"X-API-Key": service}),
    ]
    async with client(app) as http:
        for method, path, headers in requests:
            reply = await http.request(method, path, headers=headers)
            assert reply.status_code >= 400, (method, path)
            error = error_of(reply)
            assert error["code"] and error["message"], (method, path)
