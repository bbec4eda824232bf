"""The thin Ray shell shared by the service actors.

Subclasses set ``core_cls`` and are decorated with ``@ray.remote`` in their own
module; this class itself holds no Ray calls, so it can be exercised without Ray.
"""

from __future__ import annotations

import gc
from typing import Any, ClassVar

from actors.base import ServiceCore
from cluster.logging import bind_request_id, configure_logging, reset_request_id
from cluster.settings import settings_from_export


class ServiceActorShell:
    """Builds the core from exported settings; every call carries the request id."""

    core_cls: ClassVar[type[ServiceCore]] = ServiceCore

    def __init__(self, settings_values: dict[str, Any], index: int) -> None:
        settings = settings_from_export(settings_values)
        configure_logging(settings.log_level, service=self.core_cls.service)
        self.core = self.core_cls(settings, index)
        settle_heap()

    def ping(self, request_id: str | None = None) -> dict[str, Any]:
        token = bind_request_id(request_id)
        try:
            return self.core.health()
        finally:
            reset_request_id(token)


def settle_heap() -> None:
    """Take everything alive after start-up out of the cyclic GC's full passes.

    A Lake process holds ~170k long-lived objects after imports (pyiceberg, SQLAlchemy,
    pydantic, pandas; more with Ray); every full collection walks them all, 80-90 ms
    measured, and the metadata churn of commits triggers one every ~35 commits: the p99
    of a 100-row append was a GC pause. Frozen objects are never collected (start-up
    state lives as long as the process anyway), and full passes then cost a few ms.
    """
    gc.collect()
    gc.freeze()
