"""Ray shell of a running topology: the coordinator actor ``stream-<topology>``.

It owns the source connection and the epoch loop (``TopologyRunner``) on a thread of
its own, and answers status, tail and stop calls meanwhile. It is detached with
``max_restarts=-1``: after a ``kill -9`` Ray starts it again, ``__init__`` starts the
loop, and the runner recovers from the newest checkpoint by itself. Any other failure
inside the loop (a sink that is down, a partition that died twice) closes the source,
so the broker takes back what was unacked, and starts a fresh runner after a backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import ray

from actors.stream.hub import OutputHub
from actors.stream.topology import Topology
from cluster.settings import settings_from_export

log = logging.getLogger(__name__)
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def coordinator_name(topology: str) -> str:
    return f"stream-{topology}"


@ray.remote(  # type: ignore[call-overload]
    max_restarts=-1,
    max_task_retries=0,
    max_concurrency=8,
    # Long-polling readers (tail, WebSocket subscribers) get their own threads, so a crowd
    # of them never starves status and stop calls.
    concurrency_groups={"readers": 128},
)
class StreamCoordinator:
    """Runs one topology until stopped; see the module doc."""

    def __init__(self, topology: dict[str, Any], settings: dict[str, Any]) -> None:
        from actors.shell import settle_heap

        self.topology = Topology.model_validate(topology)
        self.settings = settings_from_export(settings)
        self.hub = OutputHub()
        self.state = "starting"
        self.error: str | None = None
        self.restarts = 0
        self._status: dict[str, Any] = {}
        self._engine: Any = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="stream-loop", daemon=True)
        self._thread.start()
        settle_heap()

    # -- calls ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.topology.name,
            "state": self.state,
            "error": self.error,
            "restarts": self.restarts,
            "partitions": self.topology.partitions,
            "pid": os.getpid(),
            **self._status,
        }

    @ray.method(concurrency_group="readers")
    def tail(
        self, after: int = 0, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]:
        return self.hub.read(after, outputs, min(timeout_s, 30.0))

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Commit the open epoch, release the source and end the loop."""
        self._stopping.set()
        self._thread.join(timeout_s)
        if self.state not in ("finished", "failed"):
            self.state = "stopped"
        return self.status()

    def ping(self) -> bool:
        return True

    # -- the loop ---------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        from actors.stream.metrics import StreamMetrics

        metrics = StreamMetrics(self.topology.name)
        failures = 0
        while not self._stopping.is_set():
            runner = None
            try:
                runner = await self._build()
                await runner.start()
                self._report(runner, metrics)
                self.state, self.error = "running", None
                while not self._stopping.is_set() and await runner.step():
                    self._report(runner, metrics)
                    failures = 0
                self._report(runner, metrics)
                await runner.close()
                self.state = "finished" if runner.finished else "stopped"
                return
            except Exception as exc:  # every failure restarts the runner; none is fatal
                failures += 1
                self.restarts += 1
                self.state, self.error = "recovering", f"{type(exc).__name__}: {exc}"
                log.exception("stream %s failed; restarting its runner", self.topology.name)
                await _close_quietly(runner)
                await asyncio.sleep(_BACKOFF_S[min(failures, len(_BACKOFF_S)) - 1])

    def _report(self, runner: Any, metrics: Any) -> None:
        self._status = runner.describe()
        self._status["updated_at"] = time.time()
        try:
            metrics.export(self._status)
        except Exception:  # metrics must never stop the stream
            log.debug("stream metrics export failed", exc_info=True)

    async def _build(self) -> Any:
        from actors.lake.service import LakeService
        from actors.stream.build import build_sinks, build_source
        from actors.stream.partition_actor import RayPartitions, partition_actors
        from actors.stream.runner import TopologyRunner
        from cluster.cache import build_cache
        from cluster.db.engine import create_engine
        from cluster.db.stream_store import SqlCheckpointStore

        lake = LakeService.from_settings(self.settings)
        handles = partition_actors(self.topology, self.settings.ray.namespace)
        partitions = RayPartitions(handles, self.topology.max_in_flight)
        if self._engine is None:
            self._engine = create_engine(self.settings)
        checkpoints = SqlCheckpointStore.from_engine(self._engine)
        return TopologyRunner(
            self.topology,
            build_source(self.topology, self.settings, lake),
            partitions,
            checkpoints,
            build_sinks(self.topology, self.settings, lake=lake, cache=build_cache(self.settings)),
            on_commit=self.hub.publish,
        )


async def _close_quietly(runner: Any) -> None:
    if runner is None:
        return
    try:
        await runner.source.close()
    except Exception:
        log.debug("closing the source after a failure failed", exc_info=True)
