"""RabbitMQ behind the ``StreamSource`` port, and a publisher for the same queues.

Each topology reads one durable quorum queue ``<queue>``; a delivery nacked without
requeue goes to the fanout exchange ``<queue>.dlx`` and lands in ``<queue>.dead``.
``declare_queues`` declares the three with fixed arguments, and both the source and
the publisher call it, so whichever comes first creates them and neither meets a
``PRECONDITION_FAILED`` from the other.

Generations: deliveries belong to the AMQP channel that received them. The source
numbers each channel it consumes on, and also bumps the number on
``requeue_unacked``. A delivery is stamped with the generation current when it
arrived, and one of an older generation is never handed out nor acked: the broker
has requeued it (or will, when the channel closes) and delivers it again. The robust
connection reconnects by itself; the first delivery on a new channel (or the
channel's reopen callback, whichever comes first) starts the new generation, and a
channel closing ends the old one at once, so an ack racing a reconnect returns False.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aio_pika
import aiormq.abc
import aiormq.exceptions
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from actors.ingest.sources.messages import message_id_of
from actors.stream.ports import Delivery
from cluster.errors import InvalidInputError, PlatformStateError, ServiceUnavailableError
from cluster.net_reasons import describe_network_error, first_line
from cluster.settings import redact_url

logger = logging.getLogger(__name__)

BROKER_ERRORS = (
    aiormq.exceptions.AMQPError,
    aio_pika.exceptions.AMQPException,
    aiormq.exceptions.ChannelInvalidStateError,
    OSError,
)
_MAX_PREFETCH = 65_535  # basic.qos prefetch-count is a 16-bit field


def queue_arguments(queue: str) -> dict[str, Any]:
    """The arguments every declaration of ``queue`` uses (they must never differ)."""
    return {"x-queue-type": "quorum", "x-dead-letter-exchange": f"{queue}.dlx"}


async def declare_queues(channel: AbstractChannel, queue: str) -> AbstractQueue:
    """Declare (idempotently) ``queue``, its ``.dlx`` exchange and ``.dead`` queue."""
    try:
        dlx = await channel.declare_exchange(
            f"{queue}.dlx", aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead = await channel.declare_queue(
            f"{queue}.dead", durable=True, arguments={"x-queue-type": "quorum"}
        )
        await dead.bind(dlx)
        return await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise PlatformStateError(
            f"RabbitMQ queue {queue!r} (or {queue}.dlx / {queue}.dead) exists with other "
            f"arguments than {queue_arguments(queue)} ({first_line(exc)}); delete it "
            "(datapunk stream queues are quorum queues with a dead-letter exchange) or "
            "choose another queue name",
            queue=queue,
        ) from None


async def delete_queues(url: str, queue: str) -> None:
    """Delete ``queue``, ``<queue>.dead`` and ``<queue>.dlx``; missing ones are fine."""
    connection = await _connect(url, 10.0, robust=False)
    try:
        for name in (queue, f"{queue}.dead"):
            channel = await connection.channel()
            with contextlib.suppress(*BROKER_ERRORS):
                await channel.queue_delete(name)
        channel = await connection.channel()
        with contextlib.suppress(*BROKER_ERRORS):
            await channel.exchange_delete(f"{queue}.dlx")
    finally:
        await connection.close()


class RabbitStreamSource:
    """A topology's queue on RabbitMQ: manual acks, prefetch, generations (module doc)."""

    kind = "rabbitmq"

    def __init__(
        self, url: str, queue: str, *, prefetch: int = 1_000, connect_timeout_s: float = 10.0
    ) -> None:
        if not 1 <= prefetch <= _MAX_PREFETCH:
            raise InvalidInputError(
                field="prefetch", value=prefetch, allowed=f"1 to {_MAX_PREFETCH} deliveries"
            )
        if connect_timeout_s <= 0:
            raise InvalidInputError(
                field="connect_timeout_s", value=connect_timeout_s, allowed="more than 0 seconds"
            )
        self.url = url
        self.queue = queue
        self.prefetch = prefetch
        self.connect_timeout_s = connect_timeout_s
        self._generation = 0
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._underlay: aiormq.abc.AbstractChannel | None = None
        self._held: dict[int, AbstractIncomingMessage] = {}  # this generation's, by tag
        self._inbox: asyncio.Queue[Delivery] = asyncio.Queue()

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def finished(self) -> bool:
        """Never: a queue has no end."""
        return False

    # --- connect ---------------------------------------------------------------------

    async def open(self, position: dict[str, Any] | None = None) -> None:
        """Connect, declare the queues, set the prefetch and start consuming.

        ``position`` is ignored: the broker remembers what was acked.
        """
        if self._connection is not None:
            return
        connection = await _connect(self.url, self.connect_timeout_s, robust=True)
        self._connection = connection
        try:
            channel = await connection.channel()
            self._channel = channel
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await declare_queues(channel, self.queue)
            channel.close_callbacks.add(self._on_channel_close)
            channel.reopen_callbacks.add(self._on_reopen)
            connection.reconnect_callbacks.add(self._on_reopen)
            self._adopt(await channel.get_underlay_channel())
            await queue.consume(self._on_message, no_ack=False)
        except BROKER_ERRORS as exc:
            await self.close()
            raise _unavailable(self.url, exc) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close the connection; the broker requeues every unacked delivery."""
        connection, self._connection, self._channel = self._connection, None, None
        self._end_generation()
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

    # --- generations -----------------------------------------------------------------

    def _end_generation(self) -> None:
        self._generation += 1
        self._underlay = None
        self._held.clear()

    def _adopt(self, underlay: aiormq.abc.AbstractChannel) -> None:
        """Start a new generation if ``underlay`` is not the channel of the current one."""
        if underlay is not self._underlay:
            self._end_generation()
            self._underlay = underlay

    def _on_channel_close(self, _sender: object, _exc: BaseException | None) -> None:
        if self._underlay is not None:
            logger.info("RabbitMQ channel of queue %s closed; unacked deliveries void", self.queue)
            self._end_generation()

    async def _on_reopen(self, _sender: object) -> None:
        channel = self._channel
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*BROKER_ERRORS):
                self._adopt(await channel.get_underlay_channel())

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            underlay = message.channel
        except aiormq.exceptions.ChannelInvalidStateError:
            return  # its channel is closed: the broker requeued it already
        self._adopt(underlay)
        tag = message.delivery_tag
        if tag is None:  # pragma: no cover - manual-ack deliveries always carry a tag
            return
        body = bytes(message.body)
        self._held[tag] = message
        self._inbox.put_nowait(
            Delivery(
                message_id=message_id_of(message.message_id, body),
                body=body,
                content_type=message.content_type,
                tag=tag,
                generation=self._generation,
                redelivered=bool(message.redelivered),
            )
        )

    # --- deliveries ------------------------------------------------------------------

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` current deliveries: waits ``timeout_s`` for the first,
        then takes only what already arrived."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout_s)
        out: list[Delivery] = []
        while len(out) < max_messages:
            try:
                delivery = self._inbox.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if out or remaining <= 0:
                    break
                try:
                    delivery = await asyncio.wait_for(self._inbox.get(), remaining)
                except TimeoutError:
                    break
            if delivery.generation == self._generation:
                out.append(delivery)
        return out

    def position(self, upto: Delivery | None) -> dict[str, Any] | None:
        """None: the broker keeps the position."""
        return None

    async def ack(self, upto: Delivery) -> bool:
        """Ack every held delivery up to ``upto.tag``; False if its generation is gone."""
        if upto.generation != self._generation:
            return False
        tags = [tag for tag in self._held if tag <= upto.tag]
        if not tags:
            return True  # settled already (acked, or dead-lettered by the runner)
        # The newest *held* tag, not upto.tag: upto itself may have been dead-lettered,
        # and a multiple ack naming an unknown tag closes the channel.
        message = self._held[max(tags)]
        try:
            await message.ack(multiple=True)
        except BROKER_ERRORS as exc:
            logger.warning("ack on queue %s failed (%s)", self.queue, first_line(exc))
            self._end_generation()
            return False
        for tag in tags:
            del self._held[tag]
        return True

    async def dead_letter(self, deliveries: list[Delivery]) -> None:
        """Nack each without requeue: RabbitMQ routes them to ``<queue>.dlx``.

        Deliveries of an older generation are skipped: the broker redelivers them.
        """
        for delivery in deliveries:
            if delivery.generation != self._generation:
                continue
            message = self._held.pop(delivery.tag, None)
            if message is None:
                continue
            try:
                await message.nack(requeue=False)
            except BROKER_ERRORS as exc:
                logger.warning("dead-letter on queue %s failed (%s)", self.queue, first_line(exc))
                self._end_generation()
                return

    async def requeue_unacked(self) -> None:
        """Give back every delivery received so far (one multiple nack with requeue)."""
        newest = self._held[max(self._held)] if self._held else None
        # Bump before the nack is sent: whatever arrives from now on has a higher tag
        # than ``newest``, is not requeued by it, and so belongs to the new generation.
        self._generation += 1
        self._held.clear()
        if newest is not None:
            try:
                await newest.nack(multiple=True, requeue=True)
            except BROKER_ERRORS as exc:  # a closed channel requeues them anyway
                logger.warning("requeue on queue %s failed (%s)", self.queue, first_line(exc))
                self._end_generation()


class RabbitPublisher:
    """Publishes to stream queues and alert exchanges over one robust connection.

    Publisher confirms are on: ``publish_events`` returns once the broker has the
    message (persistent, on a quorum queue). Queues are declared on first use with the
    same arguments the source uses, so publishing before any consumer exists works.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        self.url = url
        self.connect_timeout_s = connect_timeout_s
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._declared: set[str] = set()
        self._lock = asyncio.Lock()

    async def publish_events(
        self, queue: str, body: bytes, *, content_type: str, message_id: str
    ) -> None:
        """Publish one message of events to ``queue`` (default exchange, persistent)."""
        channel = await self._ready_channel()
        message = _message(body, content_type, message_id)
        try:
            if queue not in self._declared:
                await declare_queues(channel, queue)
                self._declared.add(queue)
            try:
                await channel.default_exchange.publish(message, routing_key=queue)
            except aio_pika.exceptions.DeliveryError:
                # Returned unroutable (the queue was deleted since we declared it) or
                # nacked: declare again and publish once more, so nothing is dropped.
                await declare_queues(channel, queue)
                await channel.default_exchange.publish(message, routing_key=queue)
        except BROKER_ERRORS as exc:
            raise _unavailable(self.url, exc) from None

    async def publish_alert(
        self, exchange: str, routing_key: str, body: bytes, message_id: str
    ) -> None:
        """Publish one alert (JSON) to the durable topic exchange ``exchange``."""
        channel = await self._ready_channel()
        try:
            target = await channel.declare_exchange(
                exchange, aio_pika.ExchangeType.TOPIC, durable=True
            )
            await target.publish(
                _message(body, "application/json", message_id), routing_key=routing_key
            )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise PlatformStateError(
                f"RabbitMQ exchange {exchange!r} exists but is not a durable topic exchange "
                f"({first_line(exc)}); delete it or configure another alert exchange",
                exchange=exchange,
            ) from None
        except BROKER_ERRORS as exc:
            raise _unavailable(self.url, exc) from None

    async def close(self) -> None:
        """Close the connection (a later publish connects again)."""
        async with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            self._declared.clear()
        if connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                await connection.close()

    async def _ready_channel(self) -> AbstractChannel:
        async with self._lock:
            if self._channel is None or self._channel.is_closed:
                if self._connection is None:
                    self._connection = await _connect(self.url, self.connect_timeout_s, robust=True)
                try:
                    self._channel = await self._connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                except BROKER_ERRORS as exc:
                    raise _unavailable(self.url, exc) from None
            return self._channel


def _message(body: bytes, content_type: str, message_id: str) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type=content_type,
        message_id=message_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


async def _connect(url: str, timeout_s: float, *, robust: bool) -> Any:
    connect = aio_pika.connect_robust if robust else aio_pika.connect
    try:
        return await asyncio.wait_for(connect(url, timeout=timeout_s), timeout_s + 1)
    except (*BROKER_ERRORS, TimeoutError) as exc:
        raise _unavailable(url, exc) from None


def _unavailable(url: str, exc: BaseException) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        service="RabbitMQ",
        target=redact_url(url),
        reason=describe_network_error(exc) or first_line(exc),
        fix="check that RabbitMQ runs there and the url (user, password, vhost)",
    )
