"""Ray shell of the forge service: one actor of the forge pool."""

from __future__ import annotations

import ray

from actors.forge.core import ForgeCore
from actors.shell import ServiceActorShell


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class ForgeActor(ServiceActorShell):
    core_cls = ForgeCore
