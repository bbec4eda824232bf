"""Stream sources without Ray or a broker: the embedded queue's broker semantics, the
``QueueSource`` over a local backend, and a Lake table replayed in event-time order."""

from __future__ import annotations

import pickle
from pathlib import Path

import pyarrow as pa
import pytest

from actors.ingest.sources.messages import ARROW_STREAM, decode_body
from actors.lake.service import LakeService
from actors.stream.ports import Delivery, StreamSource
from actors.stream.sources import (
    LakeReplaySource,
    LocalQueueBackend,
    MessageQueue,
    QueueFullError,
    QueuePublisher,
    QueueSource,
    queue_actor_name,
)
from cluster.errors import InvalidInputError, NotFoundError, ServiceUnavailableError
from cluster.settings import load_settings

JSON = "application/json"


def filled(count: int, **limits: int) -> MessageQueue:
    queue = MessageQueue("q", **limits)
    for n in range(count):
        queue.put(f'{{"id": {n}}}'.encode(), JSON, f"m{n}")
    return queue


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.message_id for d in deliveries]


# --- MessageQueue --------------------------------------------------------------------


def test_get_hands_out_in_order_with_increasing_tags() -> None:
    queue = filled(5)
    first, second = queue.get(3), queue.get(10)
    assert ids(first) == ["m0", "m1", "m2"] and ids(second) == ["m3", "m4"]
    tags = [d.tag for d in first + second]
    assert tags == sorted(tags) and len(set(tags)) == 5
    assert queue.get(10) == []
    assert queue.stats() | {"max_ready": 0} == {
        "ready": 0,
        "unacked": 5,
        "dead": 0,
        "dead_dropped": 0,
        "generation": 0,
        "max_ready": 0,
    }


def test_ack_is_multiple_and_refuses_a_stale_generation() -> None:
    queue = filled(4)
    got = queue.get(4)
    assert queue.ack(got[1].tag, got[1].generation)
    assert queue.stats()["unacked"] == 2
    assert queue.ack(got[1].tag, 0)  # acking again changes nothing
    generation = queue.recover()
    assert generation == 1
    assert queue.ack(got[3].tag, got[3].generation) is False
    assert queue.stats()["ready"] == 2 and queue.stats()["unacked"] == 0


def test_recover_puts_unacked_back_in_front_in_order_marked_redelivered() -> None:
    queue = filled(5)
    got = queue.get(3)
    queue.ack(got[0].tag, 0)
    queue.put(b'{"id": 5}', JSON, "m5")
    assert queue.recover() == 1
    again = queue.get(10)
    assert ids(again) == ["m1", "m2", "m3", "m4", "m5"]
    assert [d.redelivered for d in again] == [True, True, False, False, False]
    assert {d.generation for d in again} == {1}
    assert min(d.tag for d in again) > max(d.tag for d in got)  # tags never repeat


def test_dead_letters_are_kept_bounded_and_never_redelivered() -> None:
    queue = filled(4, max_dead=2)
    got = queue.get(4)
    assert queue.dead_letter([got[0].tag, got[1].tag, got[2].tag], 0) == 3
    assert queue.dead_letter([got[3].tag], 7) == 0  # stale generation: nothing moves
    assert ids(queue.dead_letters()) == ["m1", "m2"]
    assert queue.stats()["dead_dropped"] == 1
    queue.recover()
    assert ids(queue.get(10)) == ["m3"]


def test_a_full_queue_refuses_with_a_typed_error_and_loses_nothing() -> None:
    queue = filled(2, max_ready=2)
    with pytest.raises(QueueFullError, match="retry later") as caught:
        queue.put(b"{}", JSON, "m2")
    assert isinstance(caught.value, ServiceUnavailableError)
    assert caught.value.http_status == 503 and caught.value.code == "queue_full"
    assert pickle.loads(pickle.dumps(caught.value)).message == caught.value.message
    assert ids(queue.get(10)) == ["m0", "m1"]
    queue.put(b"{}", JSON, "m2")  # unacked deliveries do not count against max_ready
    assert queue.stats()["ready"] == 1


def test_a_message_without_an_id_gets_its_body_digest() -> None:
    queue = MessageQueue()
    queue.put(b'{"a": 1}', JSON)
    assert queue.get(1)[0].message_id.startswith("sha256:")


def test_limits_are_validated_with_the_value() -> None:
    with pytest.raises(InvalidInputError, match="max_ready=0"):
        MessageQueue(max_ready=0)
    assert queue_actor_name("fraud") == "stream-queue-fraud"


# --- QueueSource over a local backend ------------------------------------------------


async def test_queue_source_fetches_acks_and_requeues() -> None:
    queue = filled(3)
    source: StreamSource = QueueSource(LocalQueueBackend(queue))
    await source.open(None)
    assert source.generation == 1 and not source.finished
    got = await source.fetch(2, 0.1)
    assert ids(got) == ["m0", "m1"] and source.position(got[-1]) is None
    await source.requeue_unacked()
    assert source.generation == 2
    assert await source.ack(got[-1]) is False
    again = await source.fetch(10, 0.1)
    assert ids(again) == ["m0", "m1", "m2"] and again[0].redelivered
    await source.dead_letter([again[1]])
    assert await source.ack(again[-1])
    assert queue.stats() | {"max_ready": 0} == {
        "ready": 0,
        "unacked": 0,
        "dead": 1,
        "dead_dropped": 0,
        "generation": 2,
        "max_ready": 0,
    }


async def test_queue_source_waits_for_a_message_then_times_out() -> None:
    queue = MessageQueue()
    source = QueueSource(LocalQueueBackend(queue))
    await source.open(None)
    assert await source.fetch(5, 0.03) == []
    publisher = QueuePublisher.single(LocalQueueBackend(queue))
    await publisher.publish_events("q", b"[]", content_type=JSON, message_id="late")
    assert ids(await source.fetch(5, 0.5)) == ["late"]


