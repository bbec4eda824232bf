"""Ray shell of the cortex service: one actor of the cortex pool."""

from __future__ import annotations

import ray

from actors.cortex.core import CortexCore
from actors.shell import ServiceActorShell


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class CortexActor(ServiceActorShell):
    core_cls = CortexCore
