"""Object-level authorization (OWASP API1:2023) on the real gateway app, no Ray.

Real keys with grants in SQLite, an in-process Lake, a real model registry with tiny
models, an in-process Cortex, the stream routes over a stand-in control, Forge and
pipeline routes over a stand-in job launcher; the grants REST routes; the audit of
refusals. A key for table A gets 200 on A and 404 on B (as if B did not exist) on every
route; a visible object used for the wrong permission is a 403 naming both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from actors.cortex.served import ServedModel, parse_model_id
from actors.cortex.signature import feature_matrix
from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry
from actors.lake.service import LakeService
from cluster.db.engine import create_engine, session_factory
from cluster.db.forge_store import ForgeRunStore, RegistryStore
from cluster.security.audit import AuditQueue
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantStore
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.routes_forge import ForgeBackend
from serve_apps.gateway.routes_models import ModelsBackend
from serve_apps.gateway.routes_predict import model_key, predict_backend
from tests.clock import FakeClock
from tests.cortex_serving_support import register_tiny, rows
from tests.stream_support import window_topology
from tests.unit.gateway_support import authenticator, client, error_of, key_store
from tests.unit.test_gateway_forge import SPEC as TRAIN_SPEC
from tests.unit.test_gateway_forge import FakeLauncher
from tests.unit.test_gateway_streams import FakeStreams

V1 = "/api/v1"
COLUMNS = [{"name": "id", "type": "long"}, {"name": "v", "type": "double"}]
TABLES = ("sales.a", "sales.b", "hr.c")
MODELS = ("m1", "m2")
PIPELINE = (
    "name: {name}\nsource:\n  type: files\n  path: data/x/*.csv\n  format: csv\n"
    "sink:\n  table: {table}\n"
)


@dataclass
class InProcessCortex:
    """The ``Cortex`` port in this process; records which model keys it predicted."""

    registry: ModelRegistry
    predicted: list[str] = field(default_factory=list)
    _models: dict[str, ServedModel] = field(default_factory=dict)

    async def _served(self, key: str) -> ServedModel:
        if key not in self._models:
            name, version = parse_model_id(key)
            record, data = await self.registry.artifact(name, version)
            self._models[key] = ServedModel.from_artifact(record, data, "cpu")
        return self._models[key]

    async def predict(
        self, key: str, features: pa.Table, request_id: str | None
    ) -> dict[str, np.ndarray]:
        self.predicted.append(key)
        served = await self._served(key)
        return served.predict(feature_matrix(features, served.signature))

    async def warm(self, key: str) -> dict[str, Any]:
        await self._served(key)
        return {"model_id": key}


@dataclass
class World:
    http: httpx.AsyncClient
    keys: KeyStore
    grants: GrantStore
    audit: AuditQueue
    audit_store: AuditStore
    admin: str
    streams: FakeStreams
    launcher: FakeLauncher
    cortex: InProcessCortex

    async def key(self, role: Role, *grants: tuple[str, str]) -> str:
        """A new key of ``role`` narrowed by ``grants`` (none: unrestricted)."""
        token, record = await self.keys.create(role)
        for permission, scope in grants:
            await self.grants.add(record.id, permission, scope)
        return token

    async def call(self, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": token, **kwargs.pop("headers", {})}
        return await self.http.request(method, V1 + path, headers=headers, **kwargs)


@pytest.fixture
async def world(data_dir: Path) -> AsyncIterator[World]:
    settings = Settings(data_dir=data_dir)
    clock = FakeClock()
    pipelines = data_dir / "pipelines"
    pipelines.mkdir()
    for name, table in (("load_a", "sales.a"), ("load_b", "sales.b")):
        (pipelines / f"{name}.yaml").write_text(PIPELINE.format(name=name, table=table))
    async with key_store(settings, clock) as keys:
        engine = create_engine(settings)
        try:
            sessions = session_factory(engine)
            registry = ModelRegistry(
                RegistryStore.from_engine(engine, clock.now),
                ArtifactStore(artifacts_root(settings)),
                clock.now,
            )
            for name in MODELS:
                await register_tiny(registry, name, seed=1)
                await registry.set_alias(name, "production", 1, actor="test")
            cortex = InProcessCortex(registry)
            predict = predict_backend(registry, cortex, refresh_s=0.05)
            streams = FakeStreams()
            for name in ("orders", "clicks"):
                await streams.deploy(window_topology(name))
            launcher = FakeLauncher()
            audit_store = AuditStore(sessions, clock.now)
            audit = AuditQueue(audit_store)
            grants = GrantStore(sessions, clock.now)
            authn = authenticator(keys, clock)
            deps = GatewayDeps(
                authenticator=authn,
                key_store=keys,
                grant_store=grants,
                forget_key=authn.invalidate,
                audit=audit,
                audit_store=audit_store,
                lake=LakeService.from_settings(settings),
                spool_dir=data_dir / "spool",
                pipelines=(pipelines, launcher, None),  # type: ignore[arg-type]
                streams=streams,
                models=ModelsBackend(registry),
                predict=predict,
                forge=ForgeBackend(
                    specs_dir=data_dir / "specs",
                    launcher=launcher,
                    runs=ForgeRunStore.from_engine(engine, clock.now),
                ),
            )
            admin, _ = await keys.create(Role.ADMIN)
            async with client(create_app(deps)) as http:
                world = World(
                    http, keys, grants, audit, audit_store, admin, streams, launcher, cortex
                )
                for ns in ("sales", "hr"):
                    await world.call("POST", "/lake/namespaces", admin, json={"name": ns})
                for table in TABLES:
                    created = await world.call(
                        "POST", "/lake/tables", admin, json={"name": table, "columns": COLUMNS}
                    )
                    assert created.status_code == 201, created.text
                    await world.call(
                        "POST", f"/lake/tables/{table}/append", admin, json=[{"id": 1, "v": 1.0}]
                    )
                yield world
            await predict.routes.close()
            await audit.close()
        finally:
            await engine.dispose()


def hidden(reply: httpx.Response, name: str) -> None:
    """The BOLA answer: 404, the one error body, naming nothing but the asked name."""
    assert reply.status_code == 404, reply.text
    error = error_of(reply)
    assert error["code"] == "not_found"
    assert f"'{name}' was not found among the objects this caller may use" in error["message"]


# --- Lake ------------------------------------------------------------------------------


READ_ROUTES = [
    ("GET", "/lake/tables/{t}", None),
    ("GET", "/lake/tables/{t}/history", None),
    ("POST", "/lake/tables/{t}/query", {"format": "json"}),
]
WRITE_ROUTES = [
    ("POST", "/lake/tables/{t}/append", [{"id": 2, "v": 2.0}]),
    ("POST", "/lake/tables/{t}/upsert?key=id", [{"id": 1, "v": 3.0}]),
    ("POST", "/lake/tables/{t}/delete", {"filter": "id = 99"}),
    ("POST", "/lake/tables/{t}/maintenance", {"dry_run": True}),
]


@pytest.mark.parametrize(("method", "path", "body"), READ_ROUTES)
async def test_a_read_grant_on_a_reads_a_and_not_b(
    world: World, method: str, path: str, body: Any
) -> None:
    key = await world.key(Role.ANALYST, ("lake.table:read", "table:sales.a"))
    ok = await world.call(method, path.format(t="sales.a"), key, json=body)
    assert ok.status_code == 200, ok.text
    hidden(await world.call(method, path.format(t="sales.b"), key, json=body), "sales.b")
    # A table that does not exist is answered the same way: existence is not revealed.
    hidden(await world.call(method, path.format(t="sales.zz"), key, json=body), "sales.zz")


@pytest.mark.parametrize(("method", "path", "body"), WRITE_ROUTES)
async def test_a_write_grant_on_a_writes_a_and_not_b(
    world: World, method: str, path: str, body: Any
) -> None:
    key = await world.key(Role.SERVICE, ("lake.table:write", "table:sales.a"))
    ok = await world.call(method, path.format(t="sales.a"), key, json=body)
    assert ok.status_code == 200, ok.text
    hidden(await world.call(method, path.format(t="sales.b"), key, json=body), "sales.b")
    assert (await world.call(method, path.format(t="hr.c"), key, json=body)).status_code == 404


async def test_a_visible_table_used_for_another_permission_is_403(world: World) -> None:
    key = await world.key(
        Role.ENGINEER, ("lake.table:read", "table:sales.a"), ("lake.table:write", "table:hr.c")
    )
    reply = await world.call("POST", "/lake/tables/sales.a/append", key, json=[{"id": 5}])
    assert reply.status_code == 403
    assert "'lake.table:write' on table:sales.a" in error_of(reply)["message"]
    # No grant names the permission at all: refused before any object is looked at.
    read_only = await world.key(Role.ENGINEER, ("lake.table:read", "table:sales.a"))
    reply = await world.call("POST", "/lake/tables/sales.a/append", read_only, json=[{"id": 5}])
    assert reply.status_code == 403
    assert "'lake.table:write' on any object" in error_of(reply)["message"]


async def test_a_namespace_grant_covers_its_tables_and_creating_in_it(world: World) -> None:
    key = await world.key(Role.ENGINEER, ("lake.table:write", "namespace:sales"))
    for table in ("sales.a", "sales.b"):
        reply = await world.call("POST", f"/lake/tables/{table}/append", key, json=[{"id": 3}])
        assert reply.status_code == 200, reply.text
    made = await world.call(
        "POST", "/lake/tables", key, json={"name": "sales.n", "columns": COLUMNS}
    )
    assert made.status_code == 201, made.text
    elsewhere = await world.call(
        "POST", "/lake/tables", key, json={"name": "hr.n", "columns": COLUMNS}
    )
    hidden(elsewhere, "hr.n")
    ns = await world.call("POST", "/lake/namespaces", key, json={"name": "hr2"})
    hidden(ns, "hr2")


@pytest.mark.parametrize(
    ("query", "allowed"),
    [
        ("SELECT * FROM sales.a", True),
        ("SELECT count(*) AS n FROM sales.a WHERE v > 0", True),
        ("SELECT * FROM sales.b", False),
        ("SELECT * FROM sales.a JOIN sales.b USING (id)", False),
        ("SELECT * FROM sales.a WHERE id IN (SELECT id FROM hr.c)", False),
        ("WITH x AS (SELECT * FROM sales.b) SELECT * FROM x", False),
        ("SELECT * FROM sales.a UNION ALL SELECT * FROM SALES.B", False),
    ],
)
async def test_sql_is_checked_on_every_table_it_reads(
    world: World, query: str, allowed: bool
) -> None:
    key = await world.key(Role.ANALYST, ("lake.table:read", "table:sales.a"))
    reply = await world.call("POST", "/lake/sql", key, json={"query": query})
    if allowed:
        assert reply.status_code == 200, reply.text
    else:
        assert reply.status_code == 404, reply.text
        assert "was not found among the objects this caller may use" in reply.text


async def test_listings_show_only_what_the_key_may_read(world: World) -> None:
    key = await world.key(Role.ANALYST, ("lake.table:read", "table:sales.a"))
    assert (await world.call("GET", "/lake/tables", key)).json() == ["sales.a"]
    assert (await world.call("GET", "/lake/namespaces", key)).json() == ["sales"]
    listed = await world.call("GET", "/lake/tables", key, params={"namespace": "sales"})
    assert listed.json() == ["sales.a"]
    hr = await world.call("GET", "/lake/tables", key, params={"namespace": "hr"})
    hidden(hr, "hr")
    everything = await world.call("GET", "/lake/tables", world.admin)
    assert set(everything.json()) == set(TABLES)


async def test_a_key_without_grants_keeps_its_role_everywhere(world: World) -> None:
    key = await world.key(Role.ANALYST)
    for table in TABLES:
        assert (await world.call("GET", f"/lake/tables/{table}", key)).status_code == 200
    sql = await world.call(
        "POST",
        "/lake/sql",
        key,
        json={"query": "SELECT a.id, c.v FROM sales.a a JOIN hr.c c ON a.id = c.id"},
    )
    assert sql.status_code == 200, sql.text


async def test_a_table_key_is_refused_other_kinds_of_routes(world: World) -> None:
    key = await world.key(Role.ENGINEER, ("lake.table:read", "table:sales.a"))
    for path in ("/streams", "/models", "/platform/status", "/forge/runs"):
        reply = await world.call("GET", path, key)
        assert reply.status_code == 403, (path, reply.text)
        assert "on any object" in error_of(reply)["message"]


# --- models, predict -------------------------------------------------------------------


async def test_a_model_grant_scopes_the_registry(world: World) -> None:
    key = await world.key(Role.ENGINEER, ("model:read", "model:m1"), ("model:promote", "model:m1"))
    assert [m["name"] for m in (await world.call("GET", "/models", key)).json()] == ["m1"]
    for path in ("/models/{m}", "/models/{m}/versions/1", "/models/{m}/history"):
        assert (await world.call("GET", path.format(m="m1"), key)).status_code == 200
        hidden(await world.call("GET", path.format(m="m2"), key), "m2")
    move = {"version": 1, "force": True}
    ok = await world.call("PUT", "/models/m1/aliases/staging", key, json=move)
    assert ok.status_code == 200, ok.text
    hidden(await world.call("PUT", "/models/m2/aliases/staging", key, json=move), "m2")
    hidden(await world.call("DELETE", "/models/m2/aliases/production", key), "m2")
    gated = {"version": 1, "holdout": {"table": "hr.c"}}
    hidden(await world.call("PUT", "/models/m1/aliases/staging", key, json=gated), "hr.c")


async def test_a_model_grant_scopes_predict(world: World) -> None:
    key = await world.key(Role.SERVICE, ("model:predict", "model:m1"))
    body = {"instances": rows(2)}
    ok = await world.call("POST", "/models/m1/predict", key, json=body)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 2
    hidden(await world.call("POST", "/models/m2/predict", key, json=body), "m2")
    assert set(world.cortex.predicted) == {model_key("m1", 1)}  # m2 never reached Cortex


# --- streams ---------------------------------------------------------------------------


async def test_a_stream_grant_scopes_the_stream_routes(world: World) -> None:
    key = await world.key(
        Role.ENGINEER,
        ("stream:read", "stream:orders"),
        ("stream:publish", "stream:orders"),
        ("stream:deploy", "stream:orders"),
    )
    assert [s["name"] for s in (await world.call("GET", "/streams", key)).json()] == ["orders"]
    assert (await world.call("GET", "/streams/orders", key)).status_code == 200
    hidden(await world.call("GET", "/streams/clicks", key), "clicks")
    hidden(await world.call("GET", "/streams/clicks/tail", key), "clicks")
    event = {"seq": 1, "k": "a", "v": 2.5, "ts": 10.0}
    assert (await world.call("POST", "/streams/orders/events", key, json=event)).status_code == 202
    hidden(await world.call("POST", "/streams/clicks/events", key, json=event), "clicks")
    hidden(await world.call("DELETE", "/streams/clicks", key), "clicks")
    spec = window_topology("clicks").model_dump(mode="json", by_alias=True)
    hidden(await world.call("POST", "/streams", key, json=spec), "clicks")
    assert "clicks" in world.streams.states and world.streams.states["clicks"] == "running"


# --- Forge and pipelines ---------------------------------------------------------------


async def test_a_training_run_needs_its_model_and_table(world: World) -> None:
    both = await world.key(
        Role.ENGINEER, ("model:train", "model:cancer"), ("model:train", "table:forge.cancer")
    )
    ok = await world.call("POST", "/forge/runs", both, json=TRAIN_SPEC)
    assert ok.status_code == 202, ok.text
    model_only = await world.key(Role.ENGINEER, ("model:train", "model:cancer"))
    hidden(await world.call("POST", "/forge/runs", model_only, json=TRAIN_SPEC), "forge.cancer")
    assert len(world.launcher.submitted) == 1
    other = {**TRAIN_SPEC, "name": "other"}
    hidden(await world.call("POST", "/forge/runs", both, json=other), "other")


async def test_pipeline_runs_are_scoped_by_their_target_table(world: World) -> None:
    key = await world.key(Role.ENGINEER, ("pipeline:run", "table:sales.a"))
    ok = await world.call("POST", "/pipelines/load_a/runs", key)
    assert ok.status_code == 202, ok.text
    hidden(await world.call("POST", "/pipelines/load_b/runs", key), "sales.b")
    assert [m["datapunk.pipeline"] for _, m in world.launcher.submitted] == ["load_a"]


# --- the grants routes -----------------------------------------------------------------


async def test_grants_routes_put_get_delete(world: World) -> None:
    token, record = await world.keys.create(Role.ANALYST)
    path = f"/keys/{record.id}/grants"
    assert (await world.call("GET", "/lake/tables/hr.c", token)).status_code == 200
    grants = [{"permission": "lake.table:read", "scope": "table:sales.a"}]
    put = await world.call("PUT", path, world.admin, json={"grants": grants})
    assert put.status_code == 200, put.text
    assert put.json()["restricted"] is True
    # The change applies at once on this replica (the auth cache forgot the key).
    hidden(await world.call("GET", "/lake/tables/hr.c", token), "hr.c")
    who = await world.call("GET", "/whoami", token)
    assert who.json()["grants"] == grants
    listed = await world.call("GET", path, world.admin)
    assert [(g["permission"], g["scope"]) for g in listed.json()["grants"]] == [
        ("lake.table:read", "table:sales.a")
    ]
    one = await world.call(
        "DELETE",
        path,
        world.admin,
        params={"permission": "lake.table:read", "scope": "table:sales.a"},
    )
    assert one.json() == {"key_id": record.id, "restricted": False, "grants": []}
    assert (await world.call("GET", "/lake/tables/hr.c", token)).status_code == 200


@pytest.mark.parametrize(
    ("grant", "status", "words"),
    [
        ({"permission": "lake.table:write", "scope": "*"}, 422, "grants narrow a role"),
        ({"permission": "lake.table:read", "scope": "model:m1"}, 422, "table:NAME"),
        ({"permission": "lake.table:read", "scope": "tables:x"}, 422, "unknown kind"),
        ({"permission": "lake.tables:read", "scope": "*"}, 422, "permission"),
    ],
)
async def test_bad_grants_are_refused_saying_why(
    world: World, grant: dict[str, str], status: int, words: str
) -> None:
    _, record = await world.keys.create(Role.ANALYST)
    reply = await world.call(
        "PUT", f"/keys/{record.id}/grants", world.admin, json={"grants": [grant]}
    )
    assert reply.status_code == status, reply.text
    assert words in error_of(reply)["message"]


async def test_grants_routes_need_keys_manage_and_a_known_key(world: World) -> None:
    engineer = await world.key(Role.ENGINEER)
    _, record = await world.keys.create(Role.ANALYST)
    refused = await world.call("GET", f"/keys/{record.id}/grants", engineer)
    assert refused.status_code == 403
    missing = await world.call("GET", "/keys/key_nope/grants", world.admin)
    assert missing.status_code == 404
    assert "key_nope" in error_of(missing)["message"]


# --- refusals are audited --------------------------------------------------------------


async def test_hidden_objects_and_refusals_are_audited_as_denied(world: World) -> None:
    key = await world.key(Role.ANALYST, ("lake.table:read", "table:sales.a"))
    await world.call("GET", "/lake/tables/sales.a", key)  # allowed read: not audited
    await world.call("GET", "/lake/tables/sales.b", key)
    await world.call("POST", "/lake/sql", key, json={"query": "SELECT * FROM hr.c"})
    await world.call("POST", "/lake/tables/sales.a/append", key, json=[{"id": 9}])
    await world.audit.flush()
    denied = await world.audit_store.list(outcome="denied", newest_first=False)
    seen = [(e.draft.route, e.draft.status, e.draft.permission, e.draft.target) for e in denied]
    assert seen == [
        ("/api/v1/lake/tables/{name}", 404, "lake.table:read", "table:sales.b"),
        ("/api/v1/lake/sql", 404, "lake.table:read", "table:hr.c"),
        ("/api/v1/lake/tables/{name}/append", 403, "lake.table:write", "name=sales.a"),
    ]
    assert (await world.audit_store.verify()).ok
