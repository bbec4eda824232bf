"""A RabbitMQ queue drained to a bound, acknowledged only after the run is committed.

``plan`` fetches up to ``max_messages`` messages (``basic.get``, manual ack) or stops
when the queue stays empty for ``wait_s``; nothing is acked there. Messages whose id the
state view records as consumed (redelivered after a crash between the commit and the
ack) are kept apart as ``plan.redelivered``: not read, only acked. ``read`` decodes the
bodies the plan carries (no broker traffic). After the runner committed the snapshot and
``mark_consumed`` recorded the message ids, ``ack(plan)`` acks every delivery of the
plan; on failure ``nack(plan)`` requeues the unread ones. The channel stays open from
``plan`` to ``ack`` on this object's own loop thread: deliveries belong to it, so ack
must be called on the same object, in the same process. If the connection drops
before the ack, the broker redelivers and the next run skips what was consumed.

Caveats: ``basic.get`` costs a round trip per message (simple and exactly bounded; a
few thousand messages a second locally). The broker's delivery acknowledgement timeout
(``consumer_timeout``, 30 minutes by default) closes a channel that holds deliveries
longer; keep runs shorter or raise it. Dedupe holds for as long as the consumed-id store
keeps an id (``IngestState`` retention).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Literal

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage, AbstractQueue

from actors.ingest.sources.base import (
    InputRef,
    SourceBatch,
    SourceKind,
    SourcePlan,
    StateView,
    split_refs,
)
from actors.ingest.sources.errors import AckError
from actors.ingest.sources.loop_thread import LoopThread
from actors.ingest.sources.messages import decode_messages, message_id_of
from cluster.errors import InvalidInputError, NotFoundError, ServiceUnavailableError
from cluster.net_reasons import describe_network_error, first_line
from cluster.settings import redact_url

Undecodable = Literal["raise", "report"]
_BROKER_ERRORS = (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, OSError)


class RabbitMqSource:
    """Messages of one existing queue; see the module doc for the ack protocol."""

    kind: SourceKind = "rabbitmq"

    def __init__(
        self,
        url: str,
        queue: str,
        *,
        name: str = "rabbitmq",
        max_messages: int = 10_000,
        wait_s: float = 1.0,
        poll_s: float = 0.05,
        undecodable: Undecodable = "raise",
        rows_per_batch: int = 10_000,
        connect_timeout_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_messages < 1:
            raise InvalidInputError(field="max_messages", value=max_messages, allowed="1 or more")
        if wait_s < 0 or poll_s <= 0:
            raise InvalidInputError(
                field="wait_s/poll_s", value=(wait_s, poll_s), allowed="wait_s >= 0, poll_s > 0"
            )
        if undecodable not in ("raise", "report"):
            raise InvalidInputError(field="undecodable", value=undecodable, allowed="raise, report")
        self.url = url
        self.queue = queue
        self.name = name
        self.max_messages = max_messages
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.undecodable = undecodable
        self.rows_per_batch = rows_per_batch
        self.connect_timeout_s = connect_timeout_s
        self._monotonic = monotonic
        self._thread: LoopThread | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._pending: dict[int, AbstractIncomingMessage] = {}

    # --- plan ----------------------------------------------------------------------

    def plan(self, state: StateView) -> SourcePlan:
        """Fetch up to ``max_messages`` without acking; consumed ids go to ``redelivered``."""
        return self._loop().run(self._drain(state))

    async def _drain(self, state: StateView) -> SourcePlan:
        queue = await self._queue()
        refs: list[InputRef] = []
        redelivered: list[InputRef] = []
        seen: set[str] = set()
        idle_since = self._monotonic()
        while len(refs) + len(redelivered) < self.max_messages:
            try:
                message = await queue.get(no_ack=False, fail=False, timeout=self.connect_timeout_s)
            except _BROKER_ERRORS as exc:
                raise self._unavailable(exc) from None
            if message is None:
                if self._monotonic() - idle_since >= self.wait_s:
                    break
                await asyncio.sleep(self.poll_s)
                continue
            idle_since = self._monotonic()
            ref = self._ref(message)
            if ref.id in seen or state.has(self.name, "message", ref.id):
                redelivered.append(ref)
            else:
                seen.add(ref.id)
                refs.append(ref)
        return SourcePlan(
            source=self.name,
            kind=self.kind,
            refs=tuple(refs),
            skipped=len(redelivered),
            redelivered=tuple(redelivered),
        )

    def _ref(self, message: AbstractIncomingMessage) -> InputRef:
        tag = message.delivery_tag
        if tag is None:  # pragma: no cover - manual-ack deliveries always carry a tag
            raise ServiceUnavailableError(
                service="RabbitMQ",
                target=redact_url(self.url),
                reason="a delivery without a delivery tag",
                fix="report this broker behaviour",
            )
        self._pending[tag] = message
        body = bytes(message.body)
        return InputRef(
            kind="message",
            id=message_id_of(message.message_id, body),
            size=len(body),
            delivery_tag=tag,
            content_type=message.content_type,
            body=body,
        )

    # --- read ----------------------------------------------------------------------

    def read(self, plan: SourcePlan) -> Iterator[SourceBatch]:
        """Decoded rows of the plan's messages (redelivered ones are not read)."""
        return decode_messages(
            plan.refs,
            self.queue,
            rows_per_batch=self.rows_per_batch,
            report=self.undecodable == "report",
        )

    def splits(self, plan: SourcePlan, n: int) -> list[SourcePlan]:
        """By message, balanced by body size; ack and nack still take the whole plan."""
        return split_refs(plan, n, (ref.size or 0 for ref in plan.refs))

    # --- settle --------------------------------------------------------------------

    def ack(self, plan: SourcePlan) -> None:
        """Ack every delivery of ``plan``: call only after the commit and mark_consumed."""
        self._settle([*plan.refs, *plan.redelivered], [])

    def nack(self, plan: SourcePlan, requeue: bool = True) -> None:
        """Give the unread deliveries back (requeued by default); ack redelivered ones."""
        self._settle(list(plan.redelivered), list(plan.refs), requeue=requeue)

    def _settle(
        self, to_ack: list[InputRef], to_nack: list[InputRef], *, requeue: bool = True
    ) -> None:
        refs = to_ack + to_nack
        if not refs:
            return
        if self._thread is None or not self._thread.alive:
            raise AckError(queue=self.queue, count=len(refs), reason="this source is closed")
        self._thread.run(self._settle_async(to_ack, to_nack, requeue))

    async def _settle_async(
        self, to_ack: list[InputRef], to_nack: list[InputRef], requeue: bool
    ) -> None:
        missing = 0
        for refs, settle in ((to_ack, "ack"), (to_nack, "nack")):
            for ref in refs:
                message = self._pending.pop(ref.delivery_tag or -1, None)
                if message is None:
                    missing += 1
                    continue
                try:
                    if settle == "ack":
                        await message.ack()
                    else:
                        await message.nack(requeue=requeue)
                except _BROKER_ERRORS as exc:
                    raise AckError(queue=self.queue, count=1, reason=first_line(exc)) from None
        if missing:
            raise AckError(
                queue=self.queue,
                count=missing,
                reason="their deliveries are not held by this source object "
                "(planned by another one, settled already, or the source was closed)",
            )

    def close(self) -> None:
        """Close the connection (unsettled deliveries return to the queue) and the loop."""
        if self._thread is None:
            return
        with contextlib.suppress(*_BROKER_ERRORS, RuntimeError, TimeoutError):
            self._thread.run(self._disconnect(), timeout_s=self.connect_timeout_s + 1)
        self._thread.close()
        self._thread = None

    def __enter__(self) -> RabbitMqSource:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- connection ----------------------------------------------------------------

    def _loop(self) -> LoopThread:
        if self._thread is None or not self._thread.alive:
            self._thread = LoopThread(f"rabbitmq-source-{self.name}")
        return self._thread

    async def _queue(self) -> AbstractQueue:
        if self._channel is None or self._channel.is_closed:
            await self._disconnect()
            try:
                # Not a robust connection: after a reconnect the old delivery tags would
                # be void, so a dropped connection must fail the ack, not hide it.
                self._connection = await asyncio.wait_for(
                    aio_pika.connect(self.url, timeout=self.connect_timeout_s),
                    self.connect_timeout_s + 1,
                )
                self._channel = await self._connection.channel()
            except (*_BROKER_ERRORS, TimeoutError) as exc:
                raise self._unavailable(exc) from None
        try:
            return await self._channel.get_queue(self.queue, ensure=True)
        except aio_pika.exceptions.ChannelClosed as exc:
            self._channel = None
            raise NotFoundError(
                kind="RabbitMQ queue",
                name=self.queue,
                fix=f"declare it first (it was refused: {first_line(exc)}), or fix the name",
            ) from None

    async def _disconnect(self) -> None:
        self._pending.clear()
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_BROKER_ERRORS):
                await connection.close()

    def _unavailable(self, exc: BaseException) -> ServiceUnavailableError:
        reason = describe_network_error(exc) or first_line(exc)
        return ServiceUnavailableError(
            service="RabbitMQ",
            target=redact_url(self.url),
            reason=reason,
            fix="check that RabbitMQ runs there and the source's url (user, password, vhost)",
        )
