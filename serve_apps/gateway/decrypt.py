"""Who sees sensitive Lake columns in the clear, and the route that declares them.

``lake.table:decrypt`` on a table (by role, narrowed by grants like every permission)
decides whether its encrypted columns come back decrypted or masked (``"****"`` for
text, null otherwise). A SQL query is decrypted only when the caller may decrypt every
table it reads; otherwise every encrypted column in it is masked.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from actors.lake.service import LakeService
from cluster.security import grants
from cluster.security.rbac import Permission
from serve_apps.gateway import access
from serve_apps.gateway.auth import permission
from serve_apps.gateway.bodies import StrictBody

DECRYPT = Permission.LAKE_TABLE_DECRYPT


def may_decrypt(request: Request, tables: Iterable[str]) -> bool:
    """Whether the caller holds ``lake.table:decrypt`` on every one of ``tables``."""
    principal = access.principal_of(request)
    return all(grants.allowed(principal, DECRYPT, grants.table(name)) for name in tables)


def may_decrypt_sql(request: Request, query: str) -> bool:
    """``may_decrypt`` over the tables ``query`` reads (parsed only for a narrowed key)."""
    principal = access.principal_of(request)
    if not grants.is_restricted(principal):
        return grants.allowed(principal, DECRYPT)
    from actors.lake.sql import referenced_tables  # DuckDB: imported when first needed

    return may_decrypt(request, referenced_tables(query))


class Sensitive(StrictBody):
    columns: list[str] = Field(
        min_length=1, description="Columns to store encrypted from now on.", examples=[["email"]]
    )


def sensitive_router(lake: LakeService) -> APIRouter:
    """``POST /lake/tables/{name}/sensitive``: declare columns sensitive (encrypted)."""
    router = APIRouter(prefix="/lake", tags=["lake"])

    @router.post(
        "/tables/{name}/sensitive",
        dependencies=[Depends(permission("lake.table:write"))],
        summary="Store columns encrypted from now on; data they hold is rewritten encrypted.",
    )
    async def protect(name: str, body: Sensitive, request: Request) -> dict[str, Any]:
        access.check_table(request, "lake.table:write", name)
        return await lake.protect_columns(name, body.columns)

    return router
