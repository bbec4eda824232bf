"""``POST /api/v1/models/{name}/predict`` on the real gateway app: real keys, a real
registry on SQLite with tiny models, the real route cache, and an in-process Cortex in
place of the Serve handle; no Ray."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest

from actors.cortex.served import ServedModel, parse_model_id
from actors.cortex.signature import ARROW_STREAM_MEDIA_TYPE, feature_matrix
from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry
from cluster.db.engine import create_engine
from cluster.db.forge_store import RegistryStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from serve_apps.gateway.routes_predict import PredictBackend, predict_backend
from tests.clock import FakeClock
from tests.cortex_serving_support import FEATURES, reference, register_tiny, rows, tiny_artifact
from tests.unit.gateway_support import authenticator, client, error_of, key_store

MODEL = "churn"
REFRESH_S = 1.0


@dataclass
class InProcessCortex:
    """The ``Cortex`` port in this process: loads registry versions and predicts, and
    records every call in order (warms and predictions)."""

    registry: ModelRegistry
    events: list[tuple[str, str]] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)
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
        self.events.append(("predict", key))
        served = await self._served(key)
        return served.predict(feature_matrix(features, served.signature))

    async def warm(self, key: str) -> dict[str, Any]:
        self.events.append(("warm", key))
        if key in self.broken:
            raise RuntimeError(f"{key} does not load")
        await self._served(key)
        return {"model_id": key}

    def predicted(self) -> list[str]:
        return [key for kind, key in self.events if kind == "predict"]


class Ticker:
    """The route cache's ``sleep``: each ``tick`` ends one sleep and waits until the
    refresh after it is done (the loop is asleep again)."""

    def __init__(self) -> None:
        self._sleeping: list[asyncio.Future[None]] = []

    async def sleep(self, _seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleeping.append(future)
        await future

    async def _asleep(self) -> None:
        for _ in range(5000):
            if self._sleeping:
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the route refresher never went back to sleep")

    async def tick(self) -> None:
        await self._asleep()
        self._sleeping.pop(0).set_result(None)
        await self._asleep()


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[Role, str]
    registry: ModelRegistry
    cortex: InProcessCortex
    backend: PredictBackend
    clock: FakeClock
    draws: list[float]
    ticker: Ticker

    async def predict(
        self,
        body: Any = None,
        *,
        name: str = MODEL,
        role: Role | None = Role.SERVICE,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        sent = dict(headers or {})
        if role is not None:
            sent["X-API-Key"] = self.keys[role]
        kwargs: dict[str, Any] = {"content": content} if content is not None else {"json": body}
        return await self.http.post(
            f"/api/v1/models/{name}/predict", params=params, headers=sent, **kwargs
        )

    async def tick(self) -> None:
        """One period of the background route refresh."""
        await self.ticker.tick()


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    clock = FakeClock()
    settings = Settings(data_dir=data_dir)
    draws: list[float] = []
    ticker = Ticker()
    async with key_store(settings, clock) as store:
        keys = {role: (await store.create(role))[0] for role in Role}
        engine = create_engine(settings)
        try:
            registry = ModelRegistry(
                RegistryStore.from_engine(engine, clock.now),
                ArtifactStore(artifacts_root(settings)),
                clock.now,
            )
            for seed in (1, 2):
                await register_tiny(registry, MODEL, seed)
            await registry.set_alias(MODEL, "production", 1, actor="test")
            cortex = InProcessCortex(registry)
            backend = predict_backend(
                registry,
                cortex,
                refresh_s=REFRESH_S,
                max_rows=50,
                now=clock.monotonic,
                draw=lambda: draws.pop(0) if draws else 0.99,
                sleep=ticker.sleep,
            )
            deps = GatewayDeps(authenticator=authenticator(store, clock), predict=backend)
            async with client(create_app(deps)) as http:
                yield Api(http, keys, registry, cortex, backend, clock, draws, ticker)
            await backend.routes.close()
        finally:
            await engine.dispose()


def _predictions(reply: httpx.Response) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    return np.array([p["prediction"] for p in reply.json()["predictions"]])


# ---- who may call ----------------------------------------------------------------------


async def test_a_call_without_a_key_is_401(api: Api) -> None:
    reply = await api.predict({"instances": rows(1)}, role=None)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "unauthenticated"


async def test_a_role_without_model_predict_is_403(api: Api) -> None:
    reply = await api.predict({"instances": rows(1)}, role=Role.ANALYST)
    assert reply.status_code == 403
    assert "model:predict" in error_of(reply)["message"]
    assert api.cortex.events == []


@pytest.mark.parametrize("role", [Role.SERVICE, Role.ENGINEER, Role.ADMIN])
async def test_roles_with_model_predict_get_predictions(api: Api, role: Role) -> None:
    assert (await api.predict({"instances": rows(1)}, role=role)).status_code == 200


# ---- what is predicted -----------------------------------------------------------------


async def test_json_rows_predict_what_the_production_version_computes(api: Api) -> None:
    batch = rows(7)
    reply = await api.predict({"instances": batch}, headers={"X-Request-ID": "req-42"})
    body = reply.json()
    assert {k: body[k] for k in ("model", "version", "alias", "canary", "request_id")} == {
        "model": MODEL,
        "version": 1,
        "alias": "production",
        "canary": False,
        "request_id": "req-42",
    }
    np.testing.assert_allclose(_predictions(reply), reference(tiny_artifact(1), batch), rtol=1e-6)
    assert api.cortex.predicted() == [f"{MODEL}:1"]


async def test_json_columns_give_the_same_predictions_as_rows(api: Api) -> None:
    batch = rows(5, seed=3)
    columns = {name: [row[name] for row in batch] for name in FEATURES}
    by_rows = _predictions(await api.predict({"instances": batch}))
    by_columns = _predictions(await api.predict({"columns": columns}))
    np.testing.assert_array_equal(by_rows, by_columns)


async def test_a_version_asked_for_is_served_without_an_alias(api: Api) -> None:
    batch = rows(3)
    reply = await api.predict({"instances": batch}, params={"version": 2})
    assert reply.json()["version"] == 2 and reply.json()["alias"] is None
    np.testing.assert_allclose(_predictions(reply), reference(tiny_artifact(2), batch), rtol=1e-6)


async def test_an_arrow_body_gets_an_arrow_answer_with_the_version_in_headers(api: Api) -> None:
    batch = rows(6, seed=5)
    table = pa.table({name: [row[name] for row in batch] for name in FEATURES})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    reply = await api.predict(
        content=sink.getvalue().to_pybytes(),
        headers={"Content-Type": ARROW_STREAM_MEDIA_TYPE, "Accept": ARROW_STREAM_MEDIA_TYPE},
    )
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == ARROW_STREAM_MEDIA_TYPE
    assert reply.headers["x-model"] == MODEL
    assert reply.headers["x-model-version"] == "1"
    assert reply.headers["x-model-alias"] == "production"
    assert reply.headers["x-canary"] == "false"
    answer = pa.ipc.open_stream(reply.content).read_all()
    np.testing.assert_allclose(
        answer.column("prediction").to_numpy(), reference(tiny_artifact(1), batch), rtol=1e-6
    )


async def test_a_classifier_answers_classes_and_probabilities(api: Api) -> None:
    await register_tiny(api.registry, "kind", 3, task="classification")
    await api.registry.set_alias("kind", "production", 1, actor="test")
    reply = await api.predict({"instances": rows(4)}, name="kind")
    assert reply.status_code == 200, reply.text
    for prediction in reply.json()["predictions"]:
        assert prediction["prediction"] in (0, 1, 2)
        assert sum(prediction["probabilities"]) == pytest.approx(1.0)


# ---- what is refused -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "why"),
    [({"alias": "nope"}, "nope"), ({"version": 9}, "9")],
)
async def test_an_unknown_alias_or_version_is_404(
    api: Api, params: dict[str, Any], why: str
) -> None:
    reply = await api.predict({"instances": rows(1)}, params=params)
    assert reply.status_code == 404
    assert why in error_of(reply)["message"]
    assert api.cortex.events == []


async def test_an_unknown_model_is_404(api: Api) -> None:
    reply = await api.predict({"instances": rows(1)}, name="ghost")
    assert reply.status_code == 404
    assert "ghost" in error_of(reply)["message"]


async def test_alias_and_version_together_are_422(api: Api) -> None:
    reply = await api.predict({"instances": rows(1)}, params={"alias": "production", "version": 1})
    assert reply.status_code == 422
    assert "not both" in error_of(reply)["message"]


GOOD = {"age": 30.0, "income": 1.0, "tenure": 2.0}
MALFORMED_JSON: list[Any] = [
    None,
    [],
    [GOOD],
    "text",
    42,
    {},
    {"instances": []},
    {"instances": {}},
    {"instances": "rows"},
    {"instances": [1, 2]},
    {"instances": [None]},
    {"instances": [{}]},
    {"instances": [{"age": 1.0}]},
    {"instances": [{**GOOD, "extra": 1.0}]},
    {"instances": [{**GOOD, "age": "thirty"}]},
    {"instances": [{**GOOD, "age": None}]},
    {"instances": [{**GOOD, "age": True}]},
    {"instances": [{**GOOD, "age": [1.0]}]},
    {"instances": [{**GOOD, "age": {"v": 1}}]},
    {"instances": [{**GOOD, "age": 10**400}]},
    {"instances": [GOOD] * 51},
    {"instances": [GOOD], "columns": {"age": [1.0]}},
    {"instances": [GOOD], "extra": 1},
    {"columns": []},
    {"columns": {"age": [1.0], "income": [1.0]}},
    {"columns": {"age": [1.0, 2.0], "income": [1.0], "tenure": [1.0]}},
    {"columns": {"age": 1.0, "income": [1.0], "tenure": [1.0]}},
    {"columns": {"age": ["x"], "income": [1.0], "tenure": [1.0]}},
]


@pytest.mark.parametrize("body", MALFORMED_JSON, ids=[str(i) for i in range(len(MALFORMED_JSON))])
async def test_malformed_json_bodies_are_422_listing_problems_and_never_reach_cortex(
    api: Api, body: Any
) -> None:
    reply = await api.predict(content=json.dumps(body).encode())
    assert reply.status_code == 422, reply.text
    error = reply.json()["error"]
    assert error["code"] == "signature_violation"
    assert error["problems"], error
    assert api.cortex.events == []


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"{'instances': []}",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000 + b"]" * 100_000,
        b'{"instances": [{"age": NaN, "income": 1, "tenure": 1}]}',
        b'{"instances": [{"age": Infinity, "income": 1, "tenure": 1}]}',
    ],
    ids=["empty", "truncated", "single-quotes", "binary", "deep", "nan", "infinity"],
)
async def test_bodies_that_are_not_json_or_not_finite_are_422(api: Api, content: bytes) -> None:
    reply = await api.predict(content=content, headers={"Content-Type": "application/json"})
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"]["problems"]
    assert api.cortex.events == []


async def test_every_bad_field_is_listed_in_one_422(api: Api) -> None:
    body = {"instances": [{"age": "x", "income": None, "tenure": 1.0, "zip": 1}]}
    problems = (await api.predict(body)).json()["error"]["problems"]
    assert {p["field"] for p in problems} == {"age", "income", "zip"}


async def test_a_bad_arrow_body_is_422(api: Api) -> None:
    reply = await api.predict(
        content=b"not arrow at all", headers={"Content-Type": ARROW_STREAM_MEDIA_TYPE}
    )
    assert reply.status_code == 422
    assert reply.json()["error"]["problems"]


async def test_an_arrow_body_with_a_text_column_is_422(api: Api) -> None:
    table = pa.table({"age": ["x"], "income": [1.0], "tenure": [1.0]})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    reply = await api.predict(
        content=sink.getvalue().to_pybytes(), headers={"Content-Type": ARROW_STREAM_MEDIA_TYPE}
    )
    assert reply.status_code == 422
    assert [p["field"] for p in reply.json()["error"]["problems"]] == ["age"]


async def test_an_unreadable_content_type_is_415(api: Api) -> None:
    reply = await api.predict(content=b"age,income\n1,2\n", headers={"Content-Type": "text/csv"})
    assert reply.status_code == 415
    assert "application/json" in error_of(reply)["message"]


@pytest.mark.parametrize("params", [{"version": 0}, {"version": "x"}, {"alias": "Bad Alias"}])
async def test_bad_query_parameters_are_422(api: Api, params: dict[str, Any]) -> None:
    assert (await api.predict({"instances": rows(1)}, params=params)).status_code == 422


# ---- routing: swap, canary -------------------------------------------------------------


async def test_a_moved_alias_is_warmed_before_requests_are_routed_to_it(api: Api) -> None:
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 1
    await api.registry.set_alias(MODEL, "production", 2, actor="test")
    # Until the next refresh, requests keep the table they find.
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 1
    await api.tick()
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 2
    key = f"{MODEL}:2"
    assert api.cortex.events.index(("warm", key)) < api.cortex.events.index(("predict", key))
    assert ("warm", f"{MODEL}:1") not in api.cortex.events  # the first table loads lazily


async def test_a_request_in_flight_keeps_the_version_it_picked(api: Api) -> None:
    await api.predict({"instances": rows(1)})
    target = await api.backend.routes.resolve(MODEL, alias="production")
    await api.registry.set_alias(MODEL, "production", 2, actor="test")
    await api.tick()
    assert target.version == 1
    assert (await api.backend.routes.resolve(MODEL, alias="production")).version == 2


async def test_a_version_that_fails_to_warm_is_not_switched_to(api: Api) -> None:
    await api.predict({"instances": rows(1)})
    api.cortex.broken.add(f"{MODEL}:2")
    await api.registry.set_alias(MODEL, "production", 2, actor="test")
    await api.tick()
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 1
    api.cortex.broken.clear()
    await api.tick()
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 2


async def test_a_failed_refresh_keeps_the_last_good_table_and_the_loop_going(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    await api.predict({"instances": rows(1)})
    real = api.registry.all_aliases

    async def down() -> list[dict[str, Any]]:
        raise ConnectionError("platform database is down")

    monkeypatch.setattr(api.registry, "all_aliases", down)
    await api.registry.set_alias(MODEL, "production", 2, actor="test")
    await api.tick()
    assert api.backend.routes.failed_refreshes == 1
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 1
    monkeypatch.setattr(api.registry, "all_aliases", real)
    await api.tick()
    assert (await api.predict({"instances": rows(1)})).json()["version"] == 2


async def test_a_canary_rollback_is_served_after_one_refresh(api: Api) -> None:
    await api.registry.set_canary(MODEL, "production", version=2, percent=50, actor="test")
    api.draws.extend([0.1])
    assert (await api.predict({"instances": rows(1)})).json()["canary"] is True
    await api.registry.clear_canary(MODEL, "production", actor="test")
    await api.tick()
    api.draws.extend([0.1])
    answer = (await api.predict({"instances": rows(1)})).json()
    assert (answer["version"], answer["canary"]) == (1, False)


async def test_a_canary_takes_its_share_and_says_so(api: Api) -> None:
    await api.registry.set_canary(MODEL, "production", version=2, percent=20, actor="test")
    api.draws.extend([0.05, 0.5, 0.19, 0.2, 0.9])
    answers = [(await api.predict({"instances": rows(1)})).json() for _ in range(5)]
    assert [(a["version"], a["canary"]) for a in answers] == [
        (2, True),
        (1, False),
        (2, True),
        (1, False),
        (1, False),
    ]


async def test_a_sticky_canary_keeps_each_caller_on_one_side(api: Api) -> None:
    await api.registry.set_canary(
        MODEL, "production", version=2, percent=50, sticky_key="X-User", actor="test"
    )
    sides: dict[str, set[int]] = {}
    for user, _ in itertools.product([f"user-{i}" for i in range(12)], range(3)):
        reply = await api.predict({"instances": rows(1)}, headers={"X-User": user})
        sides.setdefault(user, set()).add(reply.json()["version"])
    assert all(len(seen) == 1 for seen in sides.values()), sides
    assert {v for seen in sides.values() for v in seen} == {1, 2}


async def test_concurrent_first_requests_share_one_refresh(api: Api) -> None:
    replies = await asyncio.gather(*(api.predict({"instances": rows(1)}) for _ in range(8)))
    assert {r.status_code for r in replies} == {200}
    assert api.backend.routes.refreshes == 1


# ---- the Serve handle client (a fake handle; no cluster) -------------------------------


class FakeHandle:
    """A deployment handle whose calls fail as ``failures`` says, then answer."""

    def __init__(self, failures: list[BaseException]) -> None:
        self.failures = failures
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self._model = ""

    def options(self, *, multiplexed_model_id: str) -> FakeHandle:
        self._model = multiplexed_model_id
        return self

    def __getattr__(self, method: str) -> Any:
        handle = self

        class Method:
            async def remote(self, *args: Any) -> Any:
                handle.calls.append((method, handle._model, args))
                if handle.failures:
                    raise handle.failures.pop(0)
                return {"prediction": np.array([1.0])}

        return Method()


def _cortex(failures: list[BaseException]) -> tuple[Any, FakeHandle]:
    from serve_apps.cortex.client import ServeCortex

    cortex = ServeCortex()
    handle = FakeHandle(failures)
    cortex._handle = handle
    return cortex, handle


def _died() -> BaseException:
    import ray

    return ray.exceptions.ActorUnavailableError("replica gone", b"\x00" * 16)


async def test_a_replica_dying_mid_call_is_retried_up_to_three_times() -> None:
    cortex, handle = _cortex([_died(), _died(), _died()])
    outputs = await cortex.predict("churn:1", pa.table({"age": [1.0]}), "r-1")
    assert outputs["prediction"].tolist() == [1.0]
    assert [c[:2] for c in handle.calls] == [("predict", "churn:1")] * 4
    assert cortex.retried == 3


async def test_a_fourth_failure_is_a_503() -> None:
    from cluster.errors import ServiceUnavailableError

    cortex, handle = _cortex([_died() for _ in range(4)])
    with pytest.raises(ServiceUnavailableError, match="churn:1"):
        await cortex.predict("churn:1", pa.table({"age": [1.0]}), "r-1")
    assert len(handle.calls) == 4


async def test_cortex_typed_errors_come_back_unwrapped_and_are_not_retried() -> None:
    import ray

    from cluster.errors import NotFoundError

    cause = NotFoundError(kind="model", name="ghost")
    cortex, handle = _cortex([ray.exceptions.RayTaskError("predict", "tb", cause)])
    with pytest.raises(NotFoundError, match="ghost"):
        await cortex.warm("ghost:1")
    assert len(handle.calls) == 1


# ---- the Cortex application's shape (built, not deployed) ------------------------------


def test_cortex_replicas_ask_for_a_gpu_only_when_they_run_on_one(data_dir: Path) -> None:
    from serve_apps.cortex import deployment_options

    settings = Settings(
        data_dir=data_dir,
        cortex={"min_replicas": 2, "max_replicas": 5, "num_gpus": 0.5, "num_cpus": 1},
    )
    cpu = deployment_options(settings, "cpu")
    assert cpu["ray_actor_options"] == {"num_cpus": 1}
    assert cpu["autoscaling_config"]["min_replicas"] == 2
    assert cpu["autoscaling_config"]["max_replicas"] == 5
    assert cpu["max_ongoing_requests"] == settings.cortex.max_ongoing_requests
    gpu = deployment_options(settings, "cuda")
    assert gpu["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 0.5}


@pytest.mark.parametrize(
    ("preference", "gpu", "device"),
    [("auto", False, "cpu"), ("auto", True, "cuda"), ("cpu", True, "cpu"), ("cuda", True, "cuda")],
)
def test_the_device_is_chosen_from_the_setting_and_the_cluster(
    data_dir: Path, preference: str, gpu: bool, device: str
) -> None:
    from serve_apps.cortex import build

    app = build(Settings(data_dir=data_dir, cortex={"device": preference}), gpu=gpu)
    deployment = app._bound_deployment  # what serve.run would deploy
    assert list(deployment.init_args)[1:] == [device]
    wants_gpu = (deployment.ray_actor_options or {}).get("num_gpus", 0) > 0
    assert wants_gpu == (device == "cuda")


def test_cuda_on_a_cluster_without_a_gpu_is_refused_at_build(data_dir: Path) -> None:
    from actors.cortex.errors import DeviceUnavailableError
    from serve_apps.cortex import build

    with pytest.raises(DeviceUnavailableError, match=r"cortex\.device"):
        build(Settings(data_dir=data_dir, cortex={"device": "cuda"}), gpu=False)
