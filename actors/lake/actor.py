"""Ray shell of the lake service: one actor of the lake pool."""

from __future__ import annotations

import ray

from actors.lake.core import LakeCore
from actors.shell import ServiceActorShell


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class LakeActor(ServiceActorShell):
    core_cls = LakeCore
