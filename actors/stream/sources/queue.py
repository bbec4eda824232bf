"""The embedded in-cluster queue: what a topology reads when no RabbitMQ is configured.

``MessageQueue`` is the plain logic (no Ray): a bounded FIFO of ready messages, the
deliveries handed out and not yet acked (by increasing tag), a bounded list of dead
letters, and a *generation* that ``recover`` bumps when it puts every unacked message
back at the front, in its original order, marked redelivered. It mirrors what a broker
does for one consumer, so the runner treats both alike.

``StreamQueueActor`` is its Ray shell, one detached actor per topology named
``stream-queue-<topology>``. It lives in memory only: if the actor process dies, Ray
restarts it (``max_restarts=-1``) *empty*, and every message it held is gone, acked or
not. Use RabbitMQ (``DATAPUNK_AMQP_URL``) where events must survive a node failure.

``QueueSource`` (the ``StreamSource``) and ``QueuePublisher`` talk to a
``QueueBackend``: ``LocalQueueBackend`` calls a ``MessageQueue`` in this process (unit
tests, a single process), ``RayQueueBackend`` the actor.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import ray

from actors.ingest.sources.messages import message_id_of
from actors.stream.ports import Delivery
from cluster.errors import DatapunkError, InvalidInputError, ServiceUnavailableError

DEFAULT_MAX_READY = 100_000
DEFAULT_MAX_DEAD = 10_000
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.02


class QueueFullError(ServiceUnavailableError):
    """The queue holds ``max_ready`` messages: this one was not accepted (HTTP 503)."""

    code = "queue_full"

    def __init__(self, *, queue: str, ready: int, max_ready: int) -> None:
        # ServiceUnavailableError's message says "unreachable"; this one is reachable.
        DatapunkError.__init__(
            self,
            f"stream queue {queue!r} is full ({ready} messages ready, the limit is "
            f"{max_ready}); the message was not accepted: retry later with backoff, or "
            "run the topology on RabbitMQ (DATAPUNK_AMQP_URL)",
            queue=queue,
            ready=ready,
            max_ready=max_ready,
        )


@dataclass(frozen=True)
class _Message:
    body: bytes
    content_type: str | None
    message_id: str
    redelivered: bool = False


class MessageQueue:
    """One consumer's queue with broker semantics; thread-safe (see the module doc)."""

    def __init__(
        self,
        name: str = "stream-queue",
        *,
        max_ready: int = DEFAULT_MAX_READY,
        max_dead: int = DEFAULT_MAX_DEAD,
    ) -> None:
        for field, value in (("max_ready", max_ready), ("max_dead", max_dead)):
            if value < 1:
                raise InvalidInputError(field=field, value=value, allowed="1 or more messages")
        self.name = name
        self.max_ready = max_ready
        self._ready: deque[_Message] = deque()
        self._unacked: dict[int, _Message] = {}  # insertion order == tag order
        self._dead: deque[Delivery] = deque(maxlen=max_dead)
        self._dead_dropped = 0
        self._next_tag = 1
        self._generation = 0
        self._lock = threading.Lock()

    def put(self, body: bytes, content_type: str | None, message_id: str | None = None) -> None:
        """Accept one message, or raise ``QueueFullError`` (then nothing was accepted)."""
        with self._lock:
            if len(self._ready) >= self.max_ready:
                raise QueueFullError(
                    queue=self.name, ready=len(self._ready), max_ready=self.max_ready
                )
            self._ready.append(_Message(body, content_type, message_id_of(message_id, body)))

    def get(self, max_messages: int) -> list[Delivery]:
        """Hand out up to ``max_messages`` ready messages, oldest first, unacked."""
        with self._lock:
            out: list[Delivery] = []
            while self._ready and len(out) < max_messages:
                message = self._ready.popleft()
                tag, self._next_tag = self._next_tag, self._next_tag + 1
                self._unacked[tag] = message
                out.append(self._delivery(message, tag))
            return out

    def ack(self, upto_tag: int, generation: int) -> bool:
        """Ack every unacked delivery with a tag up to ``upto_tag``; False if stale."""
        with self._lock:
            if generation != self._generation:
                return False
            for tag in [tag for tag in self._unacked if tag <= upto_tag]:
                del self._unacked[tag]
            return True

    def dead_letter(self, tags: list[int], generation: int) -> int:
        """Move these unacked deliveries to the dead letters; how many moved (0 if stale).

        The dead list keeps the newest ``max_dead``; older ones are dropped (counted).
        """
        with self._lock:
            if generation != self._generation:
                return 0
            moved = 0
            for tag in tags:
                message = self._unacked.pop(tag, None)
                if message is None:
                    continue
                if len(self._dead) == self._dead.maxlen:
                    self._dead_dropped += 1
                self._dead.append(self._delivery(message, tag))
                moved += 1
            return moved

    def recover(self) -> int:
        """Put every unacked message back in front, in order, redelivered; new generation."""
        with self._lock:
            back = [replace(m, redelivered=True) for m in self._unacked.values()]
            self._unacked.clear()
            self._ready.extendleft(reversed(back))
            self._generation += 1
            return self._generation

    def dead_letters(self, limit: int = 100) -> list[Delivery]:
        """The newest ``limit`` dead letters, oldest first."""
        with self._lock:
            return list(self._dead)[-limit:] if limit > 0 else []

    def stats(self) -> dict[str, int]:
        """Counts: ready, unacked, dead (and dropped dead), generation, max_ready."""
        with self._lock:
            return {
                "ready": len(self._ready),
                "unacked": len(self._unacked),
                "dead": len(self._dead),
                "dead_dropped": self._dead_dropped,
                "generation": self._generation,
                "max_ready": self.max_ready,
            }

    def _delivery(self, message: _Message, tag: int) -> Delivery:
        return Delivery(
            message_id=message.message_id,
            body=message.body,
            content_type=message.content_type,
            tag=tag,
            generation=self._generation,
            redelivered=message.redelivered,
        )


