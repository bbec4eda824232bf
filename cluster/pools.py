"""Actor pools of the four services: start, find, ping and stop them.

Actors are detached and named ``<service>-<index>`` in the platform's namespace, so
the gateway, jobs and the CLI find them by name and ``datapunk up`` is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import threading
from typing import Any

import ray

from cluster.consul import HEARTBEAT_EVERY_S, ConsulRegistry, heartbeat, pool_check_id
from cluster.errors import DatapunkError, ServiceUnavailableError
from cluster.logging import configure_logging
from cluster.settings import Settings, export_settings, settings_from_export

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
    with contextlib.suppress(ValueError):  # no Consul configured, or already gone
        ray.kill(ray.get_actor(HEARTBEAT_ACTOR, settings.ray.namespace), no_restart=True)
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


# --- Consul TTL heartbeat ---------------------------------------------------------------

HEARTBEAT_ACTOR = "consul-heartbeat"
PING_TIMEOUT_S = 5.0


def ping_failures(settings: Settings) -> dict[str, str | None]:
    """Ping every pool actor: ``{TTL check id: None if it answered, else why not}``."""
    pending: dict[str, Any] = {}
    failures: dict[str, str | None] = {}
    for service, count in pool_sizes(settings).items():
        for index in range(count):
            check_id = pool_check_id(service, index)
            try:
                handle = ray.get_actor(actor_name(service, index), settings.ray.namespace)
            except ValueError:
                failures[check_id] = "actor not found"
                continue
            pending[check_id] = handle.ping.remote()
    for check_id, ref in pending.items():
        try:
            ray.get(ref, timeout=PING_TIMEOUT_S)
            failures[check_id] = None
        except ray.exceptions.GetTimeoutError:
            failures[check_id] = f"no answer to ping within {PING_TIMEOUT_S:g} s"
        except ray.exceptions.RayError as exc:
            failures[check_id] = f"ping failed ({type(exc).__name__})"
    return failures


@ray.remote(num_cpus=0)
class ConsulHeartbeat:
    """Keeps each pool actor's Consul TTL check passing while that actor answers ping.

    One small actor rather than a thread in every pool actor: the pools stay free of
    Consul, and an actor that hangs (rather than dies) is reported too.
    """

    def __init__(self, settings_values: dict[str, Any]) -> None:
        self.settings = settings_from_export(settings_values)
        configure_logging(self.settings.log_level, service="consul-heartbeat")
        self.registry = ConsulRegistry(self.settings.secret("consul_url") or "")
        threading.Thread(target=self._loop, daemon=True).start()

    def beat(self) -> dict[str, bool]:
        """One round: ping the pools, report to Consul; ``{check id: agent knew it}``."""
        return heartbeat(self.registry, ping_failures(self.settings))

    def _loop(self) -> None:
        while True:
            threading.Event().wait(HEARTBEAT_EVERY_S)
            try:
                self.beat()
            except DatapunkError as exc:  # Consul away for a while: keep trying
                logger.warning("Consul heartbeat failed", extra={"error": exc.message})


def start_heartbeat(settings: Settings, timeout_s: float = 30.0) -> dict[str, bool] | None:
    """With Consul configured, start the heartbeat and report once before returning."""
    if settings.consul_url is None:
        return None
    handle = ConsulHeartbeat.options(  # type: ignore[attr-defined]
        name=HEARTBEAT_ACTOR,
        namespace=settings.ray.namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote(export_settings(settings))
    result: dict[str, bool] = ray.get(handle.beat.remote(), timeout=timeout_s)
    return result
