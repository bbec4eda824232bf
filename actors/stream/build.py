"""Wires a topology to its adapters: the source and sinks the settings choose.

The one place that decides RabbitMQ or the in-cluster queue (``amqp_url`` set or not),
Redis or the in-process cache (``redis_url``), so the runner never knows which.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import pyarrow as pa

from actors.lake.service import LakeService
from actors.stream.ports import Sink, StreamSource
from actors.stream.sinks import CacheLatestSink, LakeSink, _encode
from actors.stream.topology import (
    AlertSinkSpec,
    CacheSinkSpec,
    LakeReplaySource,
    LakeSinkSpec,
    QueueSource,
    Topology,
)
from cluster.cache import Cache
from cluster.settings import Settings


class EventPublisher(Protocol):
    async def publish_events(
        self, queue: str, body: bytes, *, content_type: str, message_id: str
    ) -> None: ...

    async def close(self) -> None: ...


def alerts_queue(exchange: str) -> str:
    """Without RabbitMQ, alerts for ``exchange`` wait in this in-cluster queue."""
    return f"alerts.{exchange}"


class AlertSink:
    """Each row as one JSON alert, id ``<topology>:<output>:<epoch>:<row>`` (dedupe key)."""

    def __init__(self, settings: Settings, spec: AlertSinkSpec, topology: str) -> None:
        self.name = spec.from_
        self._settings = settings
        self._exchange = spec.exchange
        self._topology = topology
        self._publisher: Any = None

    async def open(self) -> None:
        url = self._settings.secret("amqp_url")
        if url is not None:
            from actors.stream.sources.rabbitmq import RabbitPublisher

            self._publisher = RabbitPublisher(url)
        else:
            self._publisher = queue_publisher(self._settings)

    async def write(self, epoch: int, rows: pa.Table) -> None:
        routing_key = f"{self._topology}.{self.name}"
        for index, row in enumerate(rows.to_pylist()):
            body = _encode({"topology": self._topology, "output": self.name, **row})
            message_id = f"{self._topology}:{self.name}:{epoch}:{index}"
            if hasattr(self._publisher, "publish_alert"):
                await self._publisher.publish_alert(self._exchange, routing_key, body, message_id)
            else:
                await self._publisher.publish_events(
                    alerts_queue(self._exchange),
                    body,
                    content_type="application/json",
                    message_id=message_id,
                )

    async def close(self) -> None:
        if self._publisher is not None:
            await self._publisher.close()


def queue_publisher(settings: Settings) -> EventPublisher:
    """Publishes to in-cluster queue actors (one per queue name)."""
    from actors.stream.sources.queue import QueuePublisher, ray_queue_backend

    namespace = settings.ray.namespace
    return QueuePublisher(lambda queue: ray_queue_backend(queue, namespace))


def event_publisher(settings: Settings) -> EventPublisher:
    """What the gateway publishes pushed events with: RabbitMQ, else the in-cluster queue."""
    url = settings.secret("amqp_url")
    if url is None:
        return queue_publisher(settings)
    from actors.stream.sources.rabbitmq import RabbitPublisher

    return RabbitPublisher(url)


def build_source(topology: Topology, settings: Settings, lake: LakeService) -> StreamSource:
    source = topology.source
    if isinstance(source, LakeReplaySource):
        from actors.stream.sources.lake_replay import LakeReplaySource as Replay

        return Replay(
            lake,
            source.table,
            time_column=topology.time_column,
            batch_rows=source.batch_rows,
            snapshot_id=source.snapshot_id,
        )
    assert isinstance(source, QueueSource)
    url = settings.secret("amqp_url")
    if url is not None:
        from actors.stream.sources.rabbitmq import RabbitStreamSource

        return RabbitStreamSource(url, topology.queue_name, prefetch=source.prefetch)
    from actors.stream.sources.queue import QueueSource as Embedded
    from actors.stream.sources.queue import ray_queue_backend

    return Embedded(ray_queue_backend(topology.queue_name, settings.ray.namespace))


def build_sinks(
    topology: Topology, settings: Settings, *, lake: LakeService, cache: Cache
) -> dict[str, list[Sink]]:
    """Every output's sinks; ``late`` and ``dead_letters`` always land in Lake tables."""
    name = topology.name
    sinks: dict[str, list[Sink]] = {
        "late": [LakeSink(lake, topology.late_table_name, topology=name, name="late")],
        "dead_letters": [
            LakeSink(lake, topology.dead_letter_table_name, topology=name, name="dead_letters")
        ],
    }
    for index, spec in enumerate(topology.sinks):
        sink: Sink
        if isinstance(spec, LakeSinkSpec):
            sink = LakeSink(lake, spec.table, topology=name, name=f"{spec.from_}_{index}")
        elif isinstance(spec, CacheSinkSpec):
            sink = CacheLatestSink(
                cache, topology=name, name=spec.from_, key_columns=topology.key_by
            )
        elif isinstance(spec, AlertSinkSpec):
            sink = AlertSink(settings, spec, name)
        else:
            continue  # subscribe: every committed output reaches the hub anyway
        sinks.setdefault(spec.from_, []).append(sink)
    return sinks


def describe_sinks(sinks: dict[str, list[Sink]]) -> str:
    return json.dumps({name: [type(s).__name__ for s in group] for name, group in sinks.items()})