# --- Ray shell -----------------------------------------------------------------------


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class StreamQueueActor:
    """Ray shell of one topology's ``MessageQueue`` (in memory: see the module doc)."""

    def __init__(self, name: str, max_ready: int, max_dead: int) -> None:
        self.queue = MessageQueue(name, max_ready=max_ready, max_dead=max_dead)

    def put(self, body: bytes, content_type: str | None, message_id: str | None) -> None:
        self.queue.put(body, content_type, message_id)

    def get(self, max_messages: int) -> list[Delivery]:
        return self.queue.get(max_messages)

    def ack(self, upto_tag: int, generation: int) -> bool:
        return self.queue.ack(upto_tag, generation)

    def dead_letter(self, tags: list[int], generation: int) -> int:
        return self.queue.dead_letter(tags, generation)

    def recover(self) -> int:
        return self.queue.recover()

    def dead_letters(self, limit: int) -> list[Delivery]:
        return self.queue.dead_letters(limit)

    def stats(self) -> dict[str, int]:
        return self.queue.stats()


def queue_actor_name(topology: str) -> str:
    """The Ray actor name of a topology's embedded queue."""
    return f"stream-queue-{topology}"


def get_or_create_queue_actor(
    topology: str,
    namespace: str | None = None,
    *,
    max_ready: int = DEFAULT_MAX_READY,
    max_dead: int = DEFAULT_MAX_DEAD,
) -> Any:
    """The topology's queue actor, created detached if missing (limits apply then)."""
    name = queue_actor_name(topology)
    return StreamQueueActor.options(  # type: ignore[attr-defined]
        name=name, namespace=namespace, lifetime="detached", get_if_exists=True
    ).remote(name, max_ready, max_dead)


def ray_queue_backend(topology: str, namespace: str | None = None) -> RayQueueBackend:
    """The backend over the topology's queue actor (created if missing)."""
    return RayQueueBackend(get_or_create_queue_actor(topology, namespace))


# --- backends ------------------------------------------------------------------------


class QueueBackend(Protocol):
    """What ``QueueSource`` and ``QueuePublisher`` call: a ``MessageQueue``, awaited."""

    async def put(self, body: bytes, content_type: str | None, message_id: str | None) -> None:
        """Accept one message or raise ``QueueFullError``."""
        ...

    async def get(self, max_messages: int) -> list[Delivery]:
        """Hand out up to ``max_messages`` ready messages."""
        ...

    async def ack(self, upto_tag: int, generation: int) -> bool:
        """Ack up to ``upto_tag``; False if ``generation`` is stale."""
        ...

    async def dead_letter(self, tags: list[int], generation: int) -> int:
        """Move deliveries to the dead letters."""
        ...

    async def recover(self) -> int:
        """Requeue every unacked delivery; the new generation."""
        ...

    async def stats(self) -> dict[str, int]:
        """The queue's counts."""
        ...


