"""Moving an alias on request, as ``datapunk models promote`` and ``PUT .../aliases/{alias}``
both do: through the promotion gate on a holdout snapshot, or forced past it.

The gate scores with a ``HoldoutEvaluator``; the real one is Forge's
``actors.forge.evaluate.evaluate_version`` (imported only when a promotion needs it:
it pulls in torch), tests inject a plain async function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, Field

from actors.forge.gate import MODES, Mode
from actors.forge.registry import ModelRegistry
from cluster.errors import InvalidInputError, PlatformStateError
from cluster.settings import Settings

__all__ = [
    "Holdout",
    "HoldoutEvaluator",
    "holdout_evaluator",
    "move_alias",
    "objective",
    "parse_holdout",
]

# Scores a version record on held-out data: (record, table, snapshot_id, metric) -> score.
HoldoutEvaluator = Callable[[dict[str, Any], str, int | None, str], Awaitable[float]]


class Holdout(BaseModel):
    """The Lake data a promotion is judged on."""

    table: str = Field(min_length=1, max_length=300, description="Lake table to score on.")
    snapshot_id: int | None = Field(
        None,
        ge=0,
        description="Its snapshot; unset = the current one, read by each evaluation (pin "
        "one so the candidate and the holder see the same rows).",
    )

    def label(self) -> str:
        """``table@snapshot`` (``table`` alone when unpinned)."""
        return self.table if self.snapshot_id is None else f"{self.table}@{self.snapshot_id}"


def parse_holdout(text: str) -> Holdout:
    """``TABLE[@SNAPSHOT_ID]`` as a ``Holdout``; ``InvalidInputError`` otherwise."""
    table, at, snapshot = text.strip().rpartition("@") if "@" in text else (text.strip(), "", "")
    if not table or (at and not snapshot.isdigit()):
        raise InvalidInputError(
            field="holdout", value=text, allowed="TABLE or TABLE@SNAPSHOT_ID, e.g. sales.orders@42"
        )
    return Holdout(table=table, snapshot_id=int(snapshot) if at else None)


def objective(record: dict[str, Any], metric: str | None, mode: str | None) -> tuple[str, Mode]:
    """The metric and mode the gate judges by: as given, else the candidate's own
    ``params["metric"]`` and ``params["mode"]`` (what it was tuned for)."""
    params = record.get("params") or {}
    metric = metric or params.get("metric")
    mode = mode or params.get("mode")
    if not isinstance(metric, str) or not metric:
        raise InvalidInputError(
            field="metric",
            value=metric,
            allowed='the metric to judge by (--metric rmse / "metric": "rmse"); version '
            f"{record.get('version')} does not record one in its params",
        )
    if mode not in MODES:
        raise InvalidInputError(
            field="mode", value=mode, allowed="min or max (which way is better for the metric)"
        )
    return metric, "min" if mode == "min" else "max"


def holdout_evaluator(settings: Settings) -> HoldoutEvaluator:
    """Scores versions with Forge's ``evaluate_version`` on the settings' Lake."""

    async def evaluate(
        record: dict[str, Any], table: str, snapshot_id: int | None, metric: str
    ) -> float:
        try:
            from actors.forge.evaluate import evaluate_version
        except ModuleNotFoundError as exc:
            if exc.name != "actors.forge.evaluate":
                raise
            raise PlatformStateError(
                "holdout evaluation (actors.forge.evaluate) is not part of this installation; "
                "upgrade Datapunk, or move the alias without the gate (force)"
            ) from None
        return float(await evaluate_version(settings, record, table, snapshot_id, metric))

    return evaluate


def _forced(name: str, alias: str, moved: dict[str, Any]) -> dict[str, Any]:
    why = "moved without the gate (force)" if moved["changed"] else "already there (force)"
    return {
        "name": name,
        "promoted": True,
        "forced": True,
        "alias": alias,
        "candidate_version": moved["version"],
        "candidate_score": None,
        "incumbent_version": moved["previous_version"],
        "incumbent_score": None,
        "metric": None,
        "mode": None,
        "why": why,
        "decided_at": moved["updated_at"],
        "holdout": None,
    }


async def move_alias(
    registry: ModelRegistry,
    name: str,
    alias: str,
    version: int,
    *,
    actor: str,
    reason: str | None = None,
    holdout: Holdout | None = None,
    metric: str | None = None,
    mode: str | None = None,
    force: bool = False,
    evaluator: HoldoutEvaluator | None = None,
) -> dict[str, Any]:
    """Point ``alias`` at ``version``: through the gate on ``holdout``, or with ``force``.

    Returns the decision (``ModelRegistry.promote``'s, plus ``forced`` and ``holdout``);
    ``promoted`` is False when the gate refused, and then nothing moved. Exactly one of
    ``holdout`` and ``force`` is required: a move without evidence must be deliberate.
    """
    if holdout is None and not force:
        raise InvalidInputError(
            field="force",
            value=False,
            allowed="give a holdout (--holdout TABLE[@SNAPSHOT_ID]) to promote through the "
            "gate, or force (--force) to move the alias without comparing the versions",
        )
    if holdout is not None and force:
        raise InvalidInputError(
            field="force",
            value=True,
            allowed="not with a holdout: the holdout gates the move and force skips the gate; "
            "give one of them",
        )
    if holdout is None:
        moved = await registry.set_alias(name, alias, version, actor=actor, reason=reason)
        return _forced(name, alias, moved)
    if evaluator is None:
        raise PlatformStateError(
            "this server cannot score holdouts (no evaluator configured); "
            "promote with `datapunk models promote --holdout` on the platform's machine"
        )
    judged_metric, judged_mode = objective(await registry.version(name, version), metric, mode)

    async def evaluate(record: dict[str, Any]) -> float:
        return await evaluator(record, holdout.table, holdout.snapshot_id, judged_metric)

    decision = await registry.promote(
        name,
        alias,
        version,
        evaluate=evaluate,
        metric=judged_metric,
        mode=judged_mode,
        actor=actor,
        reason=reason,
    )
    return {**decision, "forced": False, "holdout": holdout.model_dump()}
