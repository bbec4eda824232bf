"""One test (or a few) per OWASP API Security Top 10 (2023) item, named after it, against
the gateway with every backend (``tests/unit/full_gateway.py``), real keys, accounts,
grants and rate limits on a SQLite platform DB; no Ray.

Items resting on other parts of the platform say so: API1 on scoped grants
(``cluster/security/grants.py``), API2 on key rotation and account lockout
(``cluster/security/keys.py``, ``accounts.py``), API4 on the rate and body limits
(``serve_apps/gateway/ratelimit.py``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from actors.lake.service import LakeService
from cluster.security.ratelimit import MemoryRateLimiter
from cluster.security.rbac import ROLE_PERMISSIONS, Permission, Role
from cluster.settings import RateLimitSettings, Settings
from serve_apps.gateway.openapi import gateway_routes, route_permissions
from serve_apps.gateway.ratelimit import GatewayLimits
from tests.contracts.forge_store import MODEL, register
from tests.unit.full_gateway import FullGateway, full_gateway
from tests.unit.identity_support import PASSWORD
from tests.unit.test_security_routes import PUBLIC, concrete

A, B = "sales.a", "sales.b"
ROWS = pa.table({"id": [1, 2, 3], "note": ["x", "y", "z"]})
GRAPHQL = "/api/v1/graphql"


@pytest.fixture
async def gw(data_dir: Path) -> AsyncIterator[FullGateway]:
    async with full_gateway(data_dir) as gateway:
        await gateway.lake.create_namespace("sales")
        for table in (A, B):
            await gateway.lake.create_table(table, schema=ROWS.schema)
            await gateway.lake.append(table, ROWS)
        for _ in range(2):
            await register(gateway.registry, params={"metric": "rmse", "mode": "min"})
        await register(gateway.registry, name="secret_model")
        await gateway.registry.set_alias(MODEL, "production", 1, actor="test")
        yield gateway


async def call(
    gw: FullGateway, method: str, path: str, token: str | None = None, **kwargs: Any
) -> httpx.Response:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["X-API-Key"] = token
    async with gw.client() as http:
        return await http.request(method, path, headers=headers, **kwargs)


async def gql(gw: FullGateway, token: str, query: str, **variables: Any) -> dict[str, Any]:
    reply = await call(gw, "POST", GRAPHQL, token, json={"query": query, "variables": variables})
    body: dict[str, Any] = reply.json()
    return body


async def scoped_key(gw: FullGateway, role: Role, *grants: tuple[str, str]) -> tuple[str, str]:
    """A new key of ``role`` narrowed to ``grants`` (permission, scope)."""
    token, record = await gw.ident.keys.create(role)
    for permission, scope in grants:
        await gw.grants.add(record.id, permission, scope)
    gw.ident.key_cache.invalidate(record.id)
    return token, record.id


# --- API1:2023 Broken Object Level Authorization --------------------------------------------


async def test_api1_broken_object_level_authorization(gw: FullGateway) -> None:
    """Needs scoped grants (S2): a key for table A reads A and cannot read, or learn of, B."""
    token, _ = await scoped_key(gw, Role.ANALYST, ("lake.table:read", f"table:{A}"))
    assert (await call(gw, "GET", f"/api/v1/lake/tables/{A}", token)).status_code == 200
    for method, path, body in [
        ("GET", f"/api/v1/lake/tables/{B}", None),
        ("GET", f"/api/v1/lake/tables/{B}/history", None),
        ("POST", f"/api/v1/lake/tables/{B}/query", {}),
        ("POST", "/api/v1/lake/sql", {"query": f"SELECT * FROM {B}"}),
        ("GET", "/api/v1/lake/tables/sales.ghost", None),
    ]:
        reply = await call(gw, method, path, token, json=body)
        assert reply.status_code == 404, (
            f"{method} {path}: a key scoped to {A} got {reply.status_code}; scoped grants must "
            "answer objects outside them as missing (cluster/security/grants.py)"
        )
    listed = await call(gw, "GET", "/api/v1/lake/tables", token)
    assert listed.json() == [A], "listings must show only what the grants cover"
    graphql = await gql(gw, token, "query($t: String!) { table(name: $t) { name } }", t=B)
    assert graphql["errors"][0]["extensions"]["status"] == 404
    assert (await gql(gw, token, "{ tables }"))["data"]["tables"] == [A]
    model_key, _ = await scoped_key(gw, Role.ANALYST, ("model:read", f"model:{MODEL}"))
    assert (await call(gw, "GET", f"/api/v1/models/{MODEL}", model_key)).status_code == 200
    assert (await call(gw, "GET", "/api/v1/models/secret_model", model_key)).status_code == 404
    names = [m["name"] for m in (await call(gw, "GET", "/api/v1/models", model_key)).json()]
    assert names == [MODEL]


# --- API2:2023 Broken Authentication ---------------------------------------------------------


async def test_api2_broken_authentication_bad_expired_and_revoked_keys(gw: FullGateway) -> None:
    expired, _ = await gw.ident.keys.create(Role.ADMIN, expires_in=timedelta(seconds=10))
    revoked, record = await gw.ident.keys.create(Role.ADMIN)
    await call(gw, "DELETE", f"/api/v1/keys/{record.id}", gw.keys[Role.ADMIN])
    gw.clock.advance(11)
    for token, why in [
        ("dp_" + "x" * 43, "unknown"),
        ("password123", "malformed"),
        (expired, "expired"),
        (revoked, "revoked"),
    ]:
        reply = await call(gw, "GET", "/api/v1/whoami", token)
        assert reply.status_code == 401, why
        assert why in reply.json()["error"]["message"], why
        assert token not in reply.text, "an error must never echo the credential"


async def test_api2_broken_authentication_rotated_keys_stop_after_the_overlap(
    gw: FullGateway,
) -> None:
    """Needs key rotation (S1)."""
    old, record = await gw.ident.keys.create(Role.SERVICE)
    reply = await call(
        gw,
        "POST",
        f"/api/v1/keys/{record.id}/rotate",
        gw.keys[Role.ADMIN],
        json={"overlap_s": 60},
    )
    assert reply.status_code == 201, reply.text
    new = reply.json()["key"]
    for token in (old, new):
        assert (await call(gw, "GET", "/api/v1/whoami", token)).status_code == 200
    gw.clock.advance(61)
    assert (await call(gw, "GET", "/api/v1/whoami", old)).status_code == 401
    assert (await call(gw, "GET", "/api/v1/whoami", new)).status_code == 200


async def test_api2_broken_authentication_brute_force_locks_the_account(gw: FullGateway) -> None:
    """Needs account lockout (S1): after the threshold even the right password is refused."""
    await gw.ident.user("alice", Role.ENGINEER)
    threshold = gw.settings.auth.lockout_threshold
    for attempt in range(1, threshold + 1):
        wrong = await call(
            gw, "POST", "/api/v1/auth/login", json={"username": "alice", "password": "guess"}
        )
        # The failure that reaches the threshold may already answer "locked".
        assert wrong.status_code == 401 or (attempt == threshold and wrong.status_code == 423)
    right = await call(
        gw, "POST", "/api/v1/auth/login", json={"username": "alice", "password": PASSWORD}
    )
    assert right.status_code == 423, f"not locked after {threshold} failures: {right.text}"
    assert right.json()["error"]["code"] == "account_locked"


async def test_api2_broken_authentication_guessing_keys_is_rate_limited(
    gw: FullGateway,
) -> None:
    """Needs the per-address limit on refused credentials (S3)."""
    limits = GatewayLimits(
        RateLimitSettings(auth_failures_per_s=1.0, auth_failures_burst=3),
        MemoryRateLimiter(now=gw.clock.monotonic),
    )
    app = gw.rebuild(limits=limits)
    async with gw.client(app) as http:
        codes = [
            (await http.get("/api/v1/whoami", headers={"X-API-Key": f"dp_guess{i}"})).status_code
            for i in range(6)
        ]
    assert codes[:3] == [401, 401, 401] and 429 in codes[3:], codes


# --- API3:2023 Broken Object Property Level Authorization ------------------------------------


SECRET_MARKERS = ("digest", "password_hash", "$argon2", "mfa_secret", "totp_secret", "seed")


async def test_api3_broken_object_property_level_authorization_no_secret_fields(
    gw: FullGateway,
) -> None:
    admin = gw.keys[Role.ADMIN]
    await gw.ident.user("bob", Role.ANALYST)
    created = await call(gw, "POST", "/api/v1/keys", admin, json={"role": "analyst"})
    bodies = [
        created.text,
        (await call(gw, "GET", "/api/v1/keys?include_revoked=true", admin)).text,
        (await call(gw, "GET", "/api/v1/users", admin)).text,
        (await call(gw, "GET", "/api/v1/whoami", admin)).text,
    ]
    for body in bodies:
        for marker in SECRET_MARKERS:
            assert marker not in body.lower(), (marker, body[:300])
    token = created.json()["key"]
    assert token not in bodies[1], "a key's token is shown once, at creation"


async def test_api3_broken_object_property_level_authorization_mass_assignment(
    gw: FullGateway,
) -> None:
    """Needs strict identity bodies (S1, S2): fields a client may not set are refused."""
    admin = gw.keys[Role.ADMIN]
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("/api/v1/keys", {"role": "analyst"}, {"digest": "0" * 64, "created_by": "key_root"}),
        ("/api/v1/keys", {"role": "analyst"}, {"id": "key_chosen", "revoked_at": None}),
        ("/api/v1/users", {"username": "eve", "password": PASSWORD, "role": "analyst"},
         {"password_hash": "$argon2id$forged", "locked_until": None}),
    ]  # fmt: skip
    for path, body, forged in cases:
        reply = await call(gw, "POST", path, admin, json={**body, **forged})
        assert reply.status_code == 422, (
            f"POST {path} accepted fields a client may not set {sorted(forged)} "
            f"({reply.status_code}); its body model must forbid extra fields "
            "(model_config = ConfigDict(extra='forbid'))"
        )
    superuser = await call(gw, "POST", "/api/v1/keys", admin, json={"role": "root"})
    assert superuser.status_code == 422 and "one of admin" in superuser.json()["error"]["message"]


async def test_api3_a_scoped_key_cannot_mint_a_key_beyond_its_own_scope(
    gw: FullGateway,
) -> None:
    """Needs scoped grants (S2): a key manager narrowed to table A mints no wider key."""
    token, _ = await scoped_key(
        gw, Role.ADMIN, ("keys:manage", "*"), ("lake.table:read", f"table:{A}")
    )
    reply = await call(gw, "POST", "/api/v1/keys", token, json={"role": "admin"})
    if reply.status_code in (403, 422):
        return  # refused outright: fine
    assert reply.status_code == 201, reply.text
    minted = reply.json()["key"]
    escaped = await call(gw, "GET", f"/api/v1/lake/tables/{B}", minted)
    assert escaped.status_code in (403, 404), (
        "a key minted by a key narrowed to table A reads table B: minting must not widen "
        "the minter's grants"
    )


# --- API4:2023 Unrestricted Resource Consumption ---------------------------------------------


async def test_api4_unrestricted_resource_consumption_rate_and_body_limits(
    gw: FullGateway,
) -> None:
    """Needs the rate and body limits (S3)."""
    limits = GatewayLimits(
        RateLimitSettings(read_per_s=1.0, read_burst=3, max_body_bytes=1024),
        MemoryRateLimiter(now=gw.clock.monotonic),
    )
    app = gw.rebuild(limits=limits)
    headers = gw.headers(Role.ADMIN)
    async with gw.client(app) as http:
        codes = [(await http.get("/api/v1/whoami", headers=headers)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429], codes
        limited = await http.get("/api/v1/whoami", headers=headers)
        assert limited.headers["retry-after"].isdigit()
        big = await http.post(
            "/api/v1/lake/namespaces", headers=headers, content=b"{" + b" " * 4096 + b"}"
        )
        assert big.status_code == 413, big.text


async def test_api4_unrestricted_resource_consumption_queries_are_bounded(
    gw: FullGateway, data_dir: Path
) -> None:
    admin = gw.keys[Role.ADMIN]
    deep = '{ table(name: "sales.a") ' + "{ a " * 9 + "}" * 10
    refused = await call(gw, "POST", GRAPHQL, admin, json={"query": deep})
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["extensions"]["code"] == "query_too_complex"
    costly = (
        "{ "
        + " ".join(
            f'm{i}: model(name: "churn") {{ versions(limit: 500) {{ metrics params tags }} }}'
            for i in range(8)
        )
        + " }"
    )
    assert (await call(gw, "POST", GRAPHQL, admin, json={"query": costly})).status_code == 400
    too_many = await call(gw, "GET", "/api/v1/forge/runs?limit=100000", admin)
    assert too_many.status_code == 422
    small = LakeService.from_settings(Settings(data_dir=data_dir, lake={"sql_row_limit": 2}))
    app = gw.rebuild(lake=small)
    sql = "/api/v1/lake/sql"
    async with gw.client(app) as http:
        whole = await http.post(
            sql, headers=gw.headers(Role.ADMIN), json={"query": f"SELECT * FROM {A}"}
        )
        two = await http.post(
            sql, headers=gw.headers(Role.ADMIN), json={"query": f"SELECT * FROM {A} LIMIT 2"}
        )
    assert whole.status_code == 422, "3 rows over a row limit of 2 must be refused"
    assert whole.json()["error"]["code"] == "result_too_large"
    assert two.status_code == 200 and two.headers["x-row-count"] == "2"


# --- API5:2023 Broken Function Level Authorization -------------------------------------------


async def test_api5_broken_function_level_authorization(gw: FullGateway) -> None:
    analyst, engineer = gw.keys[Role.ANALYST], gw.keys[Role.ENGINEER]
    admin_only = []
    for route in gateway_routes(gw.app):
        needed = route_permissions(route)
        if route.kind != "http" or not needed:
            continue
        if any(Permission(p) not in ROLE_PERMISSIONS[Role.ANALYST] for p in needed):
            for method in route.methods:
                reply = await call(gw, method, concrete(route.path), analyst, json={})
                if reply.status_code != 403:
                    admin_only.append((method, route.path, reply.status_code))
    assert admin_only == [], f"an analyst reached functions beyond its role: {admin_only}"
    for path in ("/api/v1/keys", "/api/v1/users", "/api/v1/audit"):
        assert (await call(gw, "GET", path, engineer)).status_code == 403, path
    mutation = 'mutation { stopStream(name: "x") }'
    assert (await gql(gw, analyst, mutation))["errors"][0]["extensions"]["status"] == 403
    override = await call(
        gw,
        "POST",
        f"/api/v1/keys/{gw.key_ids[Role.ADMIN]}",
        analyst,
        headers={"X-HTTP-Method-Override": "DELETE"},
    )
    assert override.status_code in (403, 405)
    assert (await call(gw, "GET", "/api/v1/whoami", gw.keys[Role.ADMIN])).status_code == 200


# --- API6:2023 Unrestricted Access to Sensitive Business Flows -------------------------------


async def test_api6_the_promotion_gate_cannot_be_bypassed(gw: FullGateway) -> None:
    path = f"/api/v1/models/{MODEL}/aliases/production"
    engineer, analyst = gw.keys[Role.ENGINEER], gw.keys[Role.ANALYST]
    gw.scores.by_version.update({1: 0.1, 2: 0.9})  # rmse: version 2 is worse
    no_evidence = await call(gw, "PUT", path, engineer, json={"version": 2})
    assert no_evidence.status_code == 422 and "force" in no_evidence.json()["error"]["message"]
    gated = await call(gw, "PUT", path, engineer, json={"version": 2, "holdout": {"table": A}})
    assert gated.status_code == 409 and gated.json()["decision"]["promoted"] is False
    both = await call(
        gw, "PUT", path, engineer, json={"version": 2, "holdout": {"table": A}, "force": True}
    )
    assert both.status_code == 422
    forced_by_analyst = await call(gw, "PUT", path, analyst, json={"version": 2, "force": True})
    assert forced_by_analyst.status_code == 403
    graphql = await gql(
        gw,
        analyst,
        'mutation { moveAlias(name: "churn", alias: "production", '
        "move: {version: 2, force: true}) }",
    )
    assert graphql["errors"][0]["extensions"]["code"] == "permission_denied"
    assert (await gw.registry.model(MODEL))["aliases"] == {"production": 1}
    forced = await call(gw, "PUT", path, engineer, json={"version": 2, "force": True})
    assert forced.status_code == 200 and forced.json()["forced"] is True
    (event,) = [e for e in await gw.registry.history(MODEL) if e["to_version"] == 2]
    assert event["actor"] == gw.key_ids[Role.ENGINEER], "who forced it is on record"


# --- API7:2023 Server Side Request Forgery ---------------------------------------------------


async def test_api7_server_side_request_forgery_table_io_properties(
    gw: FullGateway, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    engineer = gw.keys[Role.ENGINEER]
    for properties in [
        {"write.data.path": str(outside)},
        {"write.metadata.path": "file:///etc"},
        {"s3.endpoint": "http://169.254.169.254"},
        {"py-io-impl": "os.system"},
        {"location": "/etc"},
    ]:
        body = {"name": "sales.evil", "columns": [{"name": "a", "type": "long"}]}
        reply = await call(
            gw, "POST", "/api/v1/lake/tables", engineer, json={**body, "properties": properties}
        )
        assert reply.status_code == 422, (properties, reply.text)
    assert not outside.exists()
    assert "sales.evil" not in await gw.lake.list_tables("sales")


async def test_api7_server_side_request_forgery_names_and_specs_are_not_paths(
    gw: FullGateway,
) -> None:
    engineer = gw.keys[Role.ENGINEER]
    for method, path, body in [
        ("POST", "/api/v1/pipelines/..%2F..%2Fetc%2Fpasswd/runs", None),
        ("POST", "/api/v1/pipelines/%2Fetc%2Fpasswd/runs", None),
        ("GET", "/api/v1/lake/tables/..%2F..%2Fetc", None),
        ("POST", "/api/v1/forge/runs", "/etc/passwd"),
        ("POST", "/api/v1/streams", "file:///etc/passwd"),
        ("PUT", f"/api/v1/models/{MODEL}/aliases/production",
         {"version": 2, "holdout": {"table": "http://169.254.169.254/latest"}}),
    ]:  # fmt: skip
        reply = await call(gw, method, path, engineer, json=body)
        assert reply.status_code in (404, 422), (method, path, reply.status_code, reply.text)
        assert "root:" not in reply.text
    launched = gw.deps.pipelines
    assert launched is not None and launched[1].submitted == []  # type: ignore[attr-defined]


# --- API8:2023 Security Misconfiguration -----------------------------------------------------


async def test_api8_security_misconfiguration_errors_headers_cors_docs(
    gw: FullGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("connection to postgresql://admin:hunter2@db failed at /srv/app.py")

    monkeypatch.setattr(gw.lake, "list_namespaces", broken)
    admin = gw.keys[Role.ADMIN]
    failed = await call(gw, "GET", "/api/v1/lake/namespaces", admin)
    assert failed.status_code == 500
    assert failed.json()["error"]["message"] == "internal error; quote the request id"
    assert "hunter2" not in failed.text and "Traceback" not in failed.text
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"}
    preflight = await call(gw, "OPTIONS", "/api/v1/keys", headers=origin)
    simple = await call(gw, "GET", "/api/v1/whoami", admin, headers={"Origin": origin["Origin"]})
    for reply in (preflight, simple):
        assert "access-control-allow-origin" not in reply.headers, "CORS must be off by default"
    for reply in (simple, failed, await call(gw, "GET", "/api/v1/whoami")):
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["cache-control"] == "no-store"
    assert (await call(gw, "TRACE", "/api/v1/whoami", admin)).status_code == 405
    docs = await call(gw, "GET", "/openapi.json")
    assert docs.status_code == 200 and ("GET", "/openapi.json") in PUBLIC  # deliberately
    assert "hunter2" not in docs.text and "dp_" not in docs.text


# --- API9:2023 Improper Inventory Management -------------------------------------------------


async def test_api9_improper_inventory_management(gw: FullGateway) -> None:
    schema = (await call(gw, "GET", "/openapi.json")).json()
    documented = {(m.upper(), p) for p, item in schema["paths"].items() for m in item}
    served, undocumented = set(), []
    for route in gateway_routes(gw.app):
        if route.kind == "websocket":
            assert route.path in {s["path"] for s in schema["x-websockets"]}, route.path
            continue
        for method in route.methods - {"HEAD"}:
            served.add((method, route.path))
            if (method, route.path) not in documented and (method, route.path) not in PUBLIC:
                undocumented.append((method, route.path))
    assert undocumented == [], f"routes served but not in the OpenAPI document: {undocumented}"
    assert documented <= served, f"documented but not served: {documented - served}"
    unversioned = [p for m, p in served if not p.startswith("/api/v1/") and (m, p) not in PUBLIC]
    assert unversioned == [], f"routes outside the versioned prefix: {unversioned}"
    assert schema["info"]["version"]
    assert (await call(gw, "GET", "/api/v2/whoami", gw.keys[Role.ADMIN])).status_code == 404


# --- API10:2023 Unsafe Consumption of APIs ---------------------------------------------------


async def test_api10_unsafe_consumption_data_is_rendered_as_data(gw: FullGateway) -> None:
    hostile = '</script><script>alert(1)</script>"}, {"injected": true'
    await gw.lake.create_table("sales.notes", schema=pa.schema([("note", pa.string())]))
    await gw.lake.append("sales.notes", pa.table({"note": [hostile]}))
    await register(gw.registry, name="tagged", tags={"owner": hostile})
    analyst = gw.keys[Role.ANALYST]
    rest = await call(gw, "POST", "/api/v1/lake/tables/sales.notes/query", analyst, json={})
    assert rest.headers["content-type"].startswith("application/json")
    assert rest.headers["x-content-type-options"] == "nosniff"
    assert rest.json() == [{"note": hostile}]  # one row, the text intact: no injection
    model = await call(gw, "GET", "/api/v1/models/tagged", analyst)
    assert model.json()["versions"][0]["tags"] == {"owner": hostile}
    graphql = await gql(gw, analyst, '{ preview(name: "sales.notes") { rows } }')
    assert graphql["data"]["preview"]["rows"] == [{"note": hostile}]
    assert json.loads(json.dumps(graphql)) == graphql


async def test_api10_unsafe_consumption_no_route_calls_back_to_client_urls(
    gw: FullGateway,
) -> None:
    """No webhooks: no request body asks for a URL the platform would call."""
    schema = (await call(gw, "GET", "/openapi.json")).json()
    suspicious = [
        (name, prop)
        for name, component in schema["components"]["schemas"].items()
        for prop in component.get("properties", {})
        if any(word in prop.lower() for word in ("url", "webhook", "callback", "endpoint"))
    ]
    assert suspicious == [], f"body fields that take a URL to call: {suspicious}"
