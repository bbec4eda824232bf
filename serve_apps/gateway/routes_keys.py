"""``/api/v1/keys``: API-key management over REST, for holders of ``keys:manage``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field

from cluster.security.keys import ApiKeyRecord, KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import ALLOWED_ROLES
from serve_apps.gateway.auth import permission

DEFAULT_ROTATION_OVERLAP = timedelta(hours=24)


class RotateKey(BaseModel):
    overlap_s: float | None = Field(
        None,
        ge=0,
        le=90 * 86_400,
        description="Seconds the old key keeps working beside the new one "
        "(default: the gateway's auth.rotation_overlap_s).",
    )


class CreateKey(BaseModel):
    role: str = Field(description=f"One of {ALLOWED_ROLES}.")
    name: str | None = Field(None, max_length=100, description="What the key is for.")
    expires_in_days: float | None = Field(None, gt=0, le=3650, description="Lifetime.")


def _public(record: ApiKeyRecord) -> dict[str, Any]:
    body = asdict(record)
    body["role"] = str(record.role)
    return body


def keys_router(
    store: KeyStore,
    forget: Callable[[str], object],
    rotation_overlap: timedelta = DEFAULT_ROTATION_OVERLAP,
) -> APIRouter:
    """Routes over ``store``; ``forget(key_id)`` drops a revoked or rotated key from the
    auth cache; ``rotation_overlap`` is the default overlap of a rotation."""
    router = APIRouter(
        prefix="/keys", tags=["keys"], dependencies=[Depends(permission("keys:manage"))]
    )

    @router.get("", summary="API keys (never their tokens or digests).")
    async def list_keys(include_revoked: bool = False) -> list[dict[str, Any]]:
        return [_public(r) for r in await store.list(include_revoked=include_revoked)]

    @router.post("", status_code=201, summary="Mint a key; its token is returned only here.")
    async def create_key(body: CreateKey, request: Request) -> dict[str, Any]:
        caller: Principal = request.state.principal
        expires = None if body.expires_in_days is None else timedelta(days=body.expires_in_days)
        token, record = await store.create(
            role=body.role, name=body.name, expires_in=expires, created_by=caller.key_id
        )
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
