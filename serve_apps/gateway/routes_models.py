"""``/api/v1/models``: the model registry over REST, as ``datapunk models`` shows it.

Reads need ``model:read``; moving or removing an alias needs ``model:promote``. A
``PUT`` of an alias with a ``holdout`` goes through the promotion gate: when the
candidate scores worse than the alias's holder, the answer is 409 with the error body
and the ``decision`` beside it, and the alias stays where it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from actors.forge.promotion import Holdout, HoldoutEvaluator, move_alias
from actors.forge.registry import ModelRegistry
from cluster.errors import InvalidInputError, PlatformStateError
from cluster.security.principal import Principal
from serve_apps.gateway.auth import permission

__all__ = ["AliasMove", "ModelsBackend", "PromotionRefusedError", "models_router"]

READ = Depends(permission("model:read"))
PROMOTE = Depends(permission("model:promote"))


@dataclass(frozen=True)
class ModelsBackend:
    """What the routes use: the registry, and what scores holdouts (None: gated moves
    answer 409 saying this server cannot score)."""

    registry: ModelRegistry
    evaluator: HoldoutEvaluator | None = None


class PromotionRefusedError(PlatformStateError):
    """The gate kept the alias where it was: the candidate scored worse."""

    code: ClassVar[str] = "promotion_refused"

    def __init__(self, *, decision: dict[str, Any]) -> None:
        super().__init__(
            f"version {decision['candidate_version']} of {decision['name']!r} was not promoted "
            f"to {decision['alias']!r}: {decision['why']} on {decision['metric']}; the alias "
            f"stays at version {decision['incumbent_version']} (force moves it regardless)",
            decision=decision,
        )


class AliasMove(BaseModel):
    """Where to point an alias, and on what evidence."""

    version: int = Field(ge=1, description="The version the alias should point at.")
    reason: str | None = Field(None, max_length=2000, description="Kept in the history.")
    holdout: Holdout | None = Field(
        None, description="Gate the move: score both versions on this Lake data."
    )
    metric: str | None = Field(
        None, max_length=200, description="Metric to judge by; default: the version's own."
    )
    mode: Literal["min", "max"] | None = Field(None, description="Which way is better.")
    force: bool = Field(False, description="Move without the gate (no holdout).")


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _refused(exc: PromotionRefusedError, request: Request) -> Response:
    body = {
        **exc.to_dict(getattr(request.state, "request_id", None)),
        "decision": exc.fields["decision"],
    }
    return Response(json.dumps(body), status_code=exc.http_status, media_type="application/json")


def models_router(backend: ModelsBackend) -> APIRouter:
    """The registry routes; include under the authenticated v1 router."""
    registry = backend.registry
    router = APIRouter(prefix="/models", tags=["models"])

    @router.get("", dependencies=[READ], summary="Models with latest version and aliases.")
    async def list_models() -> list[dict[str, Any]]:
        return await registry.models()

    @router.get("/{name}", dependencies=[READ], summary="A model with all its versions.")
    async def show_model(name: str) -> dict[str, Any]:
        return await registry.model(name)

    @router.get(
        "/{name}/versions/{ref}",
        dependencies=[READ],
        summary="One version by number or alias: artifact, signature, metrics, lineage.",
    )
    async def show_version(name: str, ref: str) -> dict[str, Any]:
        return await registry.version(name, ref)

    @router.get(
        "/{name}/history",
        dependencies=[READ],
        summary="Alias moves, oldest first; with alias and at, where it pointed then.",
    )
    async def history(
        name: str,
        alias: Annotated[str | None, Query(description="Only this alias.")] = None,
        at: Annotated[
            datetime | None, Query(description="ISO time (UTC without an offset).")
        ] = None,
    ) -> dict[str, Any]:
        if at is not None and alias is None:
            raise InvalidInputError(field="at", value=str(at), allowed="with alias=NAME")
        body: dict[str, Any] = {
            "name": name,
            "alias": alias,
            "events": await registry.history(name, alias),
        }
        if at is not None and alias is not None:
            when = _utc(at)
            body |= {"at": when.isoformat(), "version": await registry.alias_at(name, alias, when)}
        return body

    @router.put(
        "/{name}/aliases/{alias}",
        dependencies=[PROMOTE],
        summary="Point an alias at a version: through the gate on a holdout, or forced.",
        response_model=None,
        responses={409: {"description": "The gate refused; the body holds the decision."}},
    )
    async def put_alias(
        name: str, alias: str, move: AliasMove, request: Request
    ) -> dict[str, Any] | Response:
        caller: Principal = request.state.principal
        decision = await move_alias(
            registry,
            name,
            alias,
            move.version,
            actor=caller.key_id,
            reason=move.reason,
            holdout=move.holdout,
            metric=move.metric,
            mode=move.mode,
            force=move.force,
            evaluator=backend.evaluator,
        )
        if not decision["promoted"]:
            return _refused(PromotionRefusedError(decision=decision), request)
        return decision

    @router.delete(
        "/{name}/aliases/{alias}",
        dependencies=[PROMOTE],
        summary="Remove an alias; the removal is kept in the history.",
    )
    async def delete_alias(name: str, alias: str, request: Request) -> dict[str, Any]:
        caller: Principal = request.state.principal
        return await registry.remove_alias(name, alias, actor=caller.key_id)

    return router
