"""``/api/v1/models`` on the real gateway app: real keys, a real registry on SQLite, and a
plain async function as the holdout evaluation; no Ray."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry
from cluster.db.engine import create_engine
from cluster.db.forge_store import RegistryStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.routes_models import ModelsBackend
from tests.clock import FakeClock
from tests.contracts.forge_store import LINEAGE, MODEL, register
from tests.unit.gateway_support import authenticator, client, error_of, key_store

MODELS = "/api/v1/models"
HOLDOUT = {"table": "sales.holdout", "snapshot_id": 9}


@dataclass
class Scores:
    """The injected holdout evaluation: a fixed score per version; records each call."""

    by_version: dict[int, float] = field(default_factory=dict)
    calls: list[tuple[int, str, int | None, str]] = field(default_factory=list)

    async def __call__(
        self, record: dict[str, Any], table: str, snapshot_id: int | None, metric: str
    ) -> float:
        self.calls.append((record["version"], table, snapshot_id, metric))
        return self.by_version[record["version"]]


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[Role, str]
    registry: ModelRegistry
    scores: Scores
    clock: FakeClock

    async def call(
        self, method: str, path: str = "", role: Role | None = Role.ENGINEER, **kwargs: Any
    ) -> httpx.Response:
        headers = {} if role is None else {"X-API-Key": self.keys[role]}
        return await self.http.request(method, MODELS + path, headers=headers, **kwargs)


async def _api(data_dir: Path, evaluator: bool) -> AsyncIterator[Api]:
    clock = FakeClock()
    settings = Settings(data_dir=data_dir)
    scores = Scores()
    async with key_store(settings, clock) as store:
        keys = {role: (await store.create(role))[0] for role in Role}
        engine = create_engine(settings)
        try:
            registry = ModelRegistry(
                RegistryStore.from_engine(engine, clock.now),
                ArtifactStore(artifacts_root(settings)),
                clock.now,
            )
            backend = ModelsBackend(registry, scores if evaluator else None)
            app = create_app(GatewayDeps(authenticator=authenticator(store, clock), models=backend))
            async with client(app) as http:
                yield Api(http, keys, registry, scores, clock)
        finally:
            await engine.dispose()


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async for value in _api(data_dir, evaluator=True):
        yield value


@pytest.fixture
async def registered(api: Api) -> Api:
    for _ in range(3):
        await register(api.registry, params={"lr": 0.1, "metric": "rmse", "mode": "min"})
    return api


# --- auth --------------------------------------------------------------------------------


async def test_no_key_is_401(api: Api) -> None:
    reply = await api.call("GET", role=None)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "unauthenticated"


async def test_analyst_reads_but_cannot_move_aliases(registered: Api) -> None:
    for path in ("", f"/{MODEL}", f"/{MODEL}/versions/1", f"/{MODEL}/history"):
        assert (await registered.call("GET", path, role=Role.ANALYST)).status_code == 200, path
    put = await registered.call(
        "PUT", f"/{MODEL}/aliases/production", role=Role.ANALYST, json={"version": 1, "force": True}
    )
    assert put.status_code == 403 and "model:promote" in error_of(put)["message"]
    delete = await registered.call("DELETE", f"/{MODEL}/aliases/production", role=Role.ANALYST)
    assert delete.status_code == 403
    assert (await registered.call("GET", role=Role.SERVICE)).status_code == 403
    assert await registered.registry.history(MODEL) == []


# --- reads -------------------------------------------------------------------------------


async def test_list_show_and_version(registered: Api) -> None:
    await registered.registry.set_alias(MODEL, "production", 2, actor="cli:ana")
    (listed,) = (await registered.call("GET")).json()
    assert (listed["name"], listed["latest_version"], listed["aliases"]) == (
        MODEL,
        3,
        {"production": 2},
    )
    shown = (await registered.call("GET", f"/{MODEL}")).json()
    assert [v["version"] for v in shown["versions"]] == [1, 2, 3]
    by_alias = (await registered.call("GET", f"/{MODEL}/versions/production")).json()
    assert (by_alias["version"], by_alias["lineage"], by_alias["aliases"]) == (
        2,
        LINEAGE,
        ["production"],
    )
    assert (await registered.call("GET", f"/{MODEL}/versions/3")).json()["version"] == 3


async def test_unknown_names_are_404_naming_what_exists(registered: Api) -> None:
    model = await registered.call("GET", "/ghost")
    assert model.status_code == 404 and f"registered models: {MODEL}" in error_of(model)["message"]
    version = await registered.call("GET", f"/{MODEL}/versions/staging")
    assert version.status_code == 404
    assert "versions: 1 to 3; aliases: none" in error_of(version)["message"]
    alias = await registered.call("DELETE", f"/{MODEL}/aliases/staging")
    assert alias.status_code == 404 and error_of(alias)["code"] == "not_found"
    move = await registered.call(
        "PUT", "/ghost/aliases/production", json={"version": 1, "force": True}
    )
    assert move.status_code == 404


# --- aliases and history -----------------------------------------------------------------


async def test_forced_moves_deletes_and_history_at_a_time(registered: Api) -> None:
    clock = registered.clock
    t0 = clock.now()
    first = await registered.call(
        "PUT", f"/{MODEL}/aliases/production", json={"version": 1, "force": True, "reason": "go"}
    )
    assert first.status_code == 200, first.text
    assert first.json()["forced"] and first.json()["candidate_version"] == 1
    clock.advance(60)
    t1 = clock.now()
    await registered.call("PUT", f"/{MODEL}/aliases/production", json={"version": 2, "force": True})
    clock.advance(60)
    removed = await registered.call("DELETE", f"/{MODEL}/aliases/production")
    assert removed.status_code == 200 and removed.json()["to_version"] is None

    history = (await registered.call("GET", f"/{MODEL}/history?alias=production")).json()
    moves = [(e["from_version"], e["to_version"]) for e in history["events"]]
    assert moves == [(None, 1), (1, 2), (2, None)]
    engineer = (
        await registered.http.get(
            "/api/v1/whoami", headers={"X-API-Key": registered.keys[Role.ENGINEER]}
        )
    ).json()
    assert {e["actor"] for e in history["events"]} == {engineer["key_id"]}
    assert history["events"][0]["reason"] == "go"
    for at, version in ((t0, 1), (t1, 2), (clock.now(), None)):
        stamp = at.isoformat().replace("+00:00", "Z")
        reply = await registered.call(
            "GET", f"/{MODEL}/history", params={"alias": "production", "at": stamp}
        )
        assert reply.json()["version"] == version, stamp
    naive = await registered.call(
        "GET", f"/{MODEL}/history", params={"alias": "production", "at": "2026-01-02T03:04:30"}
    )
    assert naive.json()["version"] == 1  # no offset: UTC


async def test_a_move_needs_a_holdout_or_force(registered: Api) -> None:
    reply = await registered.call("PUT", f"/{MODEL}/aliases/production", json={"version": 1})
    assert reply.status_code == 422 and "--force" in error_of(reply)["message"]
    both = await registered.call(
        "PUT",
        f"/{MODEL}/aliases/production",
        json={"version": 1, "force": True, "holdout": HOLDOUT},
    )
    assert both.status_code == 422 and "give one of them" in error_of(both)["message"]
    at_alone = await registered.call("GET", f"/{MODEL}/history", params={"at": "2026-01-01"})
    assert at_alone.status_code == 422


# --- the promotion gate ------------------------------------------------------------------


async def test_the_gate_promotes_a_better_version_and_refuses_a_worse_one(
    registered: Api,
) -> None:
    registered.scores.by_version.update({1: 0.30, 2: 0.25, 3: 0.40})
    await registered.registry.set_alias(MODEL, "production", 1, actor="cli:ana")
    better = await registered.call(
        "PUT", f"/{MODEL}/aliases/production", json={"version": 2, "holdout": HOLDOUT}
    )
    assert better.status_code == 200, better.text
    decision = better.json()
    assert (decision["promoted"], decision["metric"], decision["mode"]) == (True, "rmse", "min")
    assert (decision["candidate_score"], decision["incumbent_score"]) == (0.25, 0.30)
    assert registered.scores.calls == [
        (2, "sales.holdout", 9, "rmse"),
        (1, "sales.holdout", 9, "rmse"),
    ]

    worse = await registered.call(
        "PUT",
        f"/{MODEL}/aliases/production",
        json={"version": 3, "holdout": {"table": "sales.holdout"}, "metric": "rmse", "mode": "min"},
    )
    assert worse.status_code == 409
    error = error_of(worse)
    assert error["code"] == "promotion_refused"
    assert "stays at version 2" in error["message"]
    refused = worse.json()["decision"]
    assert (refused["promoted"], refused["candidate_version"], refused["incumbent_version"]) == (
        False,
        3,
        2,
    )
    assert refused["holdout"] == {"table": "sales.holdout", "snapshot_id": None}
    assert (await registered.registry.version(MODEL, "production"))["version"] == 2
    assert len(await registered.registry.history(MODEL)) == 2


async def test_a_gate_without_a_metric_says_what_is_missing(api: Api) -> None:
    await register(api.registry)  # its params name no metric
    reply = await api.call(
        "PUT", f"/{MODEL}/aliases/production", json={"version": 1, "holdout": HOLDOUT}
    )
    assert reply.status_code == 422 and "metric" in error_of(reply)["message"]
    bad_mode = await api.call(
        "PUT",
        f"/{MODEL}/aliases/production",
        json={"version": 1, "holdout": HOLDOUT, "metric": "rmse", "mode": "best"},
    )
    assert bad_mode.status_code == 422


async def test_a_server_that_cannot_score_refuses_gated_moves(data_dir: Path) -> None:
    async for api in _api(data_dir, evaluator=False):
        await register(api.registry)
        reply = await api.call(
            "PUT",
            f"/{MODEL}/aliases/production",
            json={"version": 1, "holdout": HOLDOUT, "metric": "rmse", "mode": "min"},
        )
        assert reply.status_code == 409
        assert "cannot score holdouts" in error_of(reply)["message"]


# --- canaries ----------------------------------------------------------------------------

CANARY = f"/{MODEL}/aliases/production/canary"


@pytest.fixture
async def in_production(registered: Api) -> Api:
    """Versions 1 to 3 with ``production`` at version 1."""
    await registered.registry.set_alias(MODEL, "production", 1, actor="cli:ana")
    return registered


async def test_canary_writes_need_model_promote(in_production: Api) -> None:
    api = in_production
    body = {"version": 2, "percent": 20}
    for role in (Role.ANALYST, Role.SERVICE):
        writes = [
            await api.call("PUT", CANARY, role=role, json=body),
            await api.call("DELETE", CANARY, role=role),
            await api.call("POST", CANARY + "/promote", role=role),
        ]
        for reply in writes:
            assert reply.status_code == 403, (role, reply.text)
            assert "model:promote" in error_of(reply)["message"]
    assert (await api.call("GET", f"/{MODEL}/canaries", role=Role.ANALYST)).status_code == 200
    assert (await api.call("GET", f"/{MODEL}/canaries", role=Role.SERVICE)).status_code == 403
    for method, path in (("GET", f"/{MODEL}/canaries"), ("PUT", CANARY), ("DELETE", CANARY)):
        reply = await api.call(method, path, role=None, json=body if method == "PUT" else None)
        assert reply.status_code == 401, path
    assert await api.registry.canaries() == [] and await api.registry.canary_history(MODEL) == []


async def test_canary_set_replace_rollback_and_promote(in_production: Api) -> None:
    api = in_production
    whoami = await api.http.get("/api/v1/whoami", headers={"X-API-Key": api.keys[Role.ENGINEER]})
    key_id = whoami.json()["key_id"]
    started = await api.call(
        "PUT", CANARY, json={"version": 2, "percent": 20, "sticky_key": "X-User", "reason": "try"}
    )
    assert started.status_code == 200, started.text
    assert {k: started.json()[k] for k in ("version", "percent", "sticky_key", "created_by")} == {
        "version": 2,
        "percent": 20.0,
        "sticky_key": "X-User",
        "created_by": key_id,
    }
    assert started.json()["alias_version"] == 1 and started.json()["replaced"] is None
    replaced = await api.call("PUT", CANARY, json={"version": 3, "percent": 5.5})
    assert replaced.json()["replaced"]["version"] == 2
    (listed,) = (await api.call("GET", f"/{MODEL}/canaries", role=Role.ANALYST)).json()
    assert (listed["alias"], listed["version"], listed["percent"], listed["sticky_key"]) == (
        "production",
        3,
        5.5,
        None,
    )

    rolled = await api.call("DELETE", CANARY, params={"reason": "errors up"})
    assert rolled.status_code == 200
    assert (rolled.json()["rolled_back"], rolled.json()["canary"]["version"]) == (True, 3)
    again = await api.call("DELETE", CANARY)
    assert again.status_code == 200 and again.json() == {
        "name": MODEL,
        "alias": "production",
        "rolled_back": False,
        "canary": None,
    }
    assert (await api.call("GET", f"/{MODEL}/canaries")).json() == []

    await api.call("PUT", CANARY, json={"version": 3, "percent": 50})
    promoted = await api.call("POST", CANARY + "/promote", params={"reason": "looks good"})
    assert promoted.status_code == 200, promoted.text
    assert (promoted.json()["version"], promoted.json()["previous_version"]) == (3, 1)
    assert (await api.registry.version(MODEL, "production"))["version"] == 3
    last = (await api.call("GET", f"/{MODEL}/history?alias=production")).json()["events"][-1]
    assert (last["from_version"], last["to_version"], last["actor"], last["reason"]) == (
        1,
        3,
        key_id,
        "looks good",
    )
    events = (await api.call("GET", f"/{MODEL}/canaries/history", role=Role.ANALYST)).json()
    assert [e["action"] for e in events] == ["start", "replace", "rollback", "start", "promote"]
    assert events[2]["reason"] == "errors up"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"version": 2, "percent": 0}, "percent=0.0"),
        ({"version": 2, "percent": 100}, "percent=100.0"),
        ({"version": 2, "percent": -3}, "percent=-3.0"),
        ({"version": 2, "percent": 10, "sticky_key": "X User"}, "sticky_key='X User'"),
        ({"version": 0, "percent": 10}, "version=0"),
        ({"percent": 10}, "version"),
        ({"version": 2}, "percent"),
        ({"version": "two", "percent": 10}, "version"),
    ],
)
async def test_bad_canary_bodies_are_422_naming_the_value(
    in_production: Api, body: dict[str, Any], named: str
) -> None:
    reply = await in_production.call("PUT", CANARY, json=body)
    assert reply.status_code == 422, reply.text
    error = error_of(reply)
    assert error["code"] == "invalid_input" and named in error["message"]
    assert await in_production.registry.canaries() == []


async def test_canary_404s_and_409s(in_production: Api) -> None:
    api = in_production
    for method, path in (
        ("GET", "/ghost/canaries"),
        ("PUT", "/ghost/aliases/production/canary"),
        ("DELETE", "/ghost/aliases/production/canary"),
        ("POST", "/ghost/aliases/production/canary/promote"),
    ):
        body = {"version": 2, "percent": 10} if method == "PUT" else None
        reply = await api.call(method, path, json=body)
        assert reply.status_code == 404, (path, reply.text)
        assert "registered models: churn" in error_of(reply)["message"]
    staging = await api.call(
        "PUT", f"/{MODEL}/aliases/staging/canary", json={"version": 2, "percent": 10}
    )
    assert staging.status_code == 404 and "aliases: production" in error_of(staging)["message"]
    version = await api.call("PUT", CANARY, json={"version": 7, "percent": 10})
    assert version.status_code == 404 and "versions: 1 to 3" in error_of(version)["message"]
    nothing = await api.call("POST", CANARY + "/promote")
    assert nothing.status_code == 404 and "datapunk models canary" in error_of(nothing)["message"]

    same = await api.call("PUT", CANARY, json={"version": 1, "percent": 10})
    assert same.status_code == 409
    assert error_of(same)["code"] == "canary_conflict"
    assert "already points at version 1" in error_of(same)["message"]
    await api.call("PUT", CANARY, json={"version": 2, "percent": 10})
    removal = await api.call("DELETE", f"/{MODEL}/aliases/production")
    assert removal.status_code == 409 and "rollback" in error_of(removal)["message"]
    assert (await api.registry.version(MODEL, "production"))["version"] == 1
