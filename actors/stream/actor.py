"""Ray shell of the stream service: one actor of the stream pool."""

from __future__ import annotations

import ray

from actors.shell import ServiceActorShell
from actors.stream.core import StreamCore


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamActor(ServiceActorShell):
    core_cls = StreamCore
