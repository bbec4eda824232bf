"""``/api/v1/keys``: API-key management over REST, for holders of ``keys:manage``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any, ClassVar

from fastapi import APIRouter, Depends, Request
from pydantic import Field

from cluster.errors import DatapunkError
from cluster.security.grant_store import GrantStore
from cluster.security.grants import Grant
from cluster.security.keys import ApiKeyRecord, KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import ALLOWED_ROLES, has_permission, parse_role
from serve_apps.gateway.auth import permission
from serve_apps.gateway.bodies import StrictBody

DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


class RotateKey(StrictBody):
    overlap_s: float | None = Field(
        None,
        ge=0,
        le=90 * 86_400,
        description="Seconds the old key keeps working beside the new one "
        "(default: the gateway's auth.rotation_overlap_s).",
    )


class CreateKey(StrictBody):
    role: str = Field(description=f"One of {ALLOWED_ROLES}.")
    name: str | None = Field(None, max_length=100, description="What the key is for.")
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="Lifetime.")


def _public(record: ApiKeyRecord) -> dict[str, Any]:
    body = asdict(record)
    body["role"] = str(record.role)
    return body


def _inherited_grants(
    caller: Principal, role: str, grants: GrantStore | None
) -> list[Grant] | None:
    """What a key minted by ``caller`` may hold: None (unrestricted) for an unrestricted
    caller, else the caller's grants that the new role can use. Minting never widens a
    restricted caller's reach (OWASP API3:2023): when none of its grants fit the new role,
    or grants cannot be stored here, the key is refused."""
    if not caller.grants:
        return None
    new_role = parse_role(role)
    fitting = [g for g in caller.grants if has_permission(new_role, g.permission)]
    if not fitting or grants is None:
        raise MintBeyondGrantsError(role=new_role.value)
    return fitting


class MintBeyondGrantsError(DatapunkError):
    """A key restricted by grants asked for a key its grants cannot cover."""

    code: ClassVar[str] = "permission_denied"
    http_status: ClassVar[int] = 403

    def __init__(self, *, role: str) -> None:
        super().__init__(
            f"a key restricted by grants mints keys only inside its own grants, and none of "
            f"them fits role {role!r}; ask for a role one of your grants covers, or have an "
            "unrestricted key manager mint it",
            role=role,
        )


def keys_router(
    store: KeyStore,
    forget: Callable[[str], object],
    rotation_overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
    grants: GrantStore | None = None,
) -> APIRouter:
    """Routes over ``store``; ``forget(key_id)`` drops a revoked or rotated key from the
    auth cache; ``rotation_overlap`` is the default overlap of a rotation; ``grants``
    narrows keys minted by a restricted caller to the caller's grants."""
    router = APIRouter(
        prefix="/keys", tags=["keys"], dependencies=[Depends(permission("keys:manage"))]
    )

    @router.get("", summary="API keys (never their tokens or digests).")
    async def list_keys(include_revoked: bool = False) -> list[dict[str, Any]]:
        return [_public(r) for r in await store.list(include_revoked=include_revoked)]

    @router.post("", status_code=201, summary="Mint a key; its token is returned only here.")
    async def create_key(body: CreateKey, request: Request) -> dict[str, Any]:
        caller: Principal = request.state.principal
        inherited = _inherited_grants(caller, body.role, grants)
        expires = None if body.expires_in_days is None else timedelta(days=body.expires_in_days)
        token, record = await store.create(
            role=body.role, name=body.name, expires_in=expires, created_by=caller.key_id
        )
        if inherited is not None and grants is not None:
            # The token has not left this process yet: nobody can use the key before it
            # is narrowed, and a key that could not be narrowed is revoked, not returned.
            try:
                await grants.replace(record.id, inherited, created_by=caller.key_id)
            except BaseException:
                await store.revoke(record.id)
                raise
        return {**_public(record), "key": token}

    @router.post(
        "/{key_id}/rotate",
        status_code=201,
        summary="Issue a successor; the old key works until the overlap ends, then stops.",
    )
    async def rotate_key(
        key_id: str, request: Request, body: RotateKey | None = None
    ) -> dict[str, Any]:
        caller: Principal = request.state.principal
        overlap_s = None if body is None else body.overlap_s
        overlap = rotation_overlap if overlap_s is None else timedelta(seconds=overlap_s)
        record, token = await store.rotate(key_id, overlap=overlap, actor=caller.key_id)
        forget(key_id)  # this replica re-reads the old key's shortened expiry at once
        return {**_public(record), "key": token, "overlap_s": overlap.total_seconds()}

    @router.delete("/{key_id}", summary="Revoke a key; it stops working at once here.")
    async def revoke_key(key_id: str) -> dict[str, Any]:
        record = await store.revoke(key_id)
        forget(key_id)
        return _public(record)

    return router
