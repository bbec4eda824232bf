"""``/api/v1/keys/{key_id}/grants``: a key's scoped grants, for holders of ``keys:manage``.

``PUT`` replaces the whole set in one transaction; ``DELETE`` removes one grant
(``permission`` and ``scope`` given) or all of them. A key left without grants has its
role's permissions everywhere again: the answer's ``restricted`` says which it is. A
change takes effect at once on this replica and within the auth cache's TTL elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import Field

from cluster.errors import InvalidInputError
from cluster.security.grant_store import GrantRecord, GrantStore
from cluster.security.grants import SCOPE_FORMS, make_grant
from serve_apps.gateway.access import principal_of
from serve_apps.gateway.auth import permission
from serve_apps.gateway.bodies import StrictBody

MAX_GRANTS = 500


class GrantIn(StrictBody):
    permission: str = Field(min_length=1, max_length=64, examples=["lake.table:read"])
    scope: str = Field(min_length=1, max_length=300, description=SCOPE_FORMS)


class GrantSet(StrictBody):
    grants: list[GrantIn] = Field(
        max_length=MAX_GRANTS, description="The key's whole set; empty: unrestricted."
    )


def _body(key_id: str, records: list[GrantRecord]) -> dict[str, Any]:
    return {
        "key_id": key_id,
        "restricted": bool(records),
        "grants": [r.as_dict() for r in records],
    }


def grants_router(store: GrantStore, forget: Callable[[str], object]) -> APIRouter:
    """Routes over ``store``; ``forget(key_id)`` drops the key's cached principal."""
    router = APIRouter(
        prefix="/keys/{key_id}/grants",
        tags=["keys"],
        dependencies=[Depends(permission("keys:manage"))],
    )

    @router.get("", summary="A key's grants (none: its role applies everywhere).")
    async def list_grants(key_id: str) -> dict[str, Any]:
        return _body(key_id, await store.list(key_id))

    @router.put("", summary="Replace a key's grants with this set.")
    async def put_grants(key_id: str, body: GrantSet, request: Request) -> dict[str, Any]:
        wanted = [make_grant(g.permission, g.scope) for g in body.grants]
        records = await store.replace(key_id, wanted, created_by=principal_of(request).key_id)
        forget(key_id)
        return _body(key_id, records)

    @router.delete("", summary="Remove one grant (permission and scope), or all of them.")
    async def delete_grants(
        key_id: str,
        permission: Annotated[str | None, Query(max_length=64)] = None,
        scope: Annotated[str | None, Query(max_length=300)] = None,
    ) -> dict[str, Any]:
        if (permission is None) != (scope is None):
            raise InvalidInputError(
                field="permission/scope",
                value=permission or scope,
                allowed="both (remove that grant) or neither (remove every grant)",
            )
        if permission is not None and scope is not None:
            await store.remove(key_id, permission, scope)
            records = await store.list(key_id)
        else:
            records = await store.replace(key_id, [])
        forget(key_id)
        return _body(key_id, records)

    return router
