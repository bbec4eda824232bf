"""``/api/v1/forge`` on the real gateway app: real keys and run records on SQLite, a
stand-in for Ray's Job Submission API, no Ray."""

from __future__ import annotations

import shlex
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.forge.spec import config_hash, load_train_spec, run_id_for
from cluster.db.forge_store import ForgeRunStore, open_forge_stores
from cluster.errors import NotFoundError
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.forge_metrics import forge_counts
from serve_apps.gateway.routes_forge import ForgeBackend
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, client, error_of, key_store

RUNS = "/api/v1/forge/runs"
SPEC: dict[str, Any] = {
    "name": "cancer",
    "task": "classification",
    "data": {"table": "forge.cancer", "features": ["mean_radius", "mean_texture"], "label": "y"},
    "model": {"type": "logistic"},
    "epochs": 3,
    "tune": {"search_space": {"optimizer.lr": {"grid": [0.01, 0.1]}}},
}


@dataclass
class FakeLauncher:
    """Ray's Job Submission API as the routes use it; remembers what was submitted."""

    submitted: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def submit(self, entrypoint: str, metadata: dict[str, str]) -> str:
        self.submitted.append((entrypoint, metadata))
        return f"raysubmit_{len(self.submitted)}"

    async def status(self, submission_id: str) -> dict[str, Any]:
        if not submission_id.startswith("raysubmit_"):
            raise NotFoundError(kind="job", name=submission_id)
        return {"submission_id": submission_id, "status": "RUNNING", "message": "", "logs_tail": ""}


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[Role, str]
    key_ids: dict[Role, str]
    launcher: FakeLauncher
    runs: ForgeRunStore
    specs: Path

    async def call(
        self, method: str, path: str, role: Role | None, **kwargs: Any
    ) -> httpx.Response:
        headers = {"X-API-Key": self.keys[role]} if role is not None else {}
        return await self.http.request(method, RUNS + path, headers=headers, **kwargs)


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    clock = FakeClock()
    settings = Settings(data_dir=data_dir)
    async with key_store(settings, clock) as store, open_forge_stores(settings) as stores:
        created = {role: await store.create(role) for role in Role}
        keys = {role: plain for role, (plain, _) in created.items()}
        ids = {role: record.id for role, (_, record) in created.items()}
        launcher = FakeLauncher()
        specs = data_dir / "forge" / "specs"
        backend = ForgeBackend(specs_dir=specs, launcher=launcher, runs=stores.runs)
        app = create_app(GatewayDeps(authenticator=authenticator(store, clock), forge=backend))
        async with client(app) as http:
            yield Api(http, keys, ids, launcher, stores.runs, specs)


async def test_an_engineer_submits_a_run_as_a_ray_job(api: Api) -> None:
    reply = await api.call("POST", "", Role.ENGINEER, json=SPEC)
    assert reply.status_code == 202, reply.text
    spec = load_train_spec(SPEC)
    body = reply.json()
    assert body == {
        "run_id": run_id_for(spec),
        "name": "cancer",
        "submission_id": "raysubmit_1",
        "status": "PENDING",
        "resumes": False,
    }
    ((entrypoint, metadata),) = api.launcher.submitted
    path = api.specs / f"{run_id_for(spec)}.yaml"
    assert shlex.split(entrypoint) == [
        "python",
        "-m",
        "jobs.train",
        str(path),
        "--created-by",
        api.key_ids[Role.ENGINEER],
    ]
    assert metadata == {"datapunk.forge.run": run_id_for(spec), "datapunk.forge.name": "cancer"}
    # The job reads back exactly the spec that was validated: same run, same hash.
    assert config_hash(load_train_spec(path)) == config_hash(spec)


async def test_fresh_and_resumed_runs_are_told_apart(api: Api) -> None:
    spec = load_train_spec(SPEC)
    await api.runs.start(
        run_id_for(spec),
        name="cancer",
        spec=spec.model_dump(mode="json"),
        config_hash=config_hash(spec),
        experiment_path="/x",
        lake_table="forge.cancer",
        snapshot_id=7,
    )
    await api.runs.update(run_id_for(spec), state="interrupted", error="stopped")
    resumed = await api.call("POST", "", Role.ADMIN, json=SPEC)
    assert resumed.status_code == 202 and resumed.json()["resumes"] is True
    fresh = await api.call("POST", "?fresh=true", Role.ADMIN, json=SPEC)
    assert fresh.json()["resumes"] is False
    assert shlex.split(api.launcher.submitted[-1][0])[-1] == "--fresh"


