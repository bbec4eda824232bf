"""Stream sources behind the ``StreamSource`` port: RabbitMQ, the embedded queue, Lake.

Importing this package imports aio-pika, Ray and pyiceberg but connects to nothing;
the composition root picks the source (RabbitMQ when ``DATAPUNK_AMQP_URL`` is set,
else the in-cluster queue) and passes it to the topology runner.
"""

from actors.stream.sources.lake_replay import LakeReplaySource
from actors.stream.sources.queue import (
    LocalQueueBackend,
    MessageQueue,
    QueueBackend,
    QueueFullError,
    QueuePublisher,
    QueueSource,
    RayQueueBackend,
    StreamQueueActor,
    get_or_create_queue_actor,
    queue_actor_name,
    ray_queue_backend,
)
from actors.stream.sources.rabbitmq import (
    RabbitPublisher,
    RabbitStreamSource,
    declare_queues,
    delete_queues,
    queue_arguments,
)

__all__ = [
    "LakeReplaySource",
    "LocalQueueBackend",
    "MessageQueue",
    "QueueBackend",
    "QueueFullError",
    "QueuePublisher",
    "QueueSource",
    "RabbitPublisher",
    "RabbitStreamSource",
    "RayQueueBackend",
    "StreamQueueActor",
    "declare_queues",
    "delete_queues",
    "get_or_create_queue_actor",
    "queue_actor_name",
    "queue_arguments",
    "ray_queue_backend",
]
