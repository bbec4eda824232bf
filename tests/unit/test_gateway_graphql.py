"""``POST /api/v1/graphql`` on the real gateway app: every backend (SQLite platform DB,
in-process Lake, real registry and run records), real keys; no Ray.

Each area's fields answer what the REST routes answer, with the same permissions; the
limits refuse deep, costly and alias-heavy documents before anything runs; errors carry
the Datapunk code and never a stack trace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

from cluster.security.rbac import Role
from serve_apps.gateway.graphql import GraphQLLimits
from serve_apps.gateway.graphql.context import MAX_ROWS
from tests.contracts.forge_store import MODEL, register, run_kwargs
from tests.stream_support import window_topology
from tests.unit.full_gateway import PIPELINE, FullGateway, full_gateway
from tests.unit.gateway_support import error_of

GRAPHQL = "/api/v1/graphql"
TABLE = "sales.orders"
ROWS = pa.table({"id": [1, 2, 3], "region": ["eu", "us", "eu"], "amount": [1.5, 2.5, 3.5]})


class Api:
    """The app, an HTTP client and one key per role."""

    def __init__(self, gw: FullGateway, http: httpx.AsyncClient) -> None:
        self.gw = gw
        self.http = http

    async def post(self, body: dict[str, Any], role: Role | None = Role.ENGINEER) -> httpx.Response:
        headers = {} if role is None else self.gw.headers(role)
        return await self.http.post(GRAPHQL, json=body, headers=headers)

    async def gql(
        self, query: str, role: Role | None = Role.ENGINEER, **variables: Any
    ) -> dict[str, Any]:
        reply = await self.post({"query": query, "variables": variables or None}, role)
        assert reply.status_code in (200, 400), reply.text
        body: dict[str, Any] = reply.json()
        return body

    async def data(self, query: str, role: Role = Role.ENGINEER, **variables: Any) -> Any:
        body = await self.gql(query, role, **variables)
        assert "errors" not in body, body
        return body["data"]

    async def rest(self, path: str, role: Role = Role.ENGINEER) -> Any:
        reply = await self.http.get(f"/api/v1{path}", headers=self.gw.headers(role))
        assert reply.status_code == 200, reply.text
        return reply.json()


def only_error(body: dict[str, Any]) -> dict[str, Any]:
    """The single error of a GraphQL response, checked to carry a code and a request id."""
    (error,) = body["errors"]
    assert set(error["extensions"]) >= {"code", "status", "request_id"}, error
    assert "Traceback" not in error["message"]
    return dict(error)


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async with full_gateway(data_dir) as gw:
        await gw.lake.create_namespace("sales")
        await gw.lake.create_table(TABLE, schema=ROWS.schema)
        await gw.lake.append(TABLE, ROWS)
        await gw.lake.append(TABLE, ROWS.slice(0, 1))
        for _ in range(2):
            await register(gw.registry, params={"lr": 0.1, "metric": "rmse", "mode": "min"})
        await gw.registry.set_alias(MODEL, "production", 1, actor="test")
        await gw.streams.deploy(window_topology("orders"))
        await gw.runs.start("run-1", **run_kwargs(name=MODEL))
        async with gw.client() as http:
            yield Api(gw, http)


# --- authentication -----------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "dp_wrong"}, {"Authorization": "Basic x"}])
async def test_no_or_bad_credentials_are_401_before_any_query_runs(
    api: Api, headers: dict[str, str]
) -> None:
    reply = await api.http.post(GRAPHQL, json={"query": "{ namespaces }"}, headers=headers)
    assert reply.status_code == 401
    assert error_of(reply)["code"] == "unauthenticated"


async def test_introspection_is_for_authenticated_callers_only(api: Api) -> None:
    introspect = {"query": "{ __schema { queryType { name } types { name } } }"}
    assert (await api.http.post(GRAPHQL, json=introspect)).status_code == 401
    data = await api.data(introspect["query"], Role.ANALYST)
    assert data["__schema"]["queryType"]["name"] == "Query"
    assert {"Table", "Model", "Snapshot"} <= {t["name"] for t in data["__schema"]["types"]}


async def test_there_is_no_get_and_no_graphiql(api: Api) -> None:
    reply = await api.http.get(
        GRAPHQL, params={"query": "{ namespaces }"}, headers=api.gw.headers(Role.ADMIN)
    )
    assert reply.status_code == 405


# --- reads answer what REST answers ---------------------------------------------------------


async def test_lake_fields_match_the_rest_routes(api: Api) -> None:
    data = await api.data(
        """query($t: String!) {
            namespaces
            tables(namespace: "sales")
            table(name: $t) { name columns { name type required } currentSnapshotId
                              snapshots(limit: 1) { snapshotId operation } }
            snapshots(name: $t) { snapshotId parentId operation summary }
        }""",
        Role.ANALYST,
        t=TABLE,
    )
    assert data["namespaces"] == await api.rest("/lake/namespaces", Role.ANALYST)
    assert data["tables"] == await api.rest("/lake/tables?namespace=sales", Role.ANALYST)
    described = await api.rest(f"/lake/tables/{TABLE}", Role.ANALYST)
    assert data["table"]["columns"] == [
        {"name": c["name"], "type": c["type"], "required": c["required"]}
        for c in described["schema"]
    ]
    assert data["table"]["currentSnapshotId"] == str(described["current_snapshot_id"])
    history = await api.rest(f"/lake/tables/{TABLE}/history", Role.ANALYST)
    assert [s["snapshotId"] for s in data["snapshots"]] == [str(s["snapshot_id"]) for s in history]
    assert data["table"]["snapshots"] == [
        {"snapshotId": str(history[-1]["snapshot_id"]), "operation": history[-1]["operation"]}
    ]
    assert data["snapshots"][1]["parentId"] == str(history[0]["snapshot_id"])


async def test_preview_is_a_bounded_pushed_down_scan(api: Api) -> None:
    query = """query($f: String, $s: ID, $n: Int!) {
        preview(name: "sales.orders", columns: ["id", "amount"], filter: $f,
                snapshotId: $s, limit: $n) { columns rowCount rows } }"""
    eu = (await api.data(query, Role.ANALYST, f="region = 'eu'", n=10))["preview"]
    assert eu["columns"] == ["id", "amount"]
    assert sorted(r["id"] for r in eu["rows"]) == [1, 1, 3]
    first = (await api.rest(f"/lake/tables/{TABLE}/history"))[0]["snapshot_id"]
    then = (await api.data(query, Role.ANALYST, s=str(first), n=10))["preview"]
    assert then["rowCount"] == 3
    capped = (await api.data(query, Role.ANALYST, n=2))["preview"]
    assert capped["rowCount"] == 2
    over = only_error(await api.gql(query, Role.ANALYST, n=MAX_ROWS + 1))
    assert over["extensions"]["code"] == "invalid_input" and over["extensions"]["status"] == 422
    assert f"1 to {MAX_ROWS}" in over["message"]


async def test_preview_masks_encrypted_columns_as_rest_does(api: Api) -> None:
    people = pa.table({"id": [1], "email": ["ana@example.com"]})
    await api.gw.lake.create_table(
        "sales.people", schema=people.schema, properties={"datapunk.sensitive": "email"}
    )
    await api.gw.lake.append("sales.people", people)
    query = '{ preview(name: "sales.people") { rows } }'
    clear = (await api.data(query, Role.ADMIN))["preview"]["rows"]
    masked = (await api.data(query, Role.ANALYST))["preview"]["rows"]
    assert clear == [{"id": 1, "email": "ana@example.com"}]
    assert masked == [{"id": 1, "email": "****"}]
    rest = await api.http.post(
        "/api/v1/lake/tables/sales.people/query", json={}, headers=api.gw.headers(Role.ANALYST)
    )
    assert rest.json() == masked


async def test_model_fields_match_the_rest_routes(api: Api) -> None:
    data = await api.data(
        """{ models { name latestVersion aliases }
             model(name: "churn") { name aliases versions { version metrics lineage aliases }
                                    canaries { version } history }
             modelVersion(name: "churn", ref: "production") { version sha256 signature }
             canaries { name } }""",
        Role.ANALYST,
    )
    listed = await api.rest("/models", Role.ANALYST)
    assert data["models"] == [
        {"name": m["name"], "latestVersion": m["latest_version"], "aliases": m["aliases"]}
        for m in listed
    ]
    shown = await api.rest(f"/models/{MODEL}", Role.ANALYST)
    assert [v["version"] for v in data["model"]["versions"]] == [
        v["version"] for v in shown["versions"]
    ]
    assert data["model"]["versions"][0]["aliases"] == ["production"]
    history = await api.rest(f"/models/{MODEL}/history", Role.ANALYST)
    assert data["model"]["history"] == history["events"]
    version = await api.rest(f"/models/{MODEL}/versions/production", Role.ANALYST)
    assert data["modelVersion"] == {
        "version": 1,
        "sha256": version["sha256"],
        "signature": version["signature"],
    }
    assert data["canaries"] == [] and data["model"]["canaries"] == []
    assert "artifact_path" not in str(data) and "artifactPath" not in str(data)


async def test_predictions_read_the_models_prediction_log(api: Api) -> None:
    namespace = api.gw.settings.cortex.log_namespace
    log = pa.table({"request_id": ["a", "b"], "version": [1, 2], "prediction": [0.1, 0.9]})
    await api.gw.lake.create_namespace(namespace, exist_ok=True)
    await api.gw.lake.create_table(f"{namespace}.{MODEL}_predictions", schema=log.schema)
    await api.gw.lake.append(f"{namespace}.{MODEL}_predictions", log)
    query = """query($f: String) { predictions(name: "churn", filter: $f, limit: 5) {
        rowCount rows } }"""
    every = (await api.data(query, Role.ANALYST))["predictions"]
    assert sorted(r["request_id"] for r in every["rows"]) == ["a", "b"]
    latest = (await api.data(query, Role.ANALYST, f="version = 2"))["predictions"]
    assert latest["rows"] == [{"request_id": "b", "version": 2, "prediction": 0.9}]
    unknown = only_error(await api.gql('{ predictions(name: "ghost") { rowCount } }'))
    assert unknown["extensions"]["code"] == "not_found"


async def test_operations_fields_match_the_rest_routes(api: Api) -> None:
    data = await api.data(
        """{ pipelines pipelineRuns(name: "orders_daily") streams stream(name: "orders")
             forgeRuns forgeRun(runId: "run-1") }"""
    )
    assert data["pipelines"] == [PIPELINE] == await api.rest("/pipelines")
    assert data["pipelineRuns"] == await api.rest(f"/pipelines/{PIPELINE}/records")
    assert data["streams"] == await api.rest("/streams")
    assert data["stream"] == await api.rest("/streams/orders")
    assert data["forgeRuns"] == await api.rest("/forge/runs")
    assert data["forgeRun"] == await api.rest("/forge/runs/run-1")
    missing = only_error(await api.gql('{ forgeRun(runId: "nope") }'))
    assert missing["extensions"]["code"] == "not_found"
    assert missing["extensions"]["status"] == 404 and missing["path"] == ["forgeRun"]


# --- permissions ------------------------------------------------------------------------------


async def test_a_role_without_the_permission_is_refused_per_field(api: Api) -> None:
    for query, needs in [
        ("{ namespaces }", "lake.table:read"),
        ("{ models { name } }", "model:read"),
        ("{ pipelines }", "platform:read"),
        ("{ streams }", "stream:read"),
    ]:
        body = await api.gql(query, Role.SERVICE)
        error = only_error(body)
        assert body["data"] is None, query
        assert error["extensions"]["code"] == "permission_denied", query
        assert error["extensions"]["status"] == 403 and needs in error["message"], query
    both = await api.gql('{ namespaces stream(name: "orders") }', Role.ANALYST)
    assert "errors" not in both and both["data"]["stream"]["state"] == "running"


async def test_stop_stream_needs_stream_deploy(api: Api) -> None:
    mutation = 'mutation { stopStream(name: "orders") }'
    refused = only_error(await api.gql(mutation, Role.ANALYST))
    assert refused["extensions"]["code"] == "permission_denied"
    assert "stream:deploy" in refused["message"]
    assert api.gw.streams.states["orders"] == "running"
    stopped = await api.data(mutation, Role.ENGINEER)
    assert stopped["stopStream"] == {"name": "orders", "state": "stopped"}
    assert api.gw.streams.states["orders"] == "stopped"


MOVE = """mutation($move: AliasMoveInput!) {
    moveAlias(name: "churn", alias: "production", move: $move) }"""


async def test_move_alias_goes_through_the_promotion_gate(api: Api) -> None:
    holdout = {"table": TABLE}
    api.gw.scores.by_version.update({1: 0.2, 2: 0.9})  # rmse: version 2 is worse
    refused = only_error(await api.gql(MOVE, move={"version": 2, "holdout": holdout}))
    assert refused["extensions"]["code"] == "promotion_refused"
    assert refused["extensions"]["status"] == 409
    assert refused["extensions"]["decision"]["promoted"] is False
    assert (await api.gw.registry.model(MODEL))["aliases"] == {"production": 1}
    neither = only_error(await api.gql(MOVE, move={"version": 2}))
    assert neither["extensions"]["code"] == "invalid_input" and "force" in neither["message"]
    api.gw.scores.by_version[2] = 0.1
    moved = await api.data(MOVE, move={"version": 2, "holdout": holdout})
    assert moved["moveAlias"]["promoted"] is True
    assert (await api.gw.registry.model(MODEL))["aliases"] == {"production": 2}
    forced = await api.data(MOVE, move={"version": 1, "force": True, "reason": "rollback"})
    assert forced["moveAlias"]["forced"] is True
    analyst = only_error(await api.gql(MOVE, Role.ANALYST, move={"version": 2, "force": True}))
    assert analyst["extensions"]["code"] == "permission_denied"
    bad = only_error(await api.gql(MOVE, move={"version": 0, "force": True}))
    assert bad["extensions"]["code"] == "invalid_input" and "move.version" in bad["message"]


# --- limits -----------------------------------------------------------------------------------


async def test_depth_over_the_limit_is_refused_before_validation(api: Api) -> None:
    deep = '{ table(name: "sales.orders") ' + "{ a " * 9 + "}" * 10
    reply = await api.post({"query": deep})
    assert reply.status_code == 400
    error = only_error(reply.json())
    assert error["extensions"]["code"] == "query_too_complex"
    assert "depth is 9, over the limit of 8" in error["message"]


async def test_the_cost_estimate_multiplies_fields_by_requested_list_sizes(
    data_dir: Path,
) -> None:
    async with full_gateway(data_dir, graphql_limits=GraphQLLimits(max_cost=100)) as gw:
        api = Api(gw, gw.client())
        query = 'query($n: Int!) { snapshots(name: "x", limit: $n) { snapshotId operation } }'
        # 1 (the list field) + n items x 2 fields
        over = await api.post({"query": query, "variables": {"n": 50}})
        assert over.status_code == 400
        error = only_error(over.json())
        assert error["extensions"]["code"] == "query_too_complex"
        assert "estimated cost is 101, over the limit of 100" in error["message"]
        under = await api.gql(query, n=49)
        assert only_error(under)["extensions"]["status"] == 404  # it ran: there is no table x
        defaulted = await api.post({"query": '{ snapshots(name: "x") { snapshotId operation } }'})
        assert defaulted.status_code == 400, "the default limit (50) counts as asked for"


async def test_more_aliases_than_allowed_are_refused(api: Api) -> None:
    aliased = " ".join(f"n{i}: namespaces" for i in range(16))
    reply = await api.post({"query": "{ " + aliased + " }"})
    assert reply.status_code == 400
    assert "number of aliases is 16, over the limit of 15" in only_error(reply.json())["message"]
    fifteen = " ".join(f"n{i}: namespaces" for i in range(15))
    assert "errors" not in await api.gql("{ " + fifteen + " }")


async def test_documents_over_the_token_limit_are_refused_while_parsing(api: Api) -> None:
    reply = await api.post({"query": "{ " + "a " * 2500 + "}"})
    assert reply.status_code == 400
    error = only_error(reply.json())
    assert error["extensions"]["code"] == "invalid_query" and "tokens" in error["message"]


async def test_invalid_documents_are_400_with_graphqls_message(api: Api) -> None:
    reply = await api.post({"query": "{ nosuchfield }"})
    assert reply.status_code == 400
    error = only_error(reply.json())
    assert error["extensions"]["code"] == "invalid_query" and "nosuchfield" in error["message"]
    syntax = await api.post({"query": "{ namespaces"})
    assert syntax.status_code == 400
    assert only_error(syntax.json())["extensions"]["code"] == "invalid_query"
    extra = await api.post({"query": "{ namespaces }", "rootValue": {}})
    assert extra.status_code == 422 and error_of(extra)["code"] == "invalid_input"


async def test_an_unexpected_failure_is_masked_and_logged(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> list[str]:
        raise RuntimeError("password=hunter2 at /srv/secret/path")

    monkeypatch.setattr(api.gw.lake, "list_namespaces", broken)
    with caplog.at_level("ERROR", logger="serve_apps.gateway.graphql.errors"):
        body = await api.gql("{ namespaces tables }")
    error = only_error(body)
    assert error["extensions"]["code"] == "internal_error"
    assert error["message"] == "internal error; quote the request id"
    assert "hunter2" not in str(body) and "/srv/secret" not in str(body)
    assert body["data"] is None  # a non-null root field failed: the whole data is null
    assert any("hunter2" in (r.exc_text or "") for r in caplog.records)