class LocalQueueBackend:
    """A ``MessageQueue`` in this process behind the async backend methods."""

    def __init__(self, queue: MessageQueue) -> None:
        self.queue = queue

    async def put(self, body: bytes, content_type: str | None, message_id: str | None) -> None:
        self.queue.put(body, content_type, message_id)

    async def get(self, max_messages: int) -> list[Delivery]:
        return self.queue.get(max_messages)

    async def ack(self, upto_tag: int, generation: int) -> bool:
        return self.queue.ack(upto_tag, generation)

    async def dead_letter(self, tags: list[int], generation: int) -> int:
        return self.queue.dead_letter(tags, generation)

    async def recover(self) -> int:
        return self.queue.recover()

    async def stats(self) -> dict[str, int]:
        return self.queue.stats()


class RayQueueBackend:
    """A ``StreamQueueActor`` handle behind the async backend methods."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    async def put(self, body: bytes, content_type: str | None, message_id: str | None) -> None:
        await self.handle.put.remote(body, content_type, message_id)

    async def get(self, max_messages: int) -> list[Delivery]:
        return list(await self.handle.get.remote(max_messages))

    async def ack(self, upto_tag: int, generation: int) -> bool:
        return bool(await self.handle.ack.remote(upto_tag, generation))

    async def dead_letter(self, tags: list[int], generation: int) -> int:
        return int(await self.handle.dead_letter.remote(tags, generation))

    async def recover(self) -> int:
        return int(await self.handle.recover.remote())

    async def stats(self) -> dict[str, int]:
        return dict(await self.handle.stats.remote())


# --- clients -------------------------------------------------------------------------


class QueueSource:
    """The ``StreamSource`` over an embedded queue backend."""

    kind = "queue"

    def __init__(self, backend: QueueBackend) -> None:
        self.backend = backend
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def finished(self) -> bool:
        """Never: a queue has no end."""
        return False

    async def open(self, position: dict[str, Any] | None = None) -> None:
        """Requeue what an earlier consumer left unacked (``position`` is ignored)."""
        self._generation = await self.backend.recover()

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages``; polls (5-20 ms apart) for at most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        pause = _POLL_FIRST_S
        while True:
            deliveries = await self.backend.get(max_messages)
            if deliveries:
                # Someone else recovered the queue: what we hold is void from now on.
                self._generation = max(self._generation, deliveries[0].generation)
                return deliveries
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await asyncio.sleep(min(pause, remaining))
            pause = min(pause * 2, _POLL_MAX_S)

    def position(self, upto: Delivery | None) -> dict[str, Any] | None:
        """None: the queue keeps the position."""
        return None

    async def ack(self, upto: Delivery) -> bool:
        """Ack every delivery up to ``upto``; False if its generation is gone."""
        return await self.backend.ack(upto.tag, upto.generation)

    async def dead_letter(self, deliveries: list[Delivery]) -> None:
        """Move these deliveries to the queue's dead letters (per generation)."""
        by_generation: dict[int, list[int]] = {}
        for delivery in deliveries:
            by_generation.setdefault(delivery.generation, []).append(delivery.tag)
        for generation, tags in by_generation.items():
            await self.backend.dead_letter(tags, generation)

    async def requeue_unacked(self) -> None:
        """Give every unacked delivery back to the queue (new generation)."""
        self._generation = await self.backend.recover()

    async def close(self) -> None:
        """Give unacked deliveries back, as a broker does when its consumer leaves."""
        self._generation = await self.backend.recover()


class QueuePublisher:
    """Publishes to embedded queues; ``backend_for`` maps a queue name to its backend."""

    def __init__(self, backend_for: Callable[[str], QueueBackend]) -> None:
        self._backend_for = backend_for
        self._backends: dict[str, QueueBackend] = {}

    @classmethod
    def single(cls, backend: QueueBackend) -> QueuePublisher:
        """A publisher whose every queue name goes to ``backend``."""
        return cls(lambda _queue: backend)

    async def publish_events(
        self, queue: str, body: bytes, *, content_type: str, message_id: str
    ) -> None:
        """Put one message of events on ``queue``; ``QueueFullError`` when it is full."""
        backend = self._backends.get(queue)
        if backend is None:
            backend = self._backends[queue] = self._backend_for(queue)
        await backend.put(body, content_type, message_id)

    async def close(self) -> None:
        """Forget the backends (the queues themselves live on)."""
        self._backends.clear()
