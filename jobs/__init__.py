"""Entry points for ``ray job submit -- python -m jobs.<name>``, and what they share."""

from __future__ import annotations

import os

from cluster.errors import PlatformStateError
from cluster.settings import Settings


def join_cluster(settings: Settings, *, no_cluster: str) -> None:
    """Inside a Ray job (or with RAY_ADDRESS) join that cluster; else the running
    platform's (``datapunk up``). Read here, at the entry point, never at import.

    ``no_cluster`` is the ``PlatformStateError`` message when there is neither: what
    needed the cluster and how to give it one.
    """
    # Imported on call: every jobs.* module imports this package, and importing one
    # (to plan, or in a unit test) must not load Ray.
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"):
        ray.init(address="auto", log_to_driver=False)
        return
    from cluster import platform
    from cluster.platform_state import PlatformState
    from cluster.ray_runtime import port_open

    state = PlatformState.load(settings.state_path)
    host, _, port = (state.gcs_address if state else "").rpartition(":")
    if state is None or not port_open(host, int(port)):
        raise PlatformStateError(no_cluster)
    platform.connect(settings, state.gcs_address)
