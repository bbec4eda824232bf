"""``/api/v1/audit``: the audit log and its verification, for holders of ``audit:read``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query

from cluster.security.audit_store import AuditStore
from serve_apps.gateway.auth import permission

MAX_PAGE = 1_000


def _utc(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def audit_router(store: AuditStore) -> APIRouter:
    router = APIRouter(
        prefix="/audit", tags=["audit"], dependencies=[Depends(permission("audit:read"))]
    )

    @router.get("", summary="Audit entries, newest first; filter by time, actor and result.")
    async def list_entries(
        since: Annotated[
            datetime | None, Query(description="ISO time (UTC without offset).")
        ] = None,
        until: Annotated[datetime | None, Query(description="ISO time, exclusive.")] = None,
        who: Annotated[
            str | None, Query(max_length=100, description="Key/user id or name.")
        ] = None,
        result: Annotated[Literal["ok", "denied", "error"] | None, Query()] = None,
        after_seq: Annotated[int | None, Query(ge=0, description="Only entries after.")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        order: Annotated[Literal["newest", "oldest"], Query()] = "newest",
    ) -> dict[str, Any]:
        records = await store.list(
            since=_utc(since),
            until=_utc(until),
            who=who,
            outcome=result,
            after_seq=after_seq,
            limit=limit,
            newest_first=order == "newest",
        )
        head_seq, head_hash = await store.head()
        return {
            "head_seq": head_seq,
            "head_hash": head_hash,
            "entries": [r.as_dict() for r in records],
        }

    @router.get("/verify", summary="Walk the hash chain; the first broken entry, if any.")
    async def verify() -> dict[str, Any]:
        return (await store.verify()).as_dict()

    return router
