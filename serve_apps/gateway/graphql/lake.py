"""Lake queries: namespaces, tables, a table's description and snapshots, a bounded preview.

Each calls the ``LakeService`` the REST routes call and demands ``lake.table:read``, on
the table it names. A preview is a pushed-down scan capped at ``MAX_ROWS`` rows.
"""

from __future__ import annotations

import strawberry

from actors.lake.service import LakeService
from cluster.security import grants
from serve_apps.gateway.access import Target, authorize
from serve_apps.gateway.graphql.context import (
    MAX_LIST,
    MAX_ROWS,
    GraphQLInfo,
    Needs,
    backend,
    bounded,
)
from serve_apps.gateway.graphql.types import Rows, Snapshot, Table, snapshot_ref

READ = "lake.table:read"
DECRYPT = "lake.table:decrypt"


def may_decrypt(info: GraphQLInfo, table: str) -> bool:
    """Whether the caller sees ``table``'s encrypted columns in the clear (else masked),
    by the rule REST's reads follow (``serve_apps/gateway/decrypt.py``)."""
    return grants.allowed(info.context.principal, DECRYPT, grants.table(table))


def lake_of(info: GraphQLInfo) -> LakeService:
    return backend(info.context.deps.lake, "lake")


@strawberry.type
class LakeQuery:
    @strawberry.field(description="Lake namespaces.", extensions=[Needs(READ)])
    async def namespaces(self, info: GraphQLInfo) -> list[str]:
        principal = info.context.principal
        names = await lake_of(info).list_namespaces()
        return [n for n in names if grants.allowed_within(principal, READ, n)]

    @strawberry.field(description="Tables, of one namespace when given.", extensions=[Needs(READ)])
    async def tables(self, info: GraphQLInfo, namespace: str | None = None) -> list[str]:
        principal = info.context.principal
        if namespace is not None and not grants.allowed_within(principal, READ, namespace):
            authorize(principal, READ, Target("namespace", namespace))  # 404 or 403
        names = await lake_of(info).list_tables(namespace)
        return grants.visible(principal, READ, names, grants.table)

    @strawberry.field(
        description="A table: schema, partitioning, properties, snapshots.",
        extensions=[Needs(READ, "table")],
    )
    async def table(self, info: GraphQLInfo, name: str) -> Table:
        return Table.of(await lake_of(info).describe(name))

    @strawberry.field(
        description="A table's newest `limit` snapshots, oldest first.",
        extensions=[Needs(READ, "table")],
    )
    async def snapshots(self, info: GraphQLInfo, name: str, limit: int = 50) -> list[Snapshot]:
        count = bounded(limit, MAX_LIST)
        history = await lake_of(info).history(name)
        return [Snapshot.of(s) for s in history[-count:]]

    @strawberry.field(
        description=f"Up to `limit` rows (at most {MAX_ROWS}) of a table, columns and filter "
        "pushed down, at a snapshot or time when given.",
        extensions=[Needs(READ, "table")],
    )
    async def preview(
        self,
        info: GraphQLInfo,
        name: str,
        columns: list[str] | None = None,
        filter: str | None = None,
        snapshot_id: strawberry.ID | None = None,
        as_of: str | None = None,
        limit: int = 100,
    ) -> Rows:
        table = await lake_of(info).scan(
            name,
            columns=columns,
            filter=filter,
            snapshot_id=snapshot_ref(snapshot_id),
            as_of=as_of,
            limit=bounded(limit, MAX_ROWS),
            decrypt=may_decrypt(info, name),
        )
        return Rows.of(table)
