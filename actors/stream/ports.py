"""The ports a running topology talks through: its source, its sinks, its checkpoints.

The topology runner (``actors/stream/runner.py``) is written against these protocols
only, so the same runner drives RabbitMQ or the in-cluster queue, the SQL checkpoint
store or the in-memory one, and is tested without Ray or a broker.

Delivery protocol (what makes "no acknowledged event lost, no result duplicated"):

* ``fetch`` hands out deliveries; none is acknowledged yet.
* A *generation* numbers the source's connection. When the connection is replaced
  (broker restart, ``requeue_unacked``), the broker will redeliver every unacked
  delivery of the old generation, so the runner rolls its uncommitted epoch back.
* After an epoch's checkpoint is saved (the commit point) and its sinks are written,
  ``dead_letter`` routes that epoch's poison deliveries to the dead-letter exchange and
  ``ack`` acknowledges every delivery up to and including the last one. ``ack`` of a
  delivery from an older generation returns ``False``: the broker redelivers it, and
  the runner skips it by message id (the checkpoint keeps recent ids).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True)
class Delivery:
    """One message handed out by a source and not yet acknowledged.

    ``message_id``: the publisher's id, else ``sha256:<body digest>``. ``tag``: the
    position within its generation (broker delivery tag, or a row offset for a Lake
    replay). ``content_type``: ``application/json`` (one object or an array of objects)
    or ``application/vnd.apache.arrow.stream`` (a batch).
    """

    message_id: str
    body: bytes
    content_type: str | None
    tag: int
    generation: int
    redelivered: bool = False


class StreamSource(Protocol):
    """Where a topology's events come from (RabbitMQ, in-cluster queue, Lake replay)."""

    kind: str

    @property
    def generation(self) -> int:
        """Bumped whenever unacked deliveries went back to the queue."""
        ...

    @property
    def finished(self) -> bool:
        """True once a bounded source (a Lake replay) has handed out everything."""
        ...

    async def open(self, position: dict[str, Any] | None) -> None:
        """Connect (declaring queues as needed) and resume from a checkpointed position."""
        ...

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` deliveries; fewer (maybe none) after ``timeout_s``."""
        ...

    def position(self, upto: Delivery | None) -> dict[str, Any] | None:
        """The resume position once ``upto`` is committed (None for brokers)."""
        ...

    async def dead_letter(self, deliveries: list[Delivery]) -> None:
        """Route poison deliveries to the dead-letter exchange (never redelivered)."""
        ...

    async def ack(self, upto: Delivery) -> bool:
        """Acknowledge every delivery up to ``upto``; False if its generation is gone."""
        ...

    async def requeue_unacked(self) -> None:
        """Give every unacked delivery back to the queue (bumps the generation)."""
        ...

    async def close(self) -> None:
        """Release the connection; unacked deliveries go back to the queue."""
        ...


class CheckpointStore(Protocol):
    """Durable checkpoints of a topology, newest wins; saving one is the commit point."""

    async def save(self, topology: str, epoch: int, payload: bytes) -> None:
        """Store epoch ``epoch`` atomically; saving the same epoch again replaces it."""
        ...

    async def latest(self, topology: str) -> tuple[int, bytes] | None:
        """The newest saved ``(epoch, payload)``, or None."""
        ...

    async def prune(self, topology: str, keep: int) -> int:
        """Delete all but the newest ``keep`` checkpoints; returns how many went."""
        ...

    async def drop(self, topology: str) -> int:
        """Delete every checkpoint of the topology (a fresh deploy); returns how many."""
        ...


class Sink(Protocol):
    """One destination of one operator's output; writes are idempotent per epoch."""

    name: str

    async def open(self) -> None:
        """Prepare (create the table, connect) before the first write."""
        ...

    async def write(self, epoch: int, rows: pa.Table) -> None:
        """Write the epoch's rows; writing an epoch already written changes nothing."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class InMemoryCheckpoints:
    """The embedded ``CheckpointStore``: a dict, for tests and a single process."""

    def __init__(self) -> None:
        self._data: dict[str, dict[int, bytes]] = {}

    async def save(self, topology: str, epoch: int, payload: bytes) -> None:
        self._data.setdefault(topology, {})[epoch] = bytes(payload)

    async def latest(self, topology: str) -> tuple[int, bytes] | None:
        saved = self._data.get(topology)
        if not saved:
            return None
        epoch = max(saved)
        return epoch, saved[epoch]

    async def prune(self, topology: str, keep: int) -> int:
        saved = self._data.get(topology, {})
        old = sorted(saved)[: max(0, len(saved) - keep)]
        for epoch in old:
            del saved[epoch]
        return len(old)

    async def drop(self, topology: str) -> int:
        return len(self._data.pop(topology, {}))
