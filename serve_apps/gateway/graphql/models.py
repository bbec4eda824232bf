"""The model registry over GraphQL: models, versions, aliases, canaries, the prediction log,
and the alias move through the promotion gate.

Same backend (``ModelsBackend``) and permissions as ``routes_models``: reads need
``model:read``; ``moveAlias`` needs ``model:promote`` and goes through ``move_alias``
exactly as ``PUT /models/{name}/aliases/{alias}`` does (a holdout gates the move, only
``force`` skips the gate; a refused move is the ``promotion_refused`` error with the
decision in its extensions). Reading the prediction log also needs ``lake.table:read``
on the log's table, as reading it through ``/lake`` would.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import strawberry
from pydantic import ValidationError
from strawberry.scalars import JSON

from actors.cortex.predlog import log_table_name
from actors.forge.promotion import move_alias
from actors.forge.registry import ModelRegistry
from cluster.errors import InvalidInputError
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
from serve_apps.gateway.graphql.lake import lake_of, may_decrypt
from serve_apps.gateway.graphql.types import Canary, ModelSummary, ModelVersion, Rows
from serve_apps.gateway.routes_models import AliasMove, ModelsBackend, PromotionRefusedError

READ = "model:read"
PROMOTE = "model:promote"


def models_of(info: GraphQLInfo) -> ModelsBackend:
    return backend(info.context.deps.models, "models")


def registry_of(info: GraphQLInfo) -> ModelRegistry:
    return models_of(info).registry


@strawberry.type(description="A registered model: its versions, aliases, canaries, history.")
class Model:
    name: str
    description: str | None
    latest_version: int | None
    aliases: JSON
    created_at: str | None
    created_by: str | None
    all_versions: strawberry.Private[list[dict[str, Any]]]

    @strawberry.field(description="The newest `limit` versions, oldest first.")
    def versions(self, limit: int = 50) -> list[ModelVersion]:
        count = bounded(limit, MAX_LIST)
        return [ModelVersion.of(v) for v in self.all_versions[-count:]]

    @strawberry.field(description="Active canaries on this model's aliases.")
    async def canaries(self, info: GraphQLInfo) -> list[Canary]:
        return [Canary.of(c) for c in await registry_of(info).canaries(self.name)]

    @strawberry.field(description="The newest `limit` alias moves (of one alias), oldest first.")
    async def history(
        self, info: GraphQLInfo, alias: str | None = None, limit: int = 50
    ) -> list[JSON]:
        count = bounded(limit, MAX_LIST)
        events = await registry_of(info).history(self.name, alias)
        return [JSON(e) for e in events[-count:]]

    @classmethod
    def of(cls, record: dict[str, Any]) -> Model:
        return cls(
            name=record["name"],
            description=record.get("description"),
            latest_version=record.get("latest_version"),
            aliases=JSON(record.get("aliases") or {}),
            created_at=record.get("created_at"),
            created_by=record.get("created_by"),
            all_versions=list(record.get("versions") or []),
        )


@strawberry.enum(description="Which way a metric is better.")
class Mode(Enum):
    MIN = "min"
    MAX = "max"


@strawberry.input(description="The Lake data a gated promotion is judged on.")
class HoldoutInput:
    table: str
    snapshot_id: strawberry.ID | None = None


@strawberry.input(description="Where to point an alias, and on what evidence.")
class AliasMoveInput:
    version: int
    reason: str | None = None
    holdout: HoldoutInput | None = None
    metric: str | None = None
    mode: Mode | None = None
    force: bool = False


def _alias_move(move: AliasMoveInput) -> AliasMove:
    """The REST body model, so both APIs validate a move by the same rules."""
    holdout = None
    if move.holdout is not None:
        holdout = {"table": move.holdout.table, "snapshot_id": move.holdout.snapshot_id}
    try:
        return AliasMove.model_validate(
            {
                "version": move.version,
                "reason": move.reason,
                "holdout": holdout,
                "metric": move.metric,
                "mode": None if move.mode is None else move.mode.value,
                "force": move.force,
            }
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise InvalidInputError(
            field=f"move.{where}", value=problem.get("input"), allowed=problem["msg"]
        ) from None


@strawberry.type
class ModelsQuery:
    @strawberry.field(
        description="Models with their latest version and aliases.", extensions=[Needs(READ)]
    )
    async def models(self, info: GraphQLInfo) -> list[ModelSummary]:
        principal = info.context.principal
        listed = await registry_of(info).models()
        shown = grants.visible(principal, READ, listed, lambda m: grants.model(m["name"]))
        return [ModelSummary.of(m) for m in shown]

    @strawberry.field(description="A model with its versions.", extensions=[Needs(READ, "model")])
    async def model(self, info: GraphQLInfo, name: str) -> Model:
        return Model.of(await registry_of(info).model(name))

    @strawberry.field(
        description="One version by number or alias.", extensions=[Needs(READ, "model")]
    )
    async def model_version(self, info: GraphQLInfo, name: str, ref: str) -> ModelVersion:
        return ModelVersion.of(await registry_of(info).version(name, ref))

    @strawberry.field(
        description="Active canaries, of one model when given.",
        extensions=[Needs(READ, "model")],
    )
    async def canaries(self, info: GraphQLInfo, name: str | None = None) -> list[Canary]:
        principal = info.context.principal
        listed = await registry_of(info).canaries(name)
        shown = grants.visible(principal, READ, listed, lambda c: grants.model(c["name"]))
        return [Canary.of(c) for c in shown]

    @strawberry.field(
        description=f"Up to `limit` rows (at most {MAX_ROWS}) of a model's prediction log, "
        "the filter pushed down.",
        extensions=[Needs(READ, "model")],
    )
    async def predictions(
        self, info: GraphQLInfo, name: str, filter: str | None = None, limit: int = 100
    ) -> Rows:
        lake = lake_of(info)
        await registry_of(info).model(name)  # an unknown model is a 404 naming the known ones
        table = log_table_name(lake.settings.cortex.log_namespace, name)
        authorize(info.context.principal, "lake.table:read", Target("table", table))
        rows = await lake.scan(
            table, filter=filter, limit=bounded(limit, MAX_ROWS), decrypt=may_decrypt(info, table)
        )
        return Rows.of(rows)


@strawberry.type
class ModelsMutation:
    @strawberry.mutation(
        description="Point an alias at a version: through the gate on a holdout, or forced. "
        "A refused move is the `promotion_refused` error carrying the decision.",
        extensions=[Needs(PROMOTE, "model")],
    )
    async def move_alias(
        self, info: GraphQLInfo, name: str, alias: str, move: AliasMoveInput
    ) -> JSON:
        checked = _alias_move(move)
        if checked.holdout is not None:  # the gate reads this table on the caller's behalf
            target = Target("table", checked.holdout.table)
            authorize(info.context.principal, "lake.table:read", target)
        backend_ = models_of(info)
        decision = await move_alias(
            backend_.registry,
            name,
            alias,
            checked.version,
            actor=info.context.principal.key_id,
            reason=checked.reason,
            holdout=checked.holdout,
            metric=checked.metric,
            mode=checked.mode,
            force=checked.force,
            evaluator=backend_.evaluator,
        )
        if not decision["promoted"]:
            raise PromotionRefusedError(decision=decision)
        return JSON(decision)