async def test_a_restarted_consumer_sees_unacked_messages_again() -> None:
    queue = filled(2)
    first = QueueSource(LocalQueueBackend(queue))
    await first.open(None)
    assert len(await first.fetch(10, 0)) == 2  # then the consumer dies without closing
    second = QueueSource(LocalQueueBackend(queue))
    await second.open(None)
    again = await second.fetch(10, 0)
    assert ids(again) == ["m0", "m1"] and all(d.redelivered for d in again)
    await second.close()
    assert queue.stats()["ready"] == 2


async def test_queue_publisher_resolves_each_queue_once() -> None:
    queues: dict[str, MessageQueue] = {}

    def backend_for(name: str) -> LocalQueueBackend:
        queues[name] = MessageQueue(name, max_ready=1)
        return LocalQueueBackend(queues[name])

    publisher = QueuePublisher(backend_for)
    await publisher.publish_events("a", b"1", content_type=JSON, message_id="x")
    with pytest.raises(QueueFullError, match="stream queue 'a' is full"):
        await publisher.publish_events("a", b"2", content_type=JSON, message_id="y")
    await publisher.publish_events("b", b"3", content_type=JSON, message_id="z")
    assert {name: q.stats()["ready"] for name, q in queues.items()} == {"a": 1, "b": 1}


# --- LakeReplaySource ----------------------------------------------------------------


@pytest.fixture
def lake(tmp_path: Path) -> LakeService:
    return LakeService.from_settings(load_settings(data_dir=tmp_path / "lake"))


def events(ts: list[int], first_id: int = 0) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(first_id, first_id + len(ts)), pa.int64()),
            "ts": pa.array(ts, pa.int64()),
        }
    )


def rows_of(deliveries: list[Delivery]) -> list[int]:
    out = []
    for d in deliveries:
        assert d.content_type == ARROW_STREAM
        out += decode_body(d.body, d.content_type, d.message_id, "t").column("id").to_pylist()
    return out


async def test_replay_hands_out_rows_in_time_order_stably(lake: LakeService) -> None:
    # ids 0..5 at times 3,1,2,1,3,2 -> by time: 1,3 | 2,5 | 0,4 (ties keep table order)
    await lake.create_table("events", data=events([3, 1, 2, 1, 3, 2]))
    source = LakeReplaySource(lake, "events", time_column="ts", batch_rows=2)
    await source.open(None)
    snapshot = (await lake.describe("events"))["current_snapshot_id"]
    got = await source.fetch(2, 1.0)
    assert rows_of(got) == [1, 3, 2, 5]
    assert [d.tag for d in got] == [2, 4] and not source.finished
    assert got[1].message_id == f"lake:events:{snapshot}:2"
    assert source.position(got[1]) == {"snapshot_id": snapshot, "offset": 4}
    last = await source.fetch(10, 1.0)
    assert rows_of(last) == [0, 4] and source.finished
    assert await source.fetch(10, 1.0) == []


async def test_replay_resumes_from_a_position_on_the_pinned_snapshot(lake: LakeService) -> None:
    await lake.create_table("events", data=events([5, 4, 3, 2, 1]))
    source = LakeReplaySource(lake, "events", time_column="ts", batch_rows=2)
    await source.open(None)
    got = await source.fetch(1, 0)
    assert await source.ack(got[0])
    position = source.position(got[0])
    await lake.append("events", events([0], first_id=9))  # newer snapshot: not replayed

    resumed = LakeReplaySource(lake, "events", time_column="ts", batch_rows=2)
    await resumed.open(position)
    assert rows_of(await resumed.fetch(10, 0)) == [2, 1, 0] and resumed.finished


async def test_requeue_unacked_rewinds_to_the_last_ack(lake: LakeService) -> None:
    await lake.create_table("events", data=events([1, 2, 3, 4, 5]))
    source = LakeReplaySource(lake, "events", time_column="ts", batch_rows=2)
    await source.open(None)
    first = await source.fetch(1, 0)
    await source.ack(first[0])
    rest = await source.fetch(10, 0)
    assert source.finished
    generation = source.generation
    await source.requeue_unacked()
    assert source.generation == generation + 1 and not source.finished
    assert await source.ack(rest[-1]) is False
    again = await source.fetch(10, 0)
    assert rows_of(again) == [2, 3, 4] and all(d.redelivered for d in again)
    assert [d.message_id for d in again] == [d.message_id for d in rest]
    assert await source.ack(again[-1])
    await source.dead_letter(again)  # nothing to route for a replay
    assert source.position(None) == {"snapshot_id": source.snapshot_id, "offset": 5}


async def test_an_empty_table_is_finished_at_once(lake: LakeService) -> None:
    schema = pa.schema([pa.field("id", pa.int64()), pa.field("ts", pa.int64())])
    await lake.create_table("empty", schema=schema)
    source = LakeReplaySource(lake, "empty", time_column="ts")
    await source.open(None)
    assert source.finished and await source.fetch(10, 0) == []


async def test_unknown_table_and_bad_column_are_named(lake: LakeService) -> None:
    with pytest.raises(NotFoundError):
        await LakeReplaySource(lake, "nope", time_column="ts").open(None)
    await lake.create_table("events", data=events([1]))
    with pytest.raises(InvalidInputError, match=r"time_column='when'.*id, ts"):
        await LakeReplaySource(lake, "events", time_column="when").open(None)
    with pytest.raises(InvalidInputError, match="offset"):
        await LakeReplaySource(lake, "events", time_column="ts").open(
            {"snapshot_id": None, "offset": 3}
        )