async def test_a_bad_spec_is_422_listing_its_problems_and_starts_nothing(api: Api) -> None:
    bad = {**SPEC, "model": {"type": "linear"}, "epochs": 0}
    reply = await api.call("POST", "", Role.ENGINEER, json=bad)
    assert reply.status_code == 422
    error = error_of(reply)
    assert error["code"] == "invalid_train_spec"
    assert "epochs" in error["message"]
    assert api.launcher.submitted == [] and not api.specs.exists()


async def test_analysts_read_runs_but_cannot_start_them(api: Api) -> None:
    refused = await api.call("POST", "", Role.ANALYST, json=SPEC)
    assert refused.status_code == 403
    assert "model:train" in error_of(refused)["message"]
    assert api.launcher.submitted == []
    assert (await api.call("GET", "", None)).status_code == 401
    assert (await api.call("GET", "", Role.SERVICE)).status_code == 403

    spec = load_train_spec(SPEC)
    run_id = run_id_for(spec)
    await api.runs.start(
        run_id,
        name="cancer",
        spec=spec.model_dump(mode="json"),
        config_hash=config_hash(spec),
        experiment_path="/data/forge/experiments/" + run_id,
        lake_table="forge.cancer",
        snapshot_id=42,
    )
    trials = [
        {"trial_id": "t0", "status": "completed", "epoch": 3, "metrics": {"accuracy": 0.95}},
        {"trial_id": "t1", "status": "stopped", "epoch": 2, "metrics": {"accuracy": 0.9}},
    ]
    await api.runs.update(run_id, results={"trials": trials}, state="succeeded")
    listed = await api.call("GET", "?name=cancer", Role.ANALYST)
    assert listed.status_code == 200
    assert [r["run_id"] for r in listed.json()] == [run_id]
    one = await api.call("GET", f"/{run_id}", Role.ANALYST)
    assert one.status_code == 200
    record = one.json()
    assert record["snapshot_id"] == 42 and record["state"] == "succeeded"
    assert [t["metrics"]["accuracy"] for t in record["results"]["trials"]] == [0.95, 0.9]

    missing = await api.call("GET", "/nope", Role.ANALYST)
    assert missing.status_code == 404
    assert "training run 'nope' does not exist" in error_of(missing)["message"]


async def test_the_ray_job_of_a_run_can_be_followed(api: Api) -> None:
    reply = await api.http.get(
        "/api/v1/forge/jobs/raysubmit_9", headers={"X-API-Key": api.keys[Role.ANALYST]}
    )
    assert reply.status_code == 200 and reply.json()["status"] == "RUNNING"
    unknown = await api.http.get(
        "/api/v1/forge/jobs/other", headers={"X-API-Key": api.keys[Role.ANALYST]}
    )
    assert unknown.status_code == 404


async def test_metrics_count_runs_by_state_and_trials_by_status(api: Api) -> None:
    # Training jobs exit and take their own metrics with them: the gateway publishes
    # what the run store says.
    spec = load_train_spec(SPEC)
    await api.runs.start(
        run_id_for(spec),
        name="cancer",
        spec=spec.model_dump(mode="json"),
        config_hash=config_hash(spec),
        experiment_path="/x",
        lake_table="forge.cancer",
        snapshot_id=7,
    )
    trials = [{"trial_id": "a", "status": "completed"}, {"trial_id": "b", "status": "stopped"}]
    await api.runs.update(run_id_for(spec), state="succeeded", results={"trials": trials})
    text = (await api.http.get("/metrics")).text
    assert 'datapunk_forge_runs{state="succeeded"} 1.0' in text
    assert 'datapunk_forge_trials{status="completed"} 1.0' in text
    assert 'datapunk_forge_trials{status="stopped"} 1.0' in text


def test_forge_counts_of_records() -> None:
    runs = [
        {"state": "running", "results": None},
        {"state": "succeeded", "results": {"trials": [{"status": "completed"}] * 3}},
        {"state": "failed", "results": {"trials": [{"status": "error"}, {}]}},
    ]
    assert forge_counts(runs) == (
        {"running": 1, "succeeded": 1, "failed": 1},
        {"completed": 3, "error": 1, "unknown": 1},
    )
