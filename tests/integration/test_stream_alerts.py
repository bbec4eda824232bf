"""The alerts sink against the real RabbitMQ: one JSON message per row, stable ids."""

from __future__ import annotations

import json
from pathlib import Path

import aio_pika
import pyarrow as pa

from actors.stream.build import AlertSink
from actors.stream.topology import AlertSinkSpec
from cluster.settings import load_settings


async def test_rows_become_json_alerts_on_a_topic_exchange(amqp_url: str, data_dir: Path) -> None:
    settings = load_settings(data_dir=data_dir, amqp_url=amqp_url)
    exchange_name = "datapunk.test-alerts"
    spec = AlertSinkSpec.model_validate(
        {"kind": "alerts", "from": "spikes", "exchange": exchange_name}
    )
    sink = AlertSink(settings, spec, "orders")
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key="orders.#")
        await sink.open()
        rows = pa.table({"customer": ["a", "b"], "amount": [1e6, 2e6]})
        await sink.write(7, rows)
        received = []
        for _ in range(2):
            message = await queue.get(timeout=5)
            assert message is not None
            await message.ack()
            received.append((message.message_id, message.routing_key, json.loads(message.body)))
    finally:
        await sink.close()
        await connection.close()
    assert received == [
        (
            "orders:spikes:7:0",
            "orders.spikes",
            {"topology": "orders", "output": "spikes", "customer": "a", "amount": 1e6},
        ),
        (
            "orders:spikes:7:1",
            "orders.spikes",
            {"topology": "orders", "output": "spikes", "customer": "b", "amount": 2e6},
        ),
    ]
