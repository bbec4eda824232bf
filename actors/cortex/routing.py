"""Which model version answers a request: aliases, canaries and the zero-downtime swap.

A ``Route`` points a model's alias (``production``) at a version, optionally with a
``Canary`` that sends ``percent`` of requests to another version. ``pick`` decides per
request: with a sticky key (the value of the canary's ``sticky_key`` header) the side
is a hash of (model, alias, key), so one caller always lands on the same side for one
canary; without one it is the caller's uniform ``draw``. Randomness and the registry
are the caller's: everything here is a pure function of its arguments.

When the registry changes, the shell builds the new table (``routes_from_registry``),
loads ``versions_to_warm(old, new)`` and only then switches: no request ever waits on a
version that is still loading.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cluster.errors import InvalidInputError

__all__ = [
    "Canary",
    "Route",
    "bucket",
    "pick",
    "routed_versions",
    "routes_from_registry",
    "versions_to_warm",
]

_BUCKETS = 2**64


def _check_version(field: str, version: Any) -> None:
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidInputError(field=field, value=version, allowed="a version number >= 1")


@dataclass(frozen=True)
class Canary:
    """``percent`` of an alias's requests go to ``version``; ``sticky_key`` names the
    request header whose value pins a caller to one side."""

    version: int
    percent: float
    sticky_key: str | None = None

    def __post_init__(self) -> None:
        _check_version("canary version", self.version)
        percent = self.percent
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise InvalidInputError(
                field="canary percent", value=percent, allowed="a number between 0 and 100"
            )
        if not 0 < percent < 100:
            raise InvalidInputError(
                field="canary percent",
                value=percent,
                allowed="more than 0 and less than 100 (promote the version to send it all)",
            )
        if self.sticky_key is not None and not (
            isinstance(self.sticky_key, str) and self.sticky_key.strip()
        ):
            raise InvalidInputError(
                field="canary sticky_key",
                value=self.sticky_key,
                allowed="a request header name, or none",
            )


@dataclass(frozen=True)
class Route:
    """Alias ``alias`` of model ``name`` serves ``version`` (and maybe a canary)."""

    name: str
    alias: str
    version: int
    canary: Canary | None = None

    def __post_init__(self) -> None:
        _check_version("version", self.version)

    @property
    def versions(self) -> tuple[int, ...]:
        """Every version this route may answer with."""
        if self.canary is None:
            return (self.version,)
        return (self.version, self.canary.version)


def bucket(name: str, alias: str, key: str) -> float:
    """The sticky bucket of ``key`` for one alias, uniform in [0, 100)."""
    digest = hashlib.sha256(f"{name}:{alias}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / _BUCKETS


def pick(route: Route, *, key: str | None, draw: float) -> tuple[int, bool]:
    """``(version, is_canary)`` for one request.

    ``key`` (the sticky header's value) decides when given; otherwise ``draw``, a uniform
    number in [0, 1) the caller supplies.
    """
    canary = route.canary
    if canary is None:
        return route.version, False
    position = bucket(route.name, route.alias, key) if key is not None else draw * 100.0
    if position < canary.percent:
        return canary.version, True
    return route.version, False


def routed_versions(routes: Mapping[tuple[str, str], Route]) -> set[tuple[str, int]]:
    """Every ``(name, version)`` the table may send a request to."""
    return {(route.name, v) for route in routes.values() for v in route.versions}


def versions_to_warm(
    old: Mapping[tuple[str, str], Route], new: Mapping[tuple[str, str], Route]
) -> list[tuple[str, int]]:
    """What ``new`` routes to and ``old`` did not, sorted: load these before switching."""
    return sorted(routed_versions(new) - routed_versions(old))


def routes_from_registry(
    aliases: Iterable[Mapping[str, Any]], canaries: Iterable[Mapping[str, Any]]
) -> dict[tuple[str, str], Route]:
    """The routing table from registry rows.

    ``aliases``: ``{"name", "alias", "version"}``; ``canaries``: ``{"name", "alias",
    "version", "percent", "sticky_key"}``. A canary whose alias does not exist routes
    nothing (there is no stable side to split) and is left out; so is one on the alias's
    own version, which would change nothing.
    """
    table: dict[tuple[str, str], Route] = {}
    for row in aliases:
        name, alias = str(row["name"]), str(row["alias"])
        table[(name, alias)] = Route(name=name, alias=alias, version=row["version"])
    for row in canaries:
        key = (str(row["name"]), str(row["alias"]))
        base = table.get(key)
        if base is None or row["version"] == base.version:
            continue
        canary = Canary(
            version=row["version"],
            percent=float(row["percent"]),
            sticky_key=row.get("sticky_key") or None,
        )
        table[key] = Route(name=base.name, alias=base.alias, version=base.version, canary=canary)
    return table
