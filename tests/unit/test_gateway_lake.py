"""``/api/v1/lake`` on the real gateway app: real keys, an in-process Lake, no Ray."""

from __future__ import annotations

import io
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI

from actors.lake.service import LakeService
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway import routes_lake
from serve_apps.gateway.asgi import GatewayDeps, create_app
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, client, error_of, key_store

LAKE = "/api/v1/lake"
TABLE = "default.orders"
CREATE = {
    "name": "orders",
    "columns": [
        {"name": "id", "type": "long", "required": True},
        {"name": "region", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "ts", "type": "timestamp"},
    ],
    "partition_by": ["region"],
    "sort_by": ["id"],
}
JSON_ROWS = [
    {"id": 1, "region": "eu", "amount": 10.0},
    {"id": 2, "region": "us", "amount": 20},  # a JSON integer into a double column
]
CSV_BODY = b"id,region,amount,ts\n3,eu,30.0,2026-01-01T00:00:00\n4,apac,40.0,2026-01-02T00:00:00\n"
PARQUET_ROWS = pa.table({"id": [5], "region": ["eu"], "amount": [50.0]})
ARROW_ROWS = pa.table({"id": [6, 7], "region": ["us", "us"], "amount": [60.0, 70.0]})


@dataclass
class Api:
    """The app, an HTTP client and one key per role."""

    http: httpx.AsyncClient
    app: FastAPI
    keys: dict[Role, str]
    spool: Path
    lake: LakeService

    async def call(
        self, method: str, path: str, role: Role | None = Role.ENGINEER, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["X-API-Key"] = self.keys[role]
        return await self.http.request(method, LAKE + path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = await self.call(method, path, **kwargs)
        assert reply.status_code in (200, 201), reply.text
        self.assert_spool_empty()
        return reply.json()

    async def upload(self, body: bytes, content_type: str, name: str = "orders") -> Any:
        headers = {"Content-Type": content_type}
        return await self.ok("POST", f"/tables/{name}/append", content=body, headers=headers)

    async def rows(self, **query: Any) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.ok("POST", f"/tables/{TABLE}/query", json=query)
        return sorted(rows, key=lambda r: r.get("id", 0))

    async def snapshot(self) -> int | None:
        described = await self.ok("GET", f"/tables/{TABLE}")
        current: int | None = described["current_snapshot_id"]
        return current

    def assert_spool_empty(self) -> None:
        leftovers = list(self.spool.iterdir()) if self.spool.exists() else []
        assert leftovers == [], leftovers


def lake_error(reply: httpx.Response, status: int, code: str | None = None) -> str:
    """The error body of ``reply`` (status checked, nothing but ``error`` in it); its message."""
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"}, reply.text
    error = error_of(reply)
    if code is not None:
        assert error["code"] == code, error
    message: str = error["message"]
    return message


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    settings = Settings(data_dir=data_dir)
    clock = FakeClock()
    async with key_store(settings, clock) as store:
        keys = {role: (await store.create(role))[0] for role in Role}
        lake = LakeService.from_settings(settings)
        spool = data_dir / "spool"
        deps = GatewayDeps(authenticator=authenticator(store, clock), lake=lake, spool_dir=spool)
        app = create_app(deps)
        async with client(app) as http:
            yield Api(http, app, keys, spool, lake)


@pytest.fixture
async def seeded(api: Api) -> Api:
    """``default.orders`` with the two JSON rows (ids 1 and 2) in one snapshot."""
    await api.ok("POST", "/tables", json=CREATE)
    await api.ok("POST", f"/tables/{TABLE}/append", json={"rows": JSON_ROWS})
    return api


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def arrow_stream_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# --- the happy path ----------------------------------------------------------------------


async def test_create_then_append_json_csv_parquet_and_arrow(api: Api) -> None:
    created = await api.call("POST", "/tables", json=CREATE)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == TABLE and body["current_snapshot_id"] is None
    assert [(c["name"], c["type"], c["required"]) for c in body["schema"]] == [
        ("id", "long", True),
        ("region", "string", False),
        ("amount", "double", False),
        ("ts", "timestamp", False),
    ]
    assert body["partition_spec"] == [
        {"name": "region", "source": "region", "transform": "identity"}
    ]
    assert await api.ok("GET", "/tables") == [TABLE]
    assert await api.ok("GET", "/tables", params={"namespace": "default"}) == [TABLE]

    results = [
        await api.ok("POST", f"/tables/{TABLE}/append", json={"rows": JSON_ROWS}),
        await api.upload(CSV_BODY, "text/csv; charset=utf-8"),
        await api.upload(parquet_bytes(PARQUET_ROWS), "application/vnd.apache.parquet"),
        await api.upload(arrow_stream_bytes(ARROW_ROWS), "application/vnd.apache.arrow.stream"),
    ]
    assert [r["rows"] for r in results] == [2, 2, 1, 2]
    assert len({r["snapshot_id"] for r in results}) == 4
    rows = await api.rows()
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[1] == {"id": 2, "region": "us", "amount": 20.0, "ts": None}
    assert rows[2]["ts"] == "2026-01-01T00:00:00"


async def test_namespaces_hold_tables_sql_names_them_plainly(api: Api) -> None:
    missing = await api.call("POST", "/tables", json={**CREATE, "name": "sales.orders"})
    assert "namespace 'sales' does not exist" in lake_error(missing, 404, "namespace_not_found")
    created = await api.call("POST", "/namespaces", json={"name": "sales"})
    assert created.status_code == 201, created.text
    again = await api.call("POST", "/namespaces", json={"name": "sales"})
    assert "already exists" in lake_error(again, 409, "namespace_exists")
    await api.ok("POST", "/namespaces", json={"name": "sales", "exist_ok": True})
    assert await api.ok("GET", "/namespaces") == ["sales"]
    await api.ok("POST", "/tables", json={**CREATE, "name": "sales.orders"})
    await api.ok("POST", "/tables/sales.orders/append", json=JSON_ROWS)
    query = {"query": "SELECT sum(amount) AS total FROM sales.orders"}
    assert await api.ok("POST", "/sql", json=query) == [{"total": 30.0}]
    assert await api.ok("GET", "/tables", params={"namespace": "sales"}) == ["sales.orders"]


async def test_a_bare_json_list_and_json_lines_also_append(seeded: Api) -> None:
    await seeded.ok("POST", f"/tables/{TABLE}/append", json=[{"id": 8, "region": "eu"}])
    lines = b'{"id": 9, "region": "us", "amount": 1.5, "ts": "2026-03-04T05:06:07"}\n'
    await seeded.upload(lines, "application/x-ndjson")
    rows = await seeded.rows(filter="id >= 8")
    assert [(r["id"], r["ts"]) for r in rows] == [(8, None), (9, "2026-03-04T05:06:07")]


async def test_json_values_take_the_column_types(seeded: Api) -> None:
    """JSON has no timestamps or decimals: ISO text and nulls are typed by the table."""
    rows = [{"id": 10, "region": None, "amount": None, "ts": "2026-05-06T07:08:09.5"}]
    await seeded.ok("POST", f"/tables/{TABLE}/append", json={"rows": rows})
    [row] = await seeded.rows(filter="id = 10")
    assert row == {"id": 10, "region": None, "amount": None, "ts": "2026-05-06T07:08:09.500000"}
    bad = [{"id": 11, "ts": "not a time"}]
    reply = await seeded.call("POST", f"/tables/{TABLE}/append", json={"rows": bad})
    message = lake_error(reply, 422, "schema_mismatch")
    assert "'ts'" in message and "not a time" in message


async def test_query_encodes_json_csv_parquet_and_arrow(seeded: Api) -> None:
    await seeded.upload(CSV_BODY, "text/csv")
    await seeded.upload(parquet_bytes(PARQUET_ROWS), "application/vnd.apache.parquet")
    query = {"columns": ["id", "amount"], "filter": "amount >= 30 and region = 'eu'"}
    expected = [{"id": 3, "amount": 30.0}, {"id": 5, "amount": 50.0}]

    def ordered(table: pa.Table) -> list[dict[str, Any]]:
        return sorted(table.to_pylist(), key=lambda r: r["id"])

    assert await seeded.rows(**query) == expected
    decoders = {
        "csv": lambda b: pa_csv.read_csv(io.BytesIO(b)),
        "parquet": lambda b: pq.read_table(io.BytesIO(b)),
        "arrow": lambda b: pa_ipc.open_stream(b).read_all(),
    }
    media = {
        "csv": "text/csv",
        "parquet": "application/vnd.apache.parquet",
        "arrow": "application/vnd.apache.arrow.stream",
    }
    for fmt, decode in decoders.items():
        reply = await seeded.call("POST", f"/tables/{TABLE}/query", json={**query, "format": fmt})
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith(media[fmt])
        assert reply.headers["x-row-count"] == "2"
        table = decode(reply.content)
        assert table.column_names == ["id", "amount"]
        assert ordered(table) == expected, fmt
    limited = await seeded.rows(limit=1)
    assert len(limited) == 1


async def test_time_travel_history_and_rollback(seeded: Api) -> None:
    second = await seeded.upload(CSV_BODY, "text/csv")
    third = await seeded.upload(
        arrow_stream_bytes(ARROW_ROWS), "application/vnd.apache.arrow.stream"
    )
    history = await seeded.ok("GET", f"/tables/{TABLE}/history")
    assert [h["operation"] for h in history] == ["append"] * 3
    first_id, second_id, third_id = (h["snapshot_id"] for h in history)
    assert (second_id, third_id) == (second["snapshot_id"], third["snapshot_id"])
    assert [h["summary"]["total-records"] for h in history] == ["2", "4", "6"]

    assert len(await seeded.rows(snapshot_id=first_id)) == 2
    assert len(await seeded.rows(as_of=history[1]["timestamp"])) == 4
    zulu = history[0]["timestamp"].replace("+00:00", "Z")
    assert len(await seeded.rows(as_of=zulu)) == 2
    before_any = await seeded.call("POST", f"/tables/{TABLE}/query", json={"as_of": "2000-01-01"})
    assert "history default.orders" in lake_error(before_any, 404, "snapshot_not_found")

    rolled = await seeded.ok("POST", f"/tables/{TABLE}/rollback", json={"snapshot_id": second_id})
    assert rolled["snapshot_id"] == second_id
    assert [r["id"] for r in await seeded.rows()] == [1, 2, 3, 4]
    history = await seeded.ok("GET", f"/tables/{TABLE}/history")
    assert history[-1]["snapshot_id"] == second_id
    missing = await seeded.call("POST", f"/tables/{TABLE}/rollback", json={"snapshot_id": 42})
    assert "'42'" in lake_error(missing, 404, "snapshot_not_found")


async def test_delete_upsert_and_sql(seeded: Api) -> None:
    await seeded.upload(CSV_BODY, "text/csv")
    deleted = await seeded.ok("POST", f"/tables/{TABLE}/delete", json={"filter": "region = 'apac'"})
    assert deleted["rows_deleted"] == 1
    nothing = await seeded.ok("POST", f"/tables/{TABLE}/delete", json={"filter": "id > 100"})
    assert nothing["rows_deleted"] == 0

    changes = [
        {"id": 1, "region": "eu", "amount": 11.0, "ts": None},
        {"id": 8, "region": "us", "amount": 80.0, "ts": "2026-02-01T00:00:00"},
    ]
    upserted = await seeded.ok(
        "POST", f"/tables/{TABLE}/upsert", params={"key": "id"}, json={"rows": changes}
    )
    assert (upserted["rows_updated"], upserted["rows_inserted"]) == (1, 1)
    rows = await seeded.rows(columns=["id", "amount"])
    assert rows == [
        {"id": 1, "amount": 11.0},
        {"id": 2, "amount": 20.0},
        {"id": 3, "amount": 30.0},
        {"id": 8, "amount": 80.0},
    ]
    partial = await seeded.call(
        "POST", f"/tables/{TABLE}/upsert", params={"key": "id"}, json=[{"id": 1, "amount": 1.0}]
    )
    assert "'region'" in lake_error(partial, 422, "schema_mismatch")
    no_key = await seeded.call("POST", f"/tables/{TABLE}/upsert", json={"rows": changes})
    assert "key" in lake_error(no_key, 422, "invalid_input")

    sql = (
        "SELECT region, sum(amount) AS total, count(*) AS n "
        'FROM "default".orders GROUP BY region ORDER BY region'
    )
    assert await seeded.ok("POST", "/sql", json={"query": sql}) == [
        {"region": "eu", "total": 41.0, "n": 2},
        {"region": "us", "total": 100.0, "n": 2},
    ]
    reply = await seeded.call("POST", "/sql", json={"query": sql, "format": "csv"})
    assert reply.text.splitlines() == ['"region","total","n"', '"eu",41,2', '"us",100,2']
    too_many = await seeded.call("POST", "/sql", json={"query": "SELECT * FROM orders", "limit": 2})
    assert "over the limit of 2 rows" in lake_error(too_many, 422, "result_too_large")


async def test_maintenance_compacts_and_removes_orphans_then_describe(seeded: Api) -> None:
    for _ in range(2):
        await seeded.ok("POST", f"/tables/{TABLE}/append", json={"rows": JSON_ROWS})
    location = (await seeded.ok("GET", f"/tables/{TABLE}"))["location"].removeprefix("file://")
    orphan = Path(location) / "data" / "stray-00000.parquet"
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(parquet_bytes(PARQUET_ROWS))
    an_hour_ago = time.time() - 3600
    os.utime(orphan, (an_hour_ago, an_hour_ago))

    report = await seeded.ok(
        "POST",
        f"/tables/{TABLE}/maintenance",
        json={"compact": True, "remove_orphans": True, "orphan_older_than_s": 0},
    )
    assert report["table"] == TABLE
    compaction = report["compaction"]
    # Two regions, three appends: three files each become one.
    assert (compaction["files_before"], compaction["files_after"]) == (6, 2)
    assert compaction["rows"] == 6
    assert report["orphan_files"] == [orphan.as_uri()]
    assert not orphan.exists()
    assert len(await seeded.rows()) == 6

    described = await seeded.ok("GET", f"/tables/{TABLE}")
    assert described["current_snapshot_id"] == compaction["snapshot_id"]
    assert [s["operation"] for s in described["snapshots"]] == ["append"] * 3 + ["overwrite"]
    assert described["sort_order"][0]["source"] == "id"
    assert described["properties"]["write.parquet.compression-codec"] == "zstd"


# --- permissions -------------------------------------------------------------------------

READS = {
    ("GET", "/namespaces"): {},
    ("GET", "/tables"): {},
    ("GET", "/tables/{name}"): {},
    ("GET", "/tables/{name}/history"): {},
    ("POST", "/tables/{name}/query"): {"json": {"format": "json"}},
    ("POST", "/sql"): {"json": {"query": "SELECT count(*) AS n FROM orders"}},
}
WRITES = {
    ("POST", "/namespaces"): {"json": {"name": "sales"}},
    ("POST", "/tables"): {"json": {**CREATE, "name": "other"}},
    ("POST", "/tables/{name}/append"): {"json": {"rows": JSON_ROWS}},
    ("POST", "/tables/{name}/upsert"): {"params": {"key": "id"}, "json": {"rows": JSON_ROWS}},
    ("POST", "/tables/{name}/delete"): {"json": {"filter": "id = 1"}},
    ("POST", "/tables/{name}/rollback"): {"json": {"snapshot_id": 1}},
    ("POST", "/tables/{name}/maintenance"): {"json": {"compact": True}},
    ("POST", "/tables/{name}/sensitive"): {"json": {"columns": ["region"]}},
}


def lake_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every (method, path) the lake router serves, path relative to ``/api/v1/lake``.

    Read from the OpenAPI schema: FastAPI 0.165 keeps included routers behind a lazy
    ``_IncludedRouter`` in ``app.routes``, and the schema is its public listing.
    """
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    found = {
        (method.upper(), path.removeprefix(LAKE))
        for path, operations in paths.items()
        if path.startswith(LAKE + "/")
        for method in operations
    }
    assert found, "no lake routes: is the router mounted?"
    return found


def test_every_lake_route_is_classified(api: Api) -> None:
    """A new route must be added to READS or WRITES, so the checks below cover it."""
    assert lake_routes(api.app) == set(READS) | set(WRITES)


@pytest.mark.parametrize("route", sorted(WRITES), ids=" ".join)
async def test_analyst_gets_403_on_writes_and_nothing_changes(
    seeded: Api, route: tuple[str, str]
) -> None:
    method, path = route
    before = await seeded.snapshot()
    reply = await seeded.call(method, path.format(name=TABLE), Role.ANALYST, **WRITES[route])
    message = lake_error(reply, 403, "permission_denied")
    assert "role 'analyst' lacks permission 'lake.table:write'" in message
    assert await seeded.snapshot() == before
    assert await seeded.ok("GET", "/tables") == [TABLE]
    assert await seeded.ok("GET", "/namespaces") == ["default"]


@pytest.mark.parametrize("route", sorted(READS), ids=" ".join)
async def test_analyst_reads_and_service_writes_only(seeded: Api, route: tuple[str, str]) -> None:
    method, path = route
    reply = await seeded.call(method, path.format(name=TABLE), Role.ANALYST, **READS[route])
    assert reply.status_code == 200, reply.text
    denied = await seeded.call(method, path.format(name=TABLE), Role.SERVICE, **READS[route])
    assert "lacks permission 'lake.table:read'" in lake_error(denied, 403, "permission_denied")


async def test_service_role_may_append(seeded: Api) -> None:
    reply = await seeded.call(
        "POST", f"/tables/{TABLE}/append", Role.SERVICE, json=[{"id": 3, "region": "eu"}]
    )
    assert reply.status_code == 200, reply.text


async def test_no_key_is_401_on_every_lake_route(seeded: Api) -> None:
    for method, path in sorted(lake_routes(seeded.app)):
        kwargs = {**READS, **WRITES}[(method, path)]
        reply = await seeded.call(method, path.format(name=TABLE), None, **kwargs)
        assert "missing API key" in lake_error(reply, 401, "unauthenticated"), (method, path)
        bad = await seeded.call(
            method, path.format(name=TABLE), None, headers={"X-API-Key": "dp_nope"}, **kwargs
        )
        assert lake_error(bad, 401, "unauthenticated"), (method, path)


# --- errors ------------------------------------------------------------------------------


async def test_unknown_table_is_404_naming_it(api: Api) -> None:
    requests = [
        ("GET", "/tables/nope", {}),
        ("GET", "/tables/nope/history", {}),
        ("POST", "/tables/nope/query", {"json": {}}),
        ("POST", "/tables/nope/append", {"json": {"rows": JSON_ROWS}}),
        (
            "POST",
            "/tables/nope/append",
            {"content": CSV_BODY, "headers": {"Content-Type": "text/csv"}},
        ),
        ("POST", "/tables/nope/upsert", {"params": {"key": "id"}, "json": JSON_ROWS}),
        ("POST", "/tables/nope/delete", {"json": {"filter": "id = 1"}}),
        ("POST", "/tables/nope/rollback", {"json": {"snapshot_id": 1}}),
        ("POST", "/tables/nope/maintenance", {"json": {}}),
        ("POST", "/sql", {"json": {"query": "SELECT * FROM nope"}}),
    ]
    for method, path, kwargs in requests:
        reply = await api.call(method, path, **kwargs)
        message = lake_error(reply, 404)
        assert "'default.nope' does not exist" in message or "'nope' does not exist" in message
        api.assert_spool_empty()


async def test_a_string_into_a_long_column_is_422_and_changes_nothing(seeded: Api) -> None:
    before = await seeded.snapshot()
    rows = [{"id": "seven", "region": "eu", "amount": 1.0}]
    reply = await seeded.call("POST", f"/tables/{TABLE}/append", json={"rows": rows})
    message = lake_error(reply, 422, "schema_mismatch")
    assert "column 'id' of table 'default.orders' is long but the data has string" in message
    csv_body = b"id,region\nseven,eu\n"
    reply = await seeded.call(
        "POST", f"/tables/{TABLE}/append", content=csv_body, headers={"Content-Type": "text/csv"}
    )
    assert "column 'id'" in lake_error(reply, 422, "schema_mismatch")
    seeded.assert_spool_empty()
    assert await seeded.snapshot() == before
    assert [r["id"] for r in await seeded.rows()] == [1, 2]


async def test_a_new_column_is_refused_without_evolve(seeded: Api) -> None:
    rows = [{"id": 3, "channel": "web"}]
    path = f"/tables/{TABLE}/append"
    refused = await seeded.call("POST", path, params={"evolve": "false"}, json=rows)
    assert "'channel'" in lake_error(refused, 422, "schema_mismatch")
    await seeded.ok("POST", path, json=rows)
    described = await seeded.ok("GET", f"/tables/{TABLE}")
    assert described["schema"][-1]["name"] == "channel"


async def test_bad_filters_columns_and_sql_are_422(seeded: Api) -> None:
    query = f"/tables/{TABLE}/query"
    bad_filter = await seeded.call("POST", query, json={"filter": "id >"})
    assert "invalid row filter 'id >'" in lake_error(bad_filter, 422, "invalid_filter")
    bad_delete = await seeded.call("POST", f"/tables/{TABLE}/delete", json={"filter": "nope = 1"})
    assert "'nope'" in lake_error(bad_delete, 422, "unknown_column")
    bad_column = await seeded.call("POST", query, json={"columns": ["nope"]})
    assert "available columns" in lake_error(bad_column, 422, "unknown_column")
    bad_time = await seeded.call("POST", query, json={"as_of": "yesterday"})
    assert "as_of" in lake_error(bad_time, 422, "invalid_input")
    bad_format = await seeded.call("POST", query, json={"format": "xml"})
    assert "format" in lake_error(bad_format, 422, "invalid_input")

    bad_sql = await seeded.call("POST", "/sql", json={"query": "SELEC 1"})
    assert "SQL error" in lake_error(bad_sql, 422, "sql_invalid")
    keyword = await seeded.call("POST", "/sql", json={"query": "SELECT * FROM default.orders"})
    assert '"default".orders' in lake_error(keyword, 422, "sql_invalid")
    copy = await seeded.call("POST", "/sql", json={"query": "COPY orders TO '/tmp/out.csv'"})
    assert "COPY statement is not allowed" in lake_error(copy, 422, "sql_not_allowed")
    files = await seeded.call(
        "POST", "/sql", json={"query": "SELECT * FROM read_csv('/etc/passwd')"}
    )
    assert "read_csv" in lake_error(files, 422, "sql_not_allowed")


async def test_bad_bodies_are_422(seeded: Api) -> None:
    path = f"/tables/{TABLE}/append"
    unsupported = await seeded.call(
        "POST", path, content=b"<rows/>", headers={"Content-Type": "application/xml"}
    )
    message = lake_error(unsupported, 422, "invalid_input")
    assert "application/xml" in message and "text/csv" in message
    not_json = await seeded.call(
        "POST", path, content=b"{nope", headers={"Content-Type": "application/json"}
    )
    assert "JSON" in lake_error(not_json, 422, "invalid_input")
    empty = await seeded.call("POST", path, json={"rows": []})
    assert "non-empty JSON list" in lake_error(empty, 422, "invalid_input")
    mixed = await seeded.call(
        "POST", path, json=[{"id": 1, "region": "eu"}, {"id": 2, "region": 3}]
    )
    assert lake_error(mixed, 422, "invalid_input")
    upsert_not_json = await seeded.call(
        "POST",
        f"/tables/{TABLE}/upsert",
        params={"key": "id"},
        content=b"{nope",
        headers={"Content-Type": "application/json"},
    )
    assert "JSON" in lake_error(upsert_not_json, 422, "invalid_input")
    bad_create = await seeded.call(
        "POST",
        "/tables",
        json={**CREATE, "name": "t2", "columns": [{"name": "x", "type": "nosuch"}]},
    )
    assert "nosuch" in lake_error(bad_create, 422, "invalid_input")
    exists = await seeded.call("POST", "/tables", json=CREATE)
    assert "already exists" in lake_error(exists, 409, "table_exists")
    assert await seeded.ok("GET", "/tables") == [TABLE]


async def test_an_upload_over_the_limit_is_413_and_leaves_no_spool_file(
    seeded: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routes_lake, "MAX_UPLOAD_BYTES", 64)
    reply = await seeded.call(
        "POST",
        f"/tables/{TABLE}/append",
        content=CSV_BODY * 4,
        headers={"Content-Type": "text/csv"},
    )
    assert "over 64 bytes" in lake_error(reply, 413, "payload_too_large")
    seeded.assert_spool_empty()
    assert [r["id"] for r in await seeded.rows()] == [1, 2]


@pytest.mark.parametrize(
    ("body", "content_type", "problem"),
    [
        (b"id,region\n1,eu\n2,eu,extra\n", "text/csv", "Expected 2 columns, got 3"),
        (b"PAR1 not really parquet", "application/vnd.apache.parquet", "as parquet"),
        (b"not an arrow stream", "application/vnd.apache.arrow.stream", "as arrow"),
        (b'{"id": 1}\n{"id": \n', "application/x-ndjson", "JSON parse error"),
    ],
)
async def test_malformed_uploads_are_422_and_leave_no_spool_file(
    seeded: Api, body: bytes, content_type: str, problem: str
) -> None:
    before = await seeded.snapshot()
    reply = await seeded.call(
        "POST", f"/tables/{TABLE}/append", content=body, headers={"Content-Type": content_type}
    )
    message = lake_error(reply, 422, "malformed_file")
    assert problem in message
    assert "the request body" in message
    assert str(seeded.spool) not in message  # no server path goes back to the client
    seeded.assert_spool_empty()
    assert await seeded.snapshot() == before
