"""Canaries: send a share of an alias's traffic to another version, and take it back.

A canary on alias ``production`` of model ``churn`` says "``percent``% of the requests
for ``churn@production`` go to ``version``; the rest to the version the alias points
at". With a ``sticky_key`` (a request header such as ``X-User``) each caller stays on
one side. Cortex's Serve side reads the canaries (``canaries``) and every alias
(``all_aliases``) and routes accordingly; this module only keeps the records.

``CanaryMethods`` is a base of ``ModelRegistry`` (``actors/forge/registry.py``): it
checks the caller's values here and leaves the state checks (the alias exists and
points elsewhere, the canary is still there) to the store's transaction, where no
concurrent writer can slip between check and write.
"""

from __future__ import annotations

import math
import re
from typing import Any

from cluster.db.canary_store import CanaryStateError
from cluster.db.registry_store import RegistryStore
from cluster.errors import InvalidInputError, NotFoundError

__all__ = [
    "STICKY_KEY_PATTERN",
    "UNATTRIBUTED",
    "CanaryMethods",
    "CanaryStateError",
    "check_percent",
    "check_sticky_key",
]

STICKY_KEY_PATTERN = r"^[A-Za-z0-9-]{1,64}$"
# Who an alias move is recorded as when the caller names nobody (the history needs one).
UNATTRIBUTED = "unknown"
_MAX_ACTOR = 100  # the width of the actor columns
_Record = dict[str, Any]


def check_percent(percent: Any) -> float:
    """``percent`` as a float strictly between 0 and 100; ``InvalidInputError`` otherwise."""
    number = isinstance(percent, int | float) and not isinstance(percent, bool)
    if not number or not math.isfinite(percent) or not 0 < percent < 100:
        raise InvalidInputError(
            field="percent",
            value=percent,
            allowed="a number of percent strictly between 0 and 100, e.g. 20 for a fifth of "
            "the traffic (0 is a rollback, 100 a promotion: use those commands)",
        )
    return float(percent)


def check_sticky_key(sticky_key: Any) -> str | None:
    """A request header name (letters, digits, dashes; at most 64) or None."""
    if sticky_key is None:
        return None
    if not isinstance(sticky_key, str) or re.fullmatch(STICKY_KEY_PATTERN, sticky_key) is None:
        raise InvalidInputError(
            field="sticky_key",
            value=sticky_key,
            allowed=f"a request header name matching {STICKY_KEY_PATTERN}, e.g. X-User; "
            "or none for a random split per request",
        )
    return sticky_key


def _check_version(version: Any) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(
            field="version", value=version, allowed="a version number (1, 2, ...)"
        )
    return version


def _check_who(field: str, actor: Any) -> str | None:
    if actor is not None and (not isinstance(actor, str) or not 1 <= len(actor) <= _MAX_ACTOR):
        raise InvalidInputError(
            field=field, value=actor, allowed=f"who acts, 1 to {_MAX_ACTOR} characters, or none"
        )
    return actor


class CanaryMethods:
    """The canary half of ``ModelRegistry``: set, clear (roll back), promote, list."""

    store: RegistryStore

    async def _model(self, name: str) -> _Record:
        raise NotImplementedError  # ModelRegistry's: the record, or NotFoundError

    async def set_canary(
        self,
        name: str,
        alias: str,
        *,
        version: int,
        percent: float,
        sticky_key: str | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> _Record:
        """Send ``percent``% of ``alias``'s traffic to ``version``, replacing the alias's
        canary if it has one.

        Returns the canary record plus ``alias_version`` and ``replaced``.
        ``InvalidInputError`` for a bad percent, header name or version number;
        ``NotFoundError`` for an unknown model, alias or version; ``CanaryStateError``
        when the alias already points at ``version``.
        """
        checked = check_percent(percent)
        header = check_sticky_key(sticky_key)
        number = _check_version(version)
        _check_who("actor", actor)
        model = await self._model(name)
        latest = model["latest_version"]
        if latest is None or number > latest:  # versions are never deleted: 1..latest exist
            raise NotFoundError(
                kind=f"version of model {name!r}",
                name=str(number),
                fix=f"versions: {f'1 to {latest}' if latest else 'none'}",
            )
        return await self.store.set_canary(
            name,
            alias,
            version=number,
            percent=checked,
            sticky_key=header,
            actor=actor,
            reason=reason,
        )

    async def clear_canary(
        self, name: str, alias: str, *, actor: str | None = None, reason: str | None = None
    ) -> _Record | None:
        """Roll back: all of ``alias``'s traffic to the version it points at.

        Returns the removed canary; None when there was none (not an error: rolling back
        twice is safe). ``NotFoundError`` for an unknown model.
        """
        _check_who("actor", actor)
        await self._model(name)
        return await self.store.clear_canary(name, alias, actor=actor, reason=reason)

    async def promote_canary(
        self, name: str, alias: str, *, actor: str | None = None, reason: str | None = None
    ) -> _Record:
        """Move ``alias`` to its canary's version (the move is in the alias history) and
        remove the canary.

        Returns the alias record plus ``previous_version`` and ``canary``.
        ``NotFoundError`` for an unknown model, alias, or an alias without a canary.
        """
        _check_who("actor", actor)
        await self._model(name)
        return await self.store.promote_canary(
            name, alias, actor=actor or UNATTRIBUTED, reason=reason
        )

    async def canaries(self, name: str | None = None) -> list[_Record]:
        """Active canaries, of ``name`` only when given (``NotFoundError`` if unknown),
        as ``{"name", "alias", "version", "percent", "sticky_key", "created_at",
        "created_by"}``, by model and alias."""
        if name is not None:
            await self._model(name)
        return await self.store.canaries(name)

    async def canary_history(self, name: str, alias: str | None = None) -> list[_Record]:
        """Every canary start, replacement, rollback, promotion and stop of ``name`` (of
        ``alias`` only, when given), oldest first."""
        await self._model(name)
        return await self.store.canary_history(name, alias)

    async def all_aliases(self) -> list[_Record]:
        """Every alias of every model as ``{"name", "alias", "version"}``: one query, cheap
        enough for the Serve side to poll every second from each replica."""
        return await self.store.all_aliases()
