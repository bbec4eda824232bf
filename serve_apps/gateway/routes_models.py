"""``/api/v1/models``: the model registry over REST, as ``datapunk models`` shows it.

Reads need ``model:read``; moving or removing an alias needs ``model:promote``. A
``PUT`` of an alias with a ``holdout`` goes through the promotion gate: when the
candidate scores worse than the alias's holder, the answer is 409 with the error body
and the ``decision`` beside it, and the alias stays where it was.

Canaries (``.../aliases/{alias}/canary``) send a share of an alias's traffic to another
version: ``PUT`` starts or replaces one, ``DELETE`` rolls it back (200 whether or not
there was one), ``POST .../promote`` moves the alias to it. Reads need ``model:read``,
the rest ``model:promote``; a state that forbids the command is 409.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import Field

from actors.forge.promotion import Holdout, HoldoutEvaluator, move_alias
from actors.forge.registry import ModelRegistry
from cluster.errors import InvalidInputError, PlatformStateError
from cluster.security import grants
from cluster.security.principal import Principal
from serve_apps.gateway import access
from serve_apps.gateway.bodies import StrictBody
from serve_apps.gateway.openapi import ErrorBody

__all__ = ["AliasMove", "CanarySet", "ModelsBackend", "PromotionRefusedError", "models_router"]

# Every route under /models/{name} is checked on that model (scoped grants) as well.
READ = Depends(access.object_permission("model:read", "model"))
PROMOTE = Depends(access.object_permission("model:promote", "model"))


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


class AliasMove(StrictBody):
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


class CanarySet(StrictBody):
    """A canary: which version gets what share of the alias's traffic.

    The ranges are checked by the registry, whose 422 names the value and the fix.
    """

    version: int = Field(description="The version the canary sends traffic to.")
    percent: float = Field(description="Share of the alias's traffic, strictly 0 to 100.")
    sticky_key: str | None = Field(
        None,
        max_length=200,
        description="A request header (e.g. X-User) whose value keeps a caller on one side.",
    )
    reason: str | None = Field(None, max_length=2000, description="Kept in the canary history.")


Reason = Annotated[str | None, Query(max_length=2000, description="Kept in the history.")]


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
    async def list_models(request: Request) -> list[dict[str, Any]]:
        models = await registry.models()
        return access.visible(request, "model:read", models, lambda m: grants.model(m["name"]))

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
        responses={
            409: {
                "model": ErrorBody,
                "description": "The gate refused; `decision` beside `error` says why.",
            }
        },
    )
    async def put_alias(
        name: str, alias: str, move: AliasMove, request: Request
    ) -> dict[str, Any] | Response:
        caller: Principal = request.state.principal
        if move.holdout is not None:  # the gate reads this table on the caller's behalf
            access.check_table(request, "lake.table:read", move.holdout.table)
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

    _canary_routes(router, registry)
    return router


def _canary_routes(router: APIRouter, registry: ModelRegistry) -> None:
    """``/{name}/canaries`` and ``/{name}/aliases/{alias}/canary``."""

    @router.get("/{name}/canaries", dependencies=[READ], summary="The model's active canaries.")
    async def list_canaries(name: str) -> list[dict[str, Any]]:
        return await registry.canaries(name)

    @router.get(
        "/{name}/canaries/history",
        dependencies=[READ],
        summary="Canary starts, replacements, rollbacks, promotions and stops, oldest first.",
    )
    async def canary_history(
        name: str, alias: Annotated[str | None, Query(description="Only this alias.")] = None
    ) -> list[dict[str, Any]]:
        return await registry.canary_history(name, alias)

    @router.put(
        "/{name}/aliases/{alias}/canary",
        dependencies=[PROMOTE],
        summary="Send a share of an alias's traffic to another version (replaces its canary).",
    )
    async def put_canary(
        name: str, alias: str, body: CanarySet, request: Request
    ) -> dict[str, Any]:
        caller: Principal = request.state.principal
        return await registry.set_canary(
            name,
            alias,
            version=body.version,
            percent=body.percent,
            sticky_key=body.sticky_key,
            actor=caller.key_id,
            reason=body.reason,
        )

    @router.delete(
        "/{name}/aliases/{alias}/canary",
        dependencies=[PROMOTE],
        summary="Roll back: all of the alias's traffic to its version (200 if none was set).",
    )
    async def delete_canary(
        name: str, alias: str, request: Request, reason: Reason = None
    ) -> dict[str, Any]:
        caller: Principal = request.state.principal
        removed = await registry.clear_canary(name, alias, actor=caller.key_id, reason=reason)
        return {
            "name": name,
            "alias": alias,
            "rolled_back": removed is not None,
            "canary": removed,
        }

    @router.post(
        "/{name}/aliases/{alias}/canary/promote",
        dependencies=[PROMOTE],
        summary="Move the alias to its canary's version and end the canary.",
    )
    async def promote_canary(
        name: str, alias: str, request: Request, reason: Reason = None
    ) -> dict[str, Any]:
        caller: Principal = request.state.principal
        return await registry.promote_canary(name, alias, actor=caller.key_id, reason=reason)
