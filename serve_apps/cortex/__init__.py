"""Cortex: the registry's model versions served online on Ray Serve.

``datapunk up`` and ``serve deploy configs/serve.yaml`` (``serve_apps.cortex:app``)
both build it through ``build``. It has no HTTP route of its own: the gateway calls it
through a deployment handle (``serve_apps.cortex.client.ServeCortex``).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from cluster.settings import Settings, export_settings, load_settings

__all__ = [
    "CORTEX_APP",
    "CORTEX_DEPLOYMENT",
    "app",
    "build",
    "cluster_has_gpu",
    "deployment_options",
]

CORTEX_APP = "cortex"
CORTEX_DEPLOYMENT = "CortexModels"


def cluster_has_gpu() -> bool:
    """Whether the connected Ray cluster offers a GPU (``cortex.device: auto`` asks)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def deployment_options(settings: Settings, device: str) -> dict[str, Any]:
    """Serve options of the Cortex deployment: autoscaling, concurrency, resources."""
    cortex = settings.cortex
    actor: dict[str, Any] = {"num_cpus": cortex.num_cpus}
    if device == "cuda":
        actor["num_gpus"] = cortex.num_gpus
    return {
        "autoscaling_config": {
            "min_replicas": cortex.min_replicas,
            "initial_replicas": max(cortex.min_replicas, 1),
            "max_replicas": cortex.max_replicas,
            "target_ongoing_requests": cortex.target_ongoing_requests,
        },
        "max_ongoing_requests": cortex.max_ongoing_requests,
        "ray_actor_options": actor,
    }


def build(settings: Settings, *, gpu: bool | None = None) -> Application:
    """The Cortex application, sized and placed from settings.

    The device is chosen here, once for every replica: ``cortex.device`` ``cuda`` or
    ``cpu`` as set; ``auto`` is the GPU when the cluster has one (``gpu``, which defaults
    to asking the connected cluster), and then each replica requests
    ``cortex.num_gpus``.
    """
    from actors.cortex.served import resolve_device
    from serve_apps.cortex.deployment import CortexModels

    has_gpu = cluster_has_gpu() if gpu is None else gpu
    device = resolve_device(settings.cortex.device, has_gpu)
    options = deployment_options(settings, device)
    return CortexModels.options(**options).bind(  # type: ignore[attr-defined]
        export_settings(settings), device
    )


def app(args: dict[str, Any] | None = None) -> Application:
    """Serve application builder: ``args`` are settings overrides (as in ``serve.yaml``)."""
    return build(load_settings(**(args or {})))
