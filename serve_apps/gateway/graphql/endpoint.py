"""``POST /api/v1/graphql``: the GraphQL endpoint as one route of the v1 router.

A plain FastAPI route rather than strawberry's ``GraphQLRouter``: it sits under the v1
router's API-key dependency like every REST route (so no key is a 401 before any query
is parsed, and introspection is for authenticated callers only), has no GET (no queries
in URLs and logs, no GraphiQL) and no subscription socket. A request is parsed and
measured against the limits before it runs; one refused there, or one that fails
GraphQL validation, is a 400 with ``data: null``; one that ran is a 200 with its data
and the errors of the fields that failed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from graphql import GraphQLError, parse
from pydantic import BaseModel, ConfigDict, Field

from cluster.security.principal import Principal
from serve_apps.gateway.graphql.context import GraphQLContext
from serve_apps.gateway.graphql.errors import GraphQLResponse, error_entry, refusal
from serve_apps.gateway.graphql.limits import (
    MAX_QUERY_CHARS,
    GraphQLLimits,
    QueryTooComplexError,
    measure,
)
from serve_apps.gateway.graphql.schema import GatewaySchema, build_schema

if TYPE_CHECKING:
    from serve_apps.gateway.asgi import GatewayDeps

GRAPHQL_PATH = "/graphql"


class GraphQLRequest(BaseModel):
    """A GraphQL request as clients send it (``extensions`` is accepted and ignored)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    query: str = Field(min_length=1, max_length=MAX_QUERY_CHARS, description="The document.")
    variables: dict[str, Any] | None = Field(None, description="Values of its variables.")
    operation_name: str | None = Field(
        None, alias="operationName", max_length=200, description="Which operation to run."
    )
    extensions: dict[str, Any] | None = Field(None, description="Ignored.")


def _answer(body: dict[str, Any], status: int) -> Response:
    return JSONResponse(body, status_code=status)


async def run_graphql(
    schema: GatewaySchema,
    body: GraphQLRequest,
    context: GraphQLContext,
    limits: GraphQLLimits,
) -> tuple[dict[str, Any], int]:
    """Parse, measure, then execute ``body``; the response body and its HTTP status."""
    request_id = context.request_id
    try:
        document = parse(body.query, max_tokens=limits.max_tokens)
        measure(schema._schema, document, body.variables, limits, body.operation_name)
    except GraphQLError as exc:
        return {"data": None, "errors": [error_entry(exc, request_id)]}, 400
    except QueryTooComplexError as exc:
        return refusal(exc, request_id), exc.http_status
    result = await schema.execute(
        body.query,
        variable_values=body.variables,
        context_value=context,
        operation_name=body.operation_name,
    )
    answer: dict[str, Any] = {"data": result.data}
    if result.errors:
        answer["errors"] = [error_entry(e, request_id) for e in result.errors]
    # Nothing ran (validation, variables): a client error, as REST's 4xx are.
    ran = result.data is not None or any(e.path for e in result.errors or ())
    return answer, 200 if ran else 400


def graphql_router(deps: GatewayDeps, limits: GraphQLLimits | None = None) -> APIRouter:
    """The endpoint; include under the authenticated v1 router."""
    schema = build_schema()
    chosen = limits or GraphQLLimits()
    router = APIRouter(tags=["graphql"])

    @router.post(
        GRAPHQL_PATH,
        summary="GraphQL over tables, pipelines, runs, streams, models and predictions.",
        description=(
            "Queries and mutations over the same backends as the REST routes; each field "
            "demands the permission its REST twin does (a refusal is an error whose "
            "`extensions.code` is `permission_denied`, `extensions.status` 403). Limits: "
            f"depth {chosen.max_depth}, {chosen.max_aliases} aliases, estimated cost "
            f"{chosen.max_cost} (fields times the list sizes they ask for), "
            f"{chosen.max_tokens} tokens. Introspection is open to authenticated callers."
        ),
        response_model=None,
        responses={
            200: {"model": GraphQLResponse, "description": "It ran: data, and field errors."},
            400: {
                "model": GraphQLResponse,
                "description": "Not run: unparseable, invalid, or over a limit.",
            },
        },
    )
    async def graphql(body: GraphQLRequest, request: Request) -> Response:
        principal: Principal = request.state.principal
        context = GraphQLContext(principal, deps, getattr(request.state, "request_id", None))
        answer, status = await run_graphql(schema, body, context, chosen)
        return _answer(answer, status)

    return router
