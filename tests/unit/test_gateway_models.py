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
