"""Run one pipeline: ``python -m jobs.ingest PIPELINE.yaml [--parallel N]``.

The same entry serves ``datapunk ingest`` and ``ray job submit --working-dir . --
python -m jobs.ingest PIPELINE.yaml``. Inside a Ray job (or with ``--parallel`` > 1 on a
running cluster) the plan's splits are processed as Ray tasks; the commit is one.
Prints a table of the run's counts; exits 2 on a typed error, naming what to fix.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from actors.ingest.build import build_source
from actors.ingest.runner import PipelineRunner, RunOutcome
from actors.ingest.spec import PipelineSpec, parse_pipeline
from actors.ingest.state import SqlIngestState
from actors.ingest.transforms import resolve_salts
from actors.lake.core import LakeCore
from cluster.console import console, key_value_table
from cluster.db.engine import create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings


def _utcnow() -> datetime:
    return datetime.now(UTC)


def run_file(
    path: Path,
    settings: Settings,
    *,
    parallelism: int = 1,
    progress: Callable[[int], None] | None = None,
) -> RunOutcome:
    """Load, validate and run the pipeline at ``path`` against ``settings``' Lake and DB."""
    text = path.read_text()
    spec = parse_pipeline(text, source=path.name, env=os.environ)
    return asyncio.run(_run(spec, text, settings, parallelism, progress))


async def _run(
    spec: PipelineSpec,
    text: str,
    settings: Settings,
    parallelism: int,
    progress: Callable[[int], None] | None,
) -> RunOutcome:
    await ensure_schema(settings)
    engine = create_engine(settings)
    lake = LakeCore(settings, 0)
    source = build_source(spec, settings, lake)
    salts = resolve_salts(spec.transforms, os.environ)
    map_splits = None
    if parallelism > 1:
        from actors.ingest.parallel import ray_map_splits

        map_splits = ray_map_splits(text, os.environ, lake, str(spec.sink.table), salts)
    try:
        runner = PipelineRunner(
            spec,
            lake=lake,
            state=SqlIngestState(session_factory(engine), _utcnow),
            source=source,
            map_splits=map_splits,
            parallelism=parallelism,
            progress=progress,
            salts=salts,
        )
        return await runner.run()
    finally:
        source.close()
        await engine.dispose()


def outcome_table(outcome: RunOutcome) -> object:
    c = outcome.counts
    return key_value_table(
        f"run {outcome.run_id}: {outcome.status}",
        {
            "rows read": str(c.read),
            "written": str(c.written),
            "quarantined": str(c.quarantined),
            "filtered": str(c.filtered),
            "snapshot": str(outcome.snapshot_id),
            "seconds": f"{outcome.duration_s:.2f}",
            "warnings": "; ".join(outcome.warnings) or "-",
        },
        ("", ""),
    )


def _parallelism(requested: int | None) -> int:
    """Inside a Ray job use the cluster's CPUs; elsewhere only what was asked."""
    if requested is not None:
        return requested
    if os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_ADDRESS"):
        import ray

        ray.init(address="auto", log_to_driver=False)
        return max(1, int(ray.cluster_resources().get("CPU", 1)))
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.ingest", description=__doc__)
    parser.add_argument("pipeline", type=Path)
    parser.add_argument("--parallel", type=int, default=None, help="Ray tasks for splits.")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    try:
        settings = load_settings()
        parallelism = _parallelism(args.parallel)
        if parallelism > 1:
            import ray

            if not ray.is_initialized():
                ray.init(address="auto", log_to_driver=False)
        outcome = run_file(args.pipeline, settings, parallelism=parallelism)
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 2
    console.print(outcome_table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
