"""From a validated pipeline spec to the source object that reads it.

Kept apart from the runner so a Ray worker can rebuild the same source for its split
from the spec alone (sources hold connections, which do not travel).
"""

from __future__ import annotations

from typing import Any

from actors.ingest.sources.base import Source
from actors.ingest.sources.files import FileSource
from actors.ingest.sources.lake import LakeSource
from actors.ingest.sources.rabbitmq import RabbitMqSource
from actors.ingest.sources.sql import SqlSource
from actors.ingest.spec import PipelineSpec
from actors.ingest.spec_sources import (
    FilesSourceConfig,
    LakeSourceConfig,
    RabbitMQSourceConfig,
    SqlSourceConfig,
)
from actors.lake.core import LakeCore
from cluster.errors import ConfigError
from cluster.settings import Settings


def build_source(spec: PipelineSpec, settings: Settings, lake: LakeCore) -> Source:
    """The source ``spec.source`` describes; secrets are read only here."""
    config: Any = spec.source
    if isinstance(config, FilesSourceConfig):
        fmt = None if config.format == "auto" else config.format
        encoding = config.csv.encoding.replace("-", "").lower()
        return FileSource(
            config.path,
            name="files",
            format=fmt,
            encoding=encoding,
            delimiter=config.csv.delimiter,
            header=config.csv.header,
        )
    if isinstance(config, SqlSourceConfig):
        return SqlSource(
            config.url.get_secret_value(),
            table=config.table,
            query=config.query,
            incremental_column=config.incremental_column,
            name="sql",
        )
    if isinstance(config, RabbitMQSourceConfig):
        url = config.url.get_secret_value() if config.url else settings.secret("amqp_url")
        if not url:
            raise ConfigError(
                key="source.url",
                value=None,
                allowed="an amqp:// URL here or DATAPUNK_AMQP_URL in the settings",
                source=f"pipeline {spec.name}",
            )
        return RabbitMqSource(
            url,
            config.queue,
            name="rabbitmq",
            max_messages=config.max_messages,
            wait_s=config.wait_s,
            undecodable="report",
        )
    if isinstance(config, LakeSourceConfig):
        return LakeSource(
            lake,
            str(config.table),
            name="lake",
            snapshot_id=config.snapshot_id,
            as_of=config.as_of,
        )
    raise ConfigError(key="source.type", value=type(config).__name__, allowed="a known source")
