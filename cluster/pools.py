"""Actor pools of the four services: start, find, ping and stop them.

Actors are detached and named ``<service>-<index>`` in the platform's namespace, so
the gateway, jobs and the CLI find them by name and ``datapunk up`` is idempotent.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from typing import Any

import ray

from cluster.errors import ServiceUnavailableError
from cluster.settings import Settings, export_settings

logger = logging.getLogger(__name__)

POOL_ACTORS: dict[str, str] = {
    "lake": "actors.lake.actor:LakeActor",
    "stream": "actors.stream.actor:StreamActor",
    "cortex": "actors.cortex.actor:CortexActor",
    "forge": "actors.forge.actor:ForgeActor",
}


def actor_name(service: str, index: int) -> str:
    return f"{service}-{index}"


def pool_sizes(settings: Settings) -> dict[str, int]:
    return {name: getattr(settings.pools, name) for name in POOL_ACTORS}


def _actor_class(service: str) -> Any:
    module, _, attr = POOL_ACTORS[service].partition(":")
    return getattr(importlib.import_module(module), attr)


def start_pools(settings: Settings, timeout_s: float = 60.0) -> dict[str, int]:
    """Create missing pool actors (existing ones are kept) and wait until each answers."""
    values = export_settings(settings)
    pending = []
    for service, count in pool_sizes(settings).items():
        cls = _actor_class(service)
        for index in range(count):
            handle = cls.options(
                name=actor_name(service, index),
                namespace=settings.ray.namespace,
                lifetime="detached",
                get_if_exists=True,
            ).remote(values, index)
            pending.append(handle.ping.remote())
    ray.get(pending, timeout=timeout_s)
    return pool_sizes(settings)


def stop_pools(settings: Settings) -> int:
    """Kill every pool actor that exists; return how many were killed."""
    killed = 0
    for service, count in pool_sizes(settings).items():
        for index in range(count):
            try:
                handle = ray.get_actor(actor_name(service, index), settings.ray.namespace)
            except ValueError:
                continue
            ray.kill(handle, no_restart=True)
            killed += 1
    return killed


async def ping_pool(
    settings: Settings, service: str, request_id: str | None = None
) -> list[dict[str, Any]]:
    """Ping every actor of one pool; raise ``ServiceUnavailableError`` naming a missing one."""
    replies = []
    for index in range(pool_sizes(settings)[service]):
        name = actor_name(service, index)
        try:
            handle = ray.get_actor(name, settings.ray.namespace)
        except ValueError:
            raise ServiceUnavailableError(
                service=f"{service} pool",
                target=f"actor {name}",
                reason="actor not found",
                fix="run `datapunk up` to start the actor pools",
            ) from None
        replies.append(_ping_one(handle, service, name, request_id))
    return list(await asyncio.gather(*replies))


async def _ping_one(handle: Any, service: str, name: str, request_id: str | None) -> Any:
    try:
        return await handle.ping.remote(request_id)
    except ray.exceptions.RayActorError as exc:
        raise ServiceUnavailableError(
            service=f"{service} pool",
            target=f"actor {name}",
            reason=f"actor died ({type(exc).__name__})",
            fix="run `datapunk up` again to restart the actor pools",
        ) from None
