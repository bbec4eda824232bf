"""The gateway: REST (and later GraphQL and WebSocket) on Ray Serve.

``serve run serve_apps.gateway:app`` and ``datapunk up`` both build it through ``app``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from cluster.settings import Settings, export_settings, load_settings


def build(settings: Settings) -> Application:
    """The gateway application, sized and configured from settings."""
    from serve_apps.gateway.deployment import Gateway

    return Gateway.options(  # type: ignore[attr-defined]
        num_replicas=settings.gateway.replicas,
        max_ongoing_requests=settings.gateway.max_ongoing_requests,
        ray_actor_options={"num_cpus": settings.gateway.num_cpus},
    ).bind(export_settings(settings))


def app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder: ``args`` are settings overrides (as in ``serve.yaml``)."""
    return build(load_settings(**(args or {})))
