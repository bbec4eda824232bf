"""Schemathesis against the gateway's own OpenAPI document and GraphQL schema.

Property-based requests generated from each documented operation and each GraphQL root
field, sent with an admin key through the ASGI transport to the gateway with every
backend: no answer may be a 5xx, and every answer must match what the document says
(status code documented, content type, body schema). Examples are few and derandomized
so the run stays under a minute and repeats exactly.

Hypothesis drives examples synchronously, while the app (SQLite engine, caches) lives
on one event loop; ``LoopApp`` keeps that loop on its own thread and hands each request
to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cluster.security.rbac import Role
from tests.contracts.forge_store import MODEL, register
from tests.stream_support import window_topology
from tests.unit.full_gateway import FullGateway, full_gateway

BASE = "http://t"
EXAMPLES_PER_OPERATION = 5
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
INTROSPECTION = """{ __schema { queryType { name } mutationType { name }
  types { kind name fields(includeDeprecated: true) { name args { name type { ...T }
  defaultValue } type { ...T } } inputFields { name type { ...T } defaultValue }
  enumValues(includeDeprecated: true) { name } possibleTypes { name } interfaces { name } }
  directives { name locations args { name type { ...T } defaultValue } } } }
fragment T on __Type { kind name ofType { kind name ofType { kind name ofType { kind name
  ofType { kind name ofType { kind name } } } } } }"""


class LoopApp:
    """The full gateway on an event loop of its own thread; ``send`` from any thread."""

    def __init__(self, data_dir: Path) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready: Future[FullGateway] = Future()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._serve(data_dir), self._loop)
        self.gw = self._ready.result(timeout=120)

    async def _serve(self, data_dir: Path) -> None:
        self._stop = asyncio.Event()
        try:
            async with full_gateway(data_dir) as gw:
                await seed(gw)
                self._ready.set_result(gw)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            raise

    def run(self, make: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(make(), self._loop).result(timeout=60)

    def send(self, kwargs: dict[str, Any]) -> httpx.Response:
        """A ``requests``-style kwargs dict (schemathesis's) sent through httpx."""

        async def request() -> httpx.Response:
            async with self.gw.client() as http:
                response = await http.request(
                    kwargs["method"],
                    kwargs["url"],
                    params=kwargs.get("params"),
                    headers=kwargs.get("headers"),
                    cookies=kwargs.get("cookies"),
                    json=kwargs.get("json"),
                    content=kwargs.get("data"),
                )
                await response.aread()
                return response

        response: httpx.Response = self.run(request)
        return response

    def close(self) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._main.result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


async def seed(gw: FullGateway) -> None:
    """Something for the generated requests to find: a table, a model, a stream."""
    await gw.lake.create_namespace("sales")
    await gw.lake.create_table("sales.orders", schema=pa.schema([("id", pa.int64())]))
    await gw.lake.append("sales.orders", pa.table({"id": [1, 2]}))
    await register(gw.registry)
    await gw.registry.set_alias(MODEL, "production", 1, actor="test")
    await gw.streams.deploy(window_topology("orders"))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopApp]:
    data_dir = Path(tmp_path_factory.mktemp("schemathesis")) / "datapunk"
    data_dir.mkdir()
    served = LoopApp(data_dir)
    yield served
    served.close()


def admin(app: LoopApp) -> dict[str, str]:
    """The admin key in both places: it replaces the credentials schemathesis generates
    for the documented security schemes (else most examples would only test a 401)."""
    key = app.gw.keys[Role.ADMIN]
    return {"X-API-Key": key, "Authorization": f"Bearer {key}"}


def exercise(operation: Any, app: LoopApp, base_url: str) -> None:
    """Send ``EXAMPLES_PER_OPERATION`` generated requests; validate every answer."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE))
    def check(case: Any) -> None:
        kwargs = case.as_transport_kwargs(base_url=base_url, headers=admin(app))
        response = app.send(kwargs)
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    check()


def operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def test_openapi_operations_answer_as_documented(app: LoopApp) -> None:
    schema = schemathesis.openapi.from_dict(app.gw.app.openapi())
    found = operations(schema)
    assert len(found) >= 50
    failures = []
    for operation in found:
        try:
            exercise(operation, app, BASE)
        except (Exception, BaseExceptionGroup) as exc:  # all of them, not the first only
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)


def test_graphql_fields_answer_as_the_schema_says(app: LoopApp) -> None:
    introspected = app.send(
        {
            "method": "POST",
            "url": f"{BASE}/api/v1/graphql",
            "headers": admin(app),
            "json": {"query": INTROSPECTION},
        }
    )
    assert introspected.status_code == 200, introspected.text
    schema = schemathesis.graphql.from_dict(introspected.json()["data"])
    found = operations(schema)
    assert len(found) >= 15
    failures = []
    for operation in found:
        try:
            exercise(operation, app, f"{BASE}/api/v1/graphql")
        except (Exception, BaseExceptionGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert failures == [], "\n\n".join(failures)


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet", "arrow"])
def test_query_results_in_every_format_match_the_document(app: LoopApp, fmt: str) -> None:
    """Random names rarely hit the seeded table: ask for it in each format explicitly."""
    schema = schemathesis.openapi.from_dict(app.gw.app.openapi())
    requests: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/lake/tables/{name}/query", {"format": fmt}),
        ("/api/v1/lake/sql", {"query": "SELECT id FROM sales.orders", "format": fmt}),
    ]
    for path, body in requests:
        operation = schema[path]["POST"]
        case = operation.Case(
            path_parameters={"name": "sales.orders"} if "{name}" in path else {},
            body=body,
            media_type="application/json",
        )
        kwargs = case.as_transport_kwargs(base_url=BASE, headers=admin(app))
        response = app.send(kwargs)
        assert response.status_code == 200, response.text
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)
