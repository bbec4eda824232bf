"""Ray shell of ingestion: process a plan's splits as Ray tasks across the cluster.

Each task rebuilds the spec and the source from the pipeline text (connections do not
travel, and the validated model hides its secrets when serialised), reads its split and
runs the same pure ``process_batches``; only the driver commits, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import ray

from actors.ingest.build import build_source
from actors.ingest.runner import MapSplits, SplitResult, process_batches, sink_schema
from actors.ingest.sources.base import SourcePlan
from actors.ingest.spec import parse_pipeline
from actors.lake.core import LakeCore
from cluster.settings import export_settings, settings_from_export


@ray.remote(num_cpus=1, max_retries=2)
def _process_split(
    pipeline_text: str,
    env: dict[str, str],
    settings_values: dict[str, Any],
    plan: dict[str, Any],
    run_id: str,
    now: datetime,
    schema: pa.Schema | None,
    salts: dict[str, str],
) -> SplitResult:
    spec = parse_pipeline(pipeline_text, env=env)
    lake = LakeCore(settings_from_export(settings_values), 0)
    source = build_source(spec, lake.settings, lake)
    try:
        return process_batches(
            spec,
            source.read(SourcePlan.from_dict(plan)),
            run_id=run_id,
            now=now,
            sink_schema=schema,
            lookup=lambda table: lake.scan(table),
            salts=salts,
        )
    finally:
        source.close()


def ray_map_splits(
    pipeline_text: str, env: Mapping[str, str], lake: LakeCore, sink: str, salts: dict[str, str]
) -> MapSplits:
    """A ``map_splits`` for ``PipelineRunner`` that fans the splits out as Ray tasks."""
    values = export_settings(lake.settings)

    def run(splits: Sequence[SourcePlan], run_id: str, now: datetime) -> Iterable[SplitResult]:
        schema = sink_schema(lake, sink)
        refs = [
            _process_split.remote(
                pipeline_text, dict(env), values, s.to_dict(), run_id, now, schema, salts
            )
            for s in splits
        ]
        return ray.get(refs)

    return run
