"""Cortex as ``datapunk up`` deploys it: real Serve (two replicas), real HTTP through the
gateway, tiny registry models (built, not trained) on SQLite, the prediction log in the
Lake through the Lake actor pool.

Deployed once for the module; each test uses its own model name so routes never mix.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import ray
from ray import serve

from actors.cortex.predlog import log_table_name
from actors.cortex.signature import ARROW_STREAM_MEDIA_TYPE
from actors.forge.registry import registry_from_settings
from actors.lake.errors import TableNotFoundError
from actors.lake.service import LakeService
from cluster.settings import Settings
from serve_apps import cortex, gateway
from tests.cortex_serving_support import FEATURES, reference, register_tiny, rows, tiny_artifact
from tests.ray.serve_support import create_keys, deployed_apps, serve_settings

GATEWAY_APP = "gateway-cortex-test"
REFRESH_S = 0.2


@dataclass(frozen=True)
class Served:
    settings: Settings
    base_url: str
    key: str
    analyst_key: str

    def url(self, model: str) -> str:
        return f"{self.base_url}/api/v1/models/{model}/predict"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def _run(settings: Settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        async with registry_from_settings(settings) as registry:
            return await work(registry)

    return asyncio.run(go())


@pytest.fixture(scope="module")
def served(ray_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    settings = serve_settings(
        tmp_path_factory.mktemp("cortex"),
        # Two replicas from the start: the kill test needs a survivor.
        cortex={
            "min_replicas": 2,
            "max_replicas": 2,
            "num_cpus": 0.25,
            "route_refresh_s": REFRESH_S,
            "log_flush_s": 0.3,
            "batch_wait_timeout_s": 0.002,
        },
    )
    key, analyst = asyncio.run(
        create_keys(settings, ("service", "cortex test"), ("analyst", "cortex test analyst"))
    )
    apps = [(cortex.CORTEX_APP, cortex.build, None), (GATEWAY_APP, gateway.build, "/")]
    with deployed_apps(settings, apps) as base:
        yield Served(settings, base, key, analyst)


def _model(served: Served, name: str, seeds: list[int], production: int = 1) -> None:
    async def work(registry: Any) -> None:
        for seed in seeds:
            await register_tiny(registry, name, seed)
        await registry.set_alias(name, "production", production, actor="test")

    _run(served.settings, work)


def _wait_for_version(served: Served, model: str, version: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reply = httpx.post(served.url(model), json={"instances": rows(1)}, headers=served.headers)
        if reply.status_code == 200 and reply.json()["version"] == version:
            return
        time.sleep(REFRESH_S / 2)
    raise AssertionError(f"{model} never routed to version {version}")


async def _load(
    served: Served,
    model: str,
    total: int,
    concurrency: int,
    during: Callable[[int], Awaitable[None]] | None = None,
    headers: Callable[[int], dict[str, str]] | None = None,
) -> list[tuple[int, int | None, bool | None]]:
    """``total`` predictions from ``concurrency`` workers: (status, version, canary) each,
    in completion order. ``during(i)`` runs (awaited by the worker) before request ``i``."""
    results: list[tuple[int, int | None, bool | None]] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(http: httpx.AsyncClient) -> None:
        for i in counter:
            if during is not None:
                await during(i)
            sent = {**served.headers, **(headers(i) if headers else {})}
            try:
                reply = await http.post(
                    served.url(model), json={"instances": rows(1, seed=i)}, headers=sent
                )
            except httpx.HTTPError:
                results.append((0, None, None))
                continue
            body = reply.json() if reply.status_code == 200 else {}
            results.append((reply.status_code, body.get("version"), body.get("canary")))

    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return results


# ---- predictions -----------------------------------------------------------------------


def test_http_predictions_equal_the_in_process_model(served: Served) -> None:
    _model(served, "equal", [11])
    batch = rows(16, seed=1)
    reply = httpx.post(served.url("equal"), json={"instances": batch}, headers=served.headers)
    assert reply.status_code == 200, reply.text
    got = np.array([p["prediction"] for p in reply.json()["predictions"]])
    np.testing.assert_allclose(got, reference(tiny_artifact(11), batch), rtol=1e-6)

    table = pa.table({f: [r[f] for r in batch] for f in FEATURES})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    arrow = httpx.post(
        served.url("equal"),
        content=sink.getvalue().to_pybytes(),
        headers={
            **served.headers,
            "Content-Type": ARROW_STREAM_MEDIA_TYPE,
            "Accept": ARROW_STREAM_MEDIA_TYPE,
        },
    )
    assert arrow.status_code == 200, arrow.text
    assert arrow.headers["x-model-version"] == "1"
    answer = pa.ipc.open_stream(arrow.content).read_all()
    np.testing.assert_allclose(answer.column("prediction").to_numpy(), got, rtol=1e-12)


def test_a_batch_mixing_versions_answers_each_request_from_its_own_version(
    served: Served,
) -> None:
    _model(served, "mixed", [21, 22])
    handle = serve.get_deployment_handle(cortex.CORTEX_DEPLOYMENT, cortex.CORTEX_APP)
    batches = [rows(1 + i % 3, seed=i) for i in range(48)]

    async def one(i: int, method: str) -> np.ndarray:
        version = 1 + i % 2
        table = pa.table({f: [float(r[f]) for r in batches[i]] for f in FEATURES})
        call = handle.options(multiplexed_model_id=f"mixed:{version}")
        outputs = await getattr(call, method).remote(table, f"req-{i}")
        return np.asarray(outputs["prediction"])

    async def all_of(method: str) -> list[np.ndarray]:
        return list(await asyncio.gather(*(one(i, method) for i in range(len(batches)))))

    stats = handle.stats.remote().result()
    assert stats["device"] == "cpu"
    assert stats["max_batch_size"] == served.settings.cortex.max_batch_size
    assert stats["batch_wait_timeout_s"] == served.settings.cortex.batch_wait_timeout_s
    for method in ("predict", "predict_unbatched"):
        answers = asyncio.run(all_of(method))
        for i, got in enumerate(answers):
            want = reference(tiny_artifact(21 + i % 2), batches[i])
            np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=f"{method} request {i}")


def test_malformed_input_is_422_never_500(served: Served) -> None:
    _model(served, "strict", [31])
    bodies: list[dict[str, Any]] = [
        {"content": b"{not json"},
        {"json": {"instances": [{"age": "x", "income": 1, "tenure": 1}]}},
        {"json": {"instances": [{"age": 1}]}},
        {"json": {"columns": {"age": [1.0], "income": [1.0, 2.0], "tenure": [1.0]}}},
        {"json": {"rows": []}},
        {"json": [1, 2, 3]},
        {"content": b"\x00\x01", "headers": {"Content-Type": ARROW_STREAM_MEDIA_TYPE}},
    ]
    for body in bodies:
        headers = {**served.headers, **body.pop("headers", {})}
        reply = httpx.post(served.url("strict"), headers=headers, **body)
        assert reply.status_code == 422, (body, reply.text)
        assert reply.json()["error"]["problems"], reply.text
    denied = httpx.post(
        served.url("strict"),
        json={"instances": rows(1)},
        headers={"Authorization": f"Bearer {served.analyst_key}"},
    )
    assert denied.status_code == 403


# ---- swap and canary -------------------------------------------------------------------


def test_a_swap_under_continuous_load_loses_no_request(served: Served) -> None:
    _model(served, "swap", [41, 42])
    _wait_for_version(served, "swap", 1)

    async def move(i: int) -> None:
        if i == 150:
            await asyncio.to_thread(
                _run,
                served.settings,
                lambda registry: registry.set_alias("swap", "production", 2, actor="test"),
            )

    results = asyncio.run(_load(served, "swap", 600, concurrency=8, during=move))
    statuses = Counter(status for status, _, _ in results)
    assert statuses == {200: 600}, statuses
    versions = [version for _, version, _ in results]
    assert versions[0] == 1
    assert set(versions[-100:]) == {2}, Counter(versions)


def test_a_canary_at_20_percent_takes_20_percent_and_rolls_back(served: Served) -> None:
    _model(served, "canary", [51, 52])
    _wait_for_version(served, "canary", 1)

    async def start(registry: Any) -> None:
        await registry.set_canary("canary", "production", version=2, percent=20, actor="t")

    _run(served.settings, start)
    time.sleep(REFRESH_S * 3)
    results = asyncio.run(_load(served, "canary", 2000, concurrency=16))
    assert all(status == 200 for status, _, _ in results)
    assert all((version == 2) == canary for _, version, canary in results)
    share = sum(1 for _, _, canary in results if canary) / len(results)
    assert 0.15 <= share <= 0.25, share

    _run(served.settings, lambda registry: registry.clear_canary("canary", "production"))
    time.sleep(REFRESH_S * 3)
    after = asyncio.run(_load(served, "canary", 100, concurrency=8))
    assert {(version, canary) for _, version, canary in after} == {(1, False)}


def test_a_sticky_canary_keeps_each_caller_on_one_side(served: Served) -> None:
    _model(served, "sticky", [61, 62])

    async def start(registry: Any) -> None:
        await registry.set_canary(
            "sticky", "production", version=2, percent=50, sticky_key="X-User", actor="t"
        )

    _run(served.settings, start)
    time.sleep(REFRESH_S * 3)
    seen: dict[str, set[int]] = {}
    with httpx.Client(timeout=30) as http:
        for i in range(60):
            user = f"user-{i % 15}"
            reply = http.post(
                served.url("sticky"),
                json={"instances": rows(1)},
                headers={**served.headers, "X-User": user},
            )
            assert reply.status_code == 200, reply.text
            seen.setdefault(user, set()).add(reply.json()["version"])
    assert all(len(versions) == 1 for versions in seen.values()), seen
    assert {v for versions in seen.values() for v in versions} == {1, 2}


# ---- resilience and the prediction log -------------------------------------------------


def _cortex_replicas() -> list[str]:
    return [
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(f"SERVE_REPLICA::{cortex.CORTEX_APP}#")
    ]


def test_killing_a_replica_under_load_loses_at_most_one_in_a_thousand(served: Served) -> None:
    _model(served, "sturdy", [71])
    _wait_for_version(served, "sturdy", 1)
    assert len(_cortex_replicas()) == 2
    # Serve sends a version's requests to the replica that holds it: kill that one.
    handle = serve.get_deployment_handle(cortex.CORTEX_DEPLOYMENT, cortex.CORTEX_APP)
    holder = handle.options(multiplexed_model_id="sturdy:1").warm.remote("sturdy:1").result()
    victim = ray.get_actor(holder["replica"], namespace="serve")

    async def kill(i: int) -> None:
        if i == 300:
            ray.kill(victim, no_restart=True)

    results = asyncio.run(_load(served, "sturdy", 1200, concurrency=16, during=kill))
    ok = sum(1 for status, _, _ in results if status == 200)
    assert ok / len(results) >= 0.999, Counter(status for status, _, _ in results)
    assert holder["replica"] not in _cortex_replicas()


def test_predictions_are_logged_to_the_lake(served: Served) -> None:
    _model(served, "logged", [81])
    batch = rows(3, seed=8)
    reply = httpx.post(
        served.url("logged"),
        json={"instances": batch},
        headers={**served.headers, "X-Request-ID": "log-me-1"},
    )
    assert reply.status_code == 200, reply.text
    table = log_table_name(served.settings.cortex.log_namespace, "logged")
    lake = LakeService.from_settings(served.settings)
    deadline = time.monotonic() + 30
    logged = pa.table({})
    while time.monotonic() < deadline:
        try:
            logged = asyncio.run(lake.scan(table, filter="request_id = 'log-me-1'"))
        except TableNotFoundError:
            logged = pa.table({})
        if logged.num_rows:
            break
        time.sleep(0.3)
    assert logged.num_rows == 3, logged
    assert set(logged.column("version").to_pylist()) == {1}
    assert sorted(logged.column("age").to_pylist()) == sorted(r["age"] for r in batch)
    np.testing.assert_allclose(
        sorted(logged.column("prediction").to_pylist()),
        sorted(p["prediction"] for p in reply.json()["predictions"]),
    )
