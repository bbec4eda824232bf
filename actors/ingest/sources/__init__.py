"""Ingest sources: files, SQL, RabbitMQ and Lake tables behind one ``Source`` port.

The port and its data (``SourcePlan``, ``InputRef``, ``SourceBatch``, ``StateView``)
live in ``base``; each source in its own module. Importing this package imports the
source modules' dependencies (SQLAlchemy, aio-pika, pyiceberg) but connects to nothing.
"""

from actors.ingest.sources.base import (
    InputRef,
    Source,
    SourceBatch,
    SourceKind,
    SourcePlan,
    StateView,
    decode_position,
    encode_position,
)
from actors.ingest.sources.errors import (
    AckError,
    InputChangedError,
    LakePositionError,
    SqlSourceError,
    UndecodableMessageError,
)
from actors.ingest.sources.files import FileSource
from actors.ingest.sources.lake import LakeSource
from actors.ingest.sources.rabbitmq import RabbitMqSource
from actors.ingest.sources.sql import SqlSource

__all__ = [
    "AckError",
    "FileSource",
    "InputChangedError",
    "InputRef",
    "LakePositionError",
    "LakeSource",
    "RabbitMqSource",
    "Source",
    "SourceBatch",
    "SourceKind",
    "SourcePlan",
    "SqlSource",
    "SqlSourceError",
    "StateView",
    "UndecodableMessageError",
    "decode_position",
    "encode_position",
]
