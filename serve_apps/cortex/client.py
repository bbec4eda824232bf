"""Cortex as the gateway calls it: the Serve deployment handle, with retries.

A prediction is idempotent, so a call that meets a replica dying under it (Serve raises
``ActorDiedError``, ``ActorUnavailableError`` or another ``RayActorError``) is sent
again, up to ``retries`` more times; Serve routes the retry to a live replica. Cortex's
own typed errors come back unwrapped, so the gateway answers them as it answers its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray import serve

from cluster.errors import DatapunkError, ServiceUnavailableError
from serve_apps.cortex import CORTEX_APP, CORTEX_DEPLOYMENT

__all__ = ["RETRYABLE", "ServeCortex"]

logger = logging.getLogger(__name__)

# A replica that died or went away mid-call: the request may be sent again elsewhere.
RETRYABLE: tuple[type[BaseException], ...] = (ray.exceptions.RayActorError,)


class ServeCortex:
    """The ``CortexModels`` deployment through a handle created on first use."""

    def __init__(
        self,
        app_name: str = CORTEX_APP,
        deployment: str = CORTEX_DEPLOYMENT,
        *,
        retries: int = 3,
        warm_timeout_s: float = 120.0,
        method: str = "predict",
    ) -> None:
        self.app_name = app_name
        self.deployment = deployment
        self.retries = retries
        self.warm_timeout_s = warm_timeout_s
        self.method = method
        self._handle: Any = None
        self.retried = 0

    def _get_handle(self) -> Any:
        if self._handle is None:
            try:
                self._handle = serve.get_deployment_handle(self.deployment, self.app_name)
            except Exception as exc:  # Serve raises several kinds for "no such app"
                raise ServiceUnavailableError(
                    service="cortex",
                    target=f"Serve application {self.app_name!r}",
                    reason=f"{type(exc).__name__}: {exc}",
                    fix="deploy it: `datapunk up` does, or `serve deploy configs/serve.yaml`",
                ) from None
        return self._handle

    async def _call(self, method: str, key: str, *args: Any) -> Any:
        handle = self._get_handle().options(multiplexed_model_id=key)
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                return await getattr(handle, method).remote(*args)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, DatapunkError):
                    raise exc.cause from None
                raise
            except RETRYABLE as exc:
                if attempt == attempts:
                    raise ServiceUnavailableError(
                        service="cortex",
                        target=f"model {key}",
                        reason=f"{attempts} replicas failed under the request "
                        f"({type(exc).__name__})",
                        fix="retry; Serve replaces failed replicas",
                    ) from None
                self.retried += 1
                logger.warning(
                    "a cortex replica failed mid-request; sending it again",
                    extra={"model": key, "attempt": attempt, "error": type(exc).__name__},
                )
        raise AssertionError("unreachable")

    async def predict(
        self, key: str, features: pa.Table, request_id: str | None
    ) -> dict[str, np.ndarray]:
        """The outputs of version ``key`` (``"name:version"``) for ``features``."""
        outputs: dict[str, np.ndarray] = await self._call(self.method, key, features, request_id)
        return outputs

    async def warm(self, key: str) -> dict[str, Any]:
        """Load version ``key`` into a replica before requests are routed to it."""
        async with asyncio.timeout(self.warm_timeout_s):
            info: dict[str, Any] = await self._call("warm", key, key)
        return info
