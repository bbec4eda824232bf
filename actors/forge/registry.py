"""The model registry: numbered versions with their artifacts, aliases and a promotion gate.

``ModelRegistry`` checks what it is given (names, lineage, metrics), keeps artifacts in
an ``ArtifactStore`` (sha256-verified) and the records in a ``RegistryStore`` on the
platform database. Moving an alias is recorded in the alias history, so "which version
was ``production`` at T" is one query (``alias_at``).

Promotion is a decision, then an action: ``gate`` (``actors/forge/gate.py``) is a pure
function of two scores, and ``promote`` moves the alias only when the candidate is at
least as good as the version the alias points at now, both scored by the injected
``evaluate``.

Canaries (a share of an alias's traffic to another version, and the rollback) are
``CanaryMethods``' (``actors/forge/canary.py``), a base of ``ModelRegistry``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from actors.forge.artifacts import ArtifactStore, artifacts_root, sha256
from actors.forge.canary import CanaryMethods
from actors.forge.gate import MODES, Mode, explain, gate
from cluster.db.forge_store import RegistryStore, open_forge_stores
from cluster.errors import InvalidInputError, NotFoundError
from cluster.settings import Settings

__all__ = [
    "ALIAS_PATTERN",
    "FORMATS",
    "LINEAGE_KEYS",
    "NAME_PATTERN",
    "ModelRegistry",
    "registry_from_settings",
]

NAME_PATTERN = r"^[a-z][a-z0-9_.-]{0,99}$"
ALIAS_PATTERN = r"^[a-z][a-z0-9_-]{0,49}$"
LINEAGE_KEYS = ("table", "snapshot_id", "run_id", "config_hash", "code_version")
Format = Literal["state_dict", "torchscript"]
FORMATS: tuple[str, ...] = get_args(Format)
_MAX_ACTOR = 100
_SHOWN = 20
_Record = dict[str, Any]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---- checks ------------------------------------------------------------------------------


def _check_pattern(field: str, value: Any, pattern: str) -> str:
    if not isinstance(value, str) or re.fullmatch(pattern, value) is None:
        raise InvalidInputError(field=field, value=value, allowed=f"a name matching {pattern}")
    return value


def _check_json(field: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInputError(
            field=field, value=type(value).__name__, allowed="a JSON object (dict)"
        )
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            field=field, value=str(value)[:80], allowed=f"plain JSON values, no NaN ({exc})"
        ) from None
    return value


def _check_metrics(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise InvalidInputError(field="metrics", value=metrics, allowed="a dict of name: number")
    checked = {}
    for key, value in metrics.items():
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not isinstance(key, str) or not number or not math.isfinite(value):
            raise InvalidInputError(
                field=f"metrics[{key!r}]", value=value, allowed="a finite number"
            )
        checked[key] = float(value)
    return checked


def _check_tags(tags: Any) -> dict[str, str]:
    if tags is None:
        return {}
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise InvalidInputError(field="tags", value=tags, allowed="a dict of string: string")
    return dict(tags)


def _check_lineage(lineage: Any) -> dict[str, Any]:
    lineage = _check_json("lineage", lineage)
    missing = [key for key in LINEAGE_KEYS if key not in lineage]
    if missing:
        raise InvalidInputError(
            field="lineage",
            value=sorted(lineage),
            allowed=f"a dict with the keys {', '.join(LINEAGE_KEYS)}; missing {missing}",
        )
    return lineage


def _check_actor(actor: Any) -> str:
    if not isinstance(actor, str) or not 1 <= len(actor) <= _MAX_ACTOR:
        raise InvalidInputError(
            field="actor", value=actor, allowed=f"who acts, 1 to {_MAX_ACTOR} characters"
        )
    return actor


def _check_aware(at: datetime) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise InvalidInputError(
            field="at", value=str(at), allowed="an aware time, e.g. 2026-01-02T03:04:05+00:00"
        )
    return at.astimezone(UTC)


def _listing(values: list[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOWN])
    more = f" and {len(values) - _SHOWN} more" if len(values) > _SHOWN else ""
    return (shown + more) or "none"


def _finite(score: float) -> float | None:
    return None if math.isnan(score) or math.isinf(score) else score


class ModelRegistry(CanaryMethods):
    """Register, look up, alias and promote model versions; canary and roll back aliases.

    Version records are plain dicts (``RegistryStore``'s, with ``aliases`` pointing at
    each); ``ref`` arguments take a version number, its digits, or an alias name.
    """

    def __init__(
        self,
        store: RegistryStore,
        artifacts: ArtifactStore,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.store = store
        self.artifacts = artifacts
        self._now = now

    # ---- register ----------------------------------------------------------------------

    async def register(
        self,
        name: str,
        *,
        artifact: bytes,
        format: Format = "state_dict",
        model_spec: dict[str, Any],
        signature: dict[str, Any],
        metrics: dict[str, float],
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        lineage: dict[str, Any],
        created_by: str | None = None,
        description: str | None = None,
    ) -> _Record:
        """Store ``artifact`` as the next version of ``name`` (1 for a new model).

        ``lineage`` must name the Lake ``table`` and ``snapshot_id``, the training
        ``run_id``, the ``config_hash`` and the ``code_version``. The artifact is written
        before the version commits, and only by the registration that owns the number.
        """
        _check_pattern("model name", name, NAME_PATTERN)
        if format not in FORMATS:
            raise InvalidInputError(field="format", value=format, allowed=" or ".join(FORMATS))
        if not isinstance(artifact, bytes | bytearray) or not artifact:
            raise InvalidInputError(
                field="artifact", value=type(artifact).__name__, allowed="non-empty bytes"
            )
        data = bytes(artifact)
        fields = {
            "sha256": sha256(data),
            "format": format,
            "model_spec": _check_json("model_spec", model_spec),
            "signature": _check_json("signature", signature),
            "metrics": _check_metrics(metrics),
            "params": _check_json("params", params),
            "tags": _check_tags(tags),
            "lineage": _check_lineage(lineage),
            "size": len(data),
        }
        if created_by is not None:
            _check_actor(created_by)

        async def write(version: int) -> None:
            await self.artifacts.write(name, version, data)

        return await self.store.add_version(
            name,
            fields,
            artifact_path=lambda version: self.artifacts.relative_path(name, version),
            before_commit=write,
            description=description,
            created_by=created_by,
        )

    # ---- look up -----------------------------------------------------------------------

    async def models(self) -> list[_Record]:
        """Every model by name, with ``latest_version``, ``version_count`` and ``aliases``."""
        return await self.store.models()

    async def _model(self, name: str) -> _Record:
        record = await self.store.model(name)
        if record is None:
            known = [m["name"] for m in await self.store.models()]
            raise NotFoundError(
                kind="model", name=name, fix=f"registered models: {_listing(known)}"
            )
        return record

    async def model(self, name: str) -> _Record:
        """The model's record with its ``versions`` (oldest first); ``NotFoundError``."""
        record = await self._model(name)
        return {**record, "versions": await self.store.versions(name)}

    async def versions(self, name: str) -> list[_Record]:
        """Every version of ``name``, oldest first; ``NotFoundError`` for an unknown model."""
        await self._model(name)
        return await self.store.versions(name)

    async def version(self, name: str, ref: int | str) -> _Record:
        """Version ``ref`` of ``name``: a number, its digits, or an alias name.

        ``NotFoundError`` naming the versions and aliases that do exist.
        """
        model = await self._model(name)
        number: int | None
        if isinstance(ref, int) and not isinstance(ref, bool):
            number = ref
        elif isinstance(ref, str) and ref.isdigit():
            number = int(ref)
        elif isinstance(ref, str):
            number = model["aliases"].get(ref)
        else:
            raise InvalidInputError(
                field="version", value=ref, allowed="a version number or an alias name"
            )
        record = None if number is None else await self.store.version(name, number)
        if record is None:
            latest = model["latest_version"]
            versions = f"1 to {latest}" if latest else "none"
            aliases = _listing(sorted(model["aliases"]))
            raise NotFoundError(
                kind=f"version of model {name!r}",
                name=str(ref),
                fix=f"versions: {versions}; aliases: {aliases}",
            )
        return record

    async def artifact(self, name: str, ref: int | str) -> tuple[_Record, bytes]:
        """Version ``ref``'s record and artifact bytes, checked against its sha256."""
        record = await self.version(name, ref)
        data = await self.artifacts.read(record["artifact_path"], record["sha256"])
        return record, data

    # ---- aliases -----------------------------------------------------------------------

    async def set_alias(
        self, name: str, alias: str, version: int, *, actor: str, reason: str | None = None
    ) -> _Record:
        """Point ``alias`` at ``version``, recording the move (a no-op when already there).

        Returns the alias record with ``previous_version`` and ``changed``.
        """
        _check_pattern("alias", alias, ALIAS_PATTERN)
        _check_actor(actor)
        record = await self.version(name, version)
        return await self.store.set_alias(
            name, alias, record["version"], actor=actor, reason=reason
        )

    async def remove_alias(
        self, name: str, alias: str, *, actor: str, reason: str | None = None
    ) -> _Record:
        """Delete ``alias``; returns the history event. ``NotFoundError`` when unset,
        ``CanaryStateError`` while it has a canary (roll it back or promote it first)."""
        _check_actor(actor)
        model = await self._model(name)
        event = await self.store.remove_alias(name, alias, actor=actor, reason=reason)
        if event is None:
            raise NotFoundError(
                kind=f"alias of model {name!r}",
                name=alias,
                fix=f"aliases: {_listing(sorted(model['aliases']))}",
            )
        return event

    async def alias_at(self, name: str, alias: str, at: datetime) -> int | None:
        """The version ``alias`` pointed at, at ``at`` (aware); None when it pointed nowhere."""
        await self._model(name)
        return await self.store.alias_at(name, alias, _check_aware(at))

    async def history(self, name: str, alias: str | None = None) -> list[_Record]:
        """Every alias move of ``name`` (of ``alias`` only, when given), oldest first."""
        await self._model(name)
        return await self.store.history(name, alias)

    # ---- promote -----------------------------------------------------------------------

    async def promote(
        self,
        name: str,
        alias: str,
        version: int,
        *,
        evaluate: Callable[[_Record], Awaitable[float]],
        metric: str,
        mode: Mode,
        actor: str,
        reason: str | None = None,
    ) -> _Record:
        """Score the candidate and the alias's holder with ``evaluate``; move the alias
        only if the candidate is at least as good (``gate``).

        Returns the decision: ``promoted``, ``alias``, ``candidate_version``,
        ``candidate_score``, ``incumbent_version``, ``incumbent_score``, ``metric``,
        ``mode``, ``why``, ``decided_at`` (scores that are NaN come back as None). A refused
        promotion moves nothing and leaves no history.
        """
        _check_pattern("alias", alias, ALIAS_PATTERN)
        _check_actor(actor)
        if mode not in MODES:
            raise InvalidInputError(field="mode", value=mode, allowed="min or max")
        candidate = await self.version(name, version)
        holder = (await self._model(name))["aliases"].get(alias)
        candidate_score = float(await evaluate(candidate))
        incumbent_score: float | None = None
        if holder == candidate["version"]:
            incumbent_score = candidate_score
        elif holder is not None:
            incumbent_score = float(await evaluate(await self.version(name, holder)))
        promoted = gate(candidate_score, incumbent_score, mode)
        why = explain(candidate_score, incumbent_score, mode, promoted)
        if promoted:
            # Only from the version the gate compared against: a concurrent move wins.
            await self.store.set_alias(
                name,
                alias,
                candidate["version"],
                actor=actor,
                reason=reason or f"promotion gate on {metric}: {why}",
                expect_previous=holder,
            )
        return {
            "name": name,
            "promoted": promoted,
            "alias": alias,
            "candidate_version": candidate["version"],
            "candidate_score": _finite(candidate_score),
            "incumbent_version": holder,
            "incumbent_score": None if incumbent_score is None else _finite(incumbent_score),
            "metric": metric,
            "mode": mode,
            "why": why,
            "decided_at": self._now().astimezone(UTC).isoformat(),
        }


@asynccontextmanager
async def registry_from_settings(
    settings: Settings, now: Callable[[], datetime] = _utcnow
) -> AsyncIterator[ModelRegistry]:
    """A ``ModelRegistry`` on the settings' platform database (migrated when behind) and
    ``<data_dir>/forge/artifacts``; the engine is disposed of when the block ends."""
    async with open_forge_stores(settings, now) as stores:
        yield ModelRegistry(stores.registry, ArtifactStore(artifacts_root(settings)), now)
