"""Ray shell of the Lake service: one actor of the Lake pool.

An async actor: each call's blocking table work runs in a worker thread of the
``LakeService``, so one actor serves several reads at once while a commit is writing.
"""

from __future__ import annotations

from typing import Any

import ray

from actors.lake.core import LakeCore
from actors.lake.metrics import LakeMetrics
from actors.lake.service import LAKE_METHODS, LakeService
from actors.shell import ServiceActorShell
from cluster.errors import InvalidInputError
from cluster.logging import bind_request_id, reset_request_id


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=16)  # type: ignore[call-overload]
class LakeActor(ServiceActorShell):
    core_cls = LakeCore

    def __init__(self, settings_values: dict[str, Any], index: int) -> None:
        super().__init__(settings_values, index)
        assert isinstance(self.core, LakeCore)
        self.service = LakeService.with_cache(self.core)
        self.metrics = LakeMetrics()

    async def call(self, method: str, request_id: str | None, *args: Any, **kwargs: Any) -> Any:
        """Run one ``LakeService`` method; errors travel back typed (they pickle)."""
        if method not in LAKE_METHODS:
            raise InvalidInputError(
                field="method", value=method, allowed=", ".join(sorted(LAKE_METHODS))
            )
        token = bind_request_id(request_id)
        try:
            result = await getattr(self.service, method)(*args, **kwargs)
            self.metrics.record(method, args, kwargs, result)
            return result
        finally:
            reset_request_id(token)
