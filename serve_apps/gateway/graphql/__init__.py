"""GraphQL at ``/api/v1/graphql`` (strawberry), beside REST and over the same backends.

``graphql_router(deps)`` is the route the app includes under the v1 router;
``build_schema()`` and ``root_fields(schema)`` expose the schema and what each of its
root fields demands.
"""

from serve_apps.gateway.graphql.context import GraphQLContext, Needs
from serve_apps.gateway.graphql.endpoint import GRAPHQL_PATH, GraphQLRequest, graphql_router
from serve_apps.gateway.graphql.limits import GraphQLLimits, QueryTooComplexError
from serve_apps.gateway.graphql.schema import RootField, build_schema, root_fields

__all__ = [
    "GRAPHQL_PATH",
    "GraphQLContext",
    "GraphQLLimits",
    "GraphQLRequest",
    "Needs",
    "QueryTooComplexError",
    "RootField",
    "build_schema",
    "graphql_router",
    "root_fields",
]
