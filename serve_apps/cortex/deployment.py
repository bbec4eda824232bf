"""The Ray Serve shell of Cortex: registry model versions served, batched, on CPU or GPU.

One ``CortexModels`` replica holds up to ``cortex.max_models_per_replica`` versions
(``@serve.multiplexed``, keyed ``"name:version"``; Serve evicts the least recently used
and routes a version's requests to the replicas that hold it). Callers reach it through
a handle only (no route prefix): ``handle.options(multiplexed_model_id=model_id(name,
version)).predict.remote(features, request_id)``, where ``features`` is the float64
table ``actors.cortex.signature.parse_json_body`` builds (the gateway validates it
before the call). The answer is ``{"prediction": ndarray, ["probabilities": ndarray]}``.

``predict`` goes through ``@serve.batch``: a batch may mix versions, so it is grouped by
version, each group is one forward pass over its requests' concatenated rows, and the
outputs are split back per request. ``predict_unbatched`` does the same for one request
(the benchmark compares the two). ``warm`` loads a version before the gateway routes to
it (the zero-downtime swap).

Each served request's rows are offered to a bounded prediction-log buffer (never
waiting; a full buffer drops and counts) that a background task appends to the Lake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

import numpy as np
import pyarrow as pa
import torch
from ray import serve

from actors.cortex.predlog import (
    PredictionBuffer,
    PredictionLogger,
    lake_append,
    log_table_name,
    prediction_rows,
)
from actors.cortex.served import ServedModel, parse_model_id, resolve_device, split_outputs
from actors.cortex.signature import feature_matrix
from actors.forge.artifacts import ArtifactStore, artifacts_root
from actors.forge.registry import ModelRegistry
from actors.lake.service import LakeService
from cluster.db.engine import create_engine
from cluster.db.forge_store import RegistryStore
from cluster.errors import DatapunkError, InvalidInputError
from cluster.logging import configure_logging, new_request_id
from cluster.settings import Settings, settings_from_export
from serve_apps.cortex import CORTEX_APP, CORTEX_DEPLOYMENT
from serve_apps.cortex.metrics import CortexMetrics

__all__ = ["CORTEX_APP", "CORTEX_DEPLOYMENT", "CortexModels"]

Outputs = dict[str, np.ndarray]
logger = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Request:
    """One request waiting in a batch: its version, rows and when it arrived."""

    model_id: str
    features: pa.Table
    request_id: str
    started: float


def _replica() -> str:
    """This replica's full id, which is also its actor's name (namespace ``serve``)."""
    return str(serve.get_replica_context().replica_id.to_full_id_str())


def _code(exc: BaseException) -> str:
    return exc.code if isinstance(exc, DatapunkError) else "internal_error"


@serve.deployment(name=CORTEX_DEPLOYMENT)
class CortexModels:
    """One Cortex replica: multiplexed registry versions, a batch queue, a prediction log."""

    def __init__(self, settings_values: dict[str, Any], device: str) -> None:
        self.settings: Settings = settings_from_export(settings_values)
        configure_logging(self.settings.log_level, service="cortex")
        cortex = self.settings.cortex
        # Decided at build time from the cluster's resources; the replica confirms it
        # sees the GPU it was scheduled with (a clear error, not a slow CPU fallback).
        self.device = resolve_device(device, torch.cuda.is_available())
        self.registry = ModelRegistry(
            RegistryStore.from_engine(create_engine(self.settings), _utcnow),
            ArtifactStore(artifacts_root(self.settings)),
        )
        self.metrics = CortexMetrics()
        # Decorator arguments are fixed when the module is imported; the settings' values
        # are applied to this process's batch queue here.
        self._batcher: Any = cast(Any, self._predict_batch)  # serve.batch: its setters
        self._batcher.set_max_batch_size(cortex.max_batch_size)
        self._batcher.set_batch_wait_timeout_s(cortex.batch_wait_timeout_s)

        async def load(model_key: str) -> ServedModel:
            return await self._load(model_key)

        # Multiplexed at init time (Ray 2.60 detects an instance attribute wrapped so), so
        # the per-replica model count comes from the settings, not an import-time constant.
        self._model = serve.multiplexed(max_num_models_per_replica=cortex.max_models_per_replica)(
            load
        )
        self._log: PredictionLogger | None = None
        if cortex.log_predictions:
            self._log = PredictionLogger(
                PredictionBuffer(cortex.log_buffer_rows),
                lake_append(self._lake()),
                flush_rows=cortex.log_flush_rows,
                flush_s=cortex.log_flush_s,
            )

    def _lake(self) -> Any:
        if self.settings.pools.lake:
            from actors.lake.client import RayLake

            return RayLake(self.settings).as_service()
        return LakeService.from_settings(self.settings)

    async def _load(self, model_key: str) -> ServedModel:
        name, version = parse_model_id(model_key)
        record, data = await self.registry.artifact(name, version)
        served = await asyncio.to_thread(ServedModel.from_artifact, record, data, self.device)
        logger.info("cortex loaded a model version", extra={"model": model_key})
        return served

    # ---- handle methods ----------------------------------------------------------------

    async def predict(self, features: pa.Table, request_id: str | None = None) -> Outputs:
        """Outputs for ``features`` by the request's multiplexed version, batched with
        other requests (of any version) that arrive within the batch wait."""
        request = await self._request(features, request_id)
        result = await self._predict_batch(request)
        if isinstance(result, BaseException):
            raise result
        return result

    async def predict_unbatched(self, features: pa.Table, request_id: str | None = None) -> Outputs:
        """The same as ``predict``, one forward pass per request (the benchmark's baseline)."""
        request = await self._request(features, request_id)
        try:
            served = await self._model(request.model_id)
            outputs = served.predict(feature_matrix(request.features, served.signature))
        except Exception as exc:
            name, version = parse_model_id(request.model_id)
            self.metrics.failed(name, version, _code(exc))
            raise
        self._served(served, [request], [outputs], 1)
        return outputs

    async def warm(self, model_key: str) -> dict[str, Any]:
        """Load ``model_key`` (``"name:version"``) into this replica; what was loaded."""
        served = await self._model(model_key)
        return {
            "model_id": model_key,
            "device": served.device,
            "task": served.task,
            "replica": _replica(),
        }

    async def stats(self) -> dict[str, Any]:
        """The replica's device, batch settings and prediction-log counters."""
        return {
            "replica": _replica(),
            "device": self.device,
            "max_batch_size": self._batcher._get_max_batch_size(),
            "batch_wait_timeout_s": self._batcher._get_batch_wait_timeout_s(),
            "log": self._log.stats() if self._log is not None else None,
        }

    async def flush_log(self) -> int:
        """Write the buffered prediction log now; the rows written."""
        return await self._log.flush() if self._log is not None else 0

    async def __del__(self) -> None:
        # Serve awaits an async __del__ on graceful shutdown: write what is buffered.
        if self._log is not None:
            await self._log.stop()

    # ---- internals ---------------------------------------------------------------------

    async def _request(self, features: pa.Table, request_id: str | None) -> _Request:
        key = serve.get_multiplexed_model_id()
        if not key:
            raise InvalidInputError(
                field="multiplexed_model_id",
                value=key,
                allowed="name:version, set with handle.options(multiplexed_model_id=...)",
            )
        if not isinstance(features, pa.Table):
            raise InvalidInputError(
                field="features",
                value=type(features).__name__,
                allowed="a pyarrow.Table of the signature's inputs (signature.parse_json_body)",
            )
        if self._log is not None:
            await self._log.start()  # inside the replica's event loop; once
        return _Request(key, features, request_id or new_request_id(), time.perf_counter())

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_batch(self, requests: list[_Request]) -> list[Outputs | Exception]:
        results: list[Outputs | Exception] = [Exception("unanswered")] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.model_id, []).append(i)
        for key, indexes in groups.items():
            group = [requests[i] for i in indexes]
            try:
                parts = await self._forward(key, group)
            except Exception as exc:
                name, version = parse_model_id(key)
                for _ in group:
                    self.metrics.failed(name, version, _code(exc))
                parts = [exc] * len(group)
            for i, part in zip(indexes, parts, strict=True):
                results[i] = part
        return results

    async def _forward(self, key: str, group: list[_Request]) -> list[Outputs | Exception]:
        """One forward pass over the group's rows; a request whose columns do not fit
        the signature fails alone."""
        served = await self._model(key)
        answers: list[Outputs | Exception] = []
        matrices: dict[int, np.ndarray] = {}
        for i, request in enumerate(group):
            try:
                matrices[i] = feature_matrix(request.features, served.signature)
            except DatapunkError as exc:
                self.metrics.failed(served.name, served.version, exc.code)
                answers.append(exc)
            else:
                answers.append({})
        if matrices:
            stacked = list(matrices.values())
            outputs = served.predict(stacked[0] if len(stacked) == 1 else np.concatenate(stacked))
            parts = split_outputs(outputs, [len(m) for m in stacked])
            for i, part in zip(matrices, parts, strict=True):
                answers[i] = part
            self._served(served, [group[i] for i in matrices], parts, len(matrices))
        return answers

    def _served(
        self, served: ServedModel, requests: list[_Request], parts: list[Outputs], batch: int
    ) -> None:
        """Metrics and the prediction log for answered requests; never waits."""
        now = time.perf_counter()
        latencies = [now - request.started for request in requests]
        self.metrics.batch(served.name, served.version, batch)
        for request, latency in zip(requests, latencies, strict=True):
            self.metrics.predicted(served.name, served.version, request.features.num_rows, latency)
        if self._log is None:
            return
        try:
            self._offer(self._log.buffer, served, requests, parts, latencies)
        except Exception:  # the log is a by-product: it must never fail a prediction
            logger.exception("cortex could not log predictions", extra={"model": served.name})
        self.metrics.dropped(self._log.buffer.dropped_rows)

    def _offer(
        self,
        buffer: PredictionBuffer,
        served: ServedModel,
        requests: list[_Request],
        parts: list[Outputs],
        latencies: list[float],
    ) -> None:
        at = _utcnow()
        table = log_table_name(self.settings.cortex.log_namespace, served.name)
        for request, outputs, latency in zip(requests, parts, latencies, strict=True):
            rows = prediction_rows(
                request_id=request.request_id,
                model=served.name,
                version=served.version,
                latency_ms=latency * 1000.0,
                features=request.features,
                outputs=outputs,
                at=at,
            )
            buffer.offer(table, rows)  # never waits; a full buffer drops
