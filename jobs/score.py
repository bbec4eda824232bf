"""Score a Lake table snapshot with a registry model into another Lake table.

``python -m jobs.score MODEL [--alias production | --version N] --table ns.src
[--snapshot ID] --output ns.dst [--batch-size 4096] [--actors K] [--device auto|cpu|cuda]
[--run-id ID]``, directly or as ``ray job submit --working-dir . -- python -m jobs.score``.

1. Plan (no Ray): resolve the version in the registry, pin the source snapshot (the
   current one unless ``--snapshot``), check the signature's inputs against its columns
   and the output table's schema against the scored rows. A run already committed to the
   output (its id in a snapshot summary) ends here: nothing is scored twice.
2. Score: Ray Data reads the snapshot and ``map_batches`` runs ``BatchScorer`` over an
   actor pool, each actor loading the model once (one GPU per actor on CUDA).
3. Commit: the driver appends every scored row in ONE snapshot whose summary records the
   lineage (model, version, source table and snapshot, run id), creating the table if
   missing, and checks again just before the commit that no twin run got there first.
   The driver holds the scored rows until that commit: one snapshot, all or nothing.

Shows a progress bar while scoring and a summary table at the end; exits 2 on a typed
error, naming the value and the fix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pyarrow as pa
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.cortex.scoring import (
    BatchScorer,
    ScoreRequest,
    check_source,
    committed_run,
    default_actors,
    default_run_id,
    lineage_properties,
    output_schema,
)
from actors.cortex.served import ServedModel, resolve_device
from actors.forge.registry import registry_from_settings
from actors.lake.core import LakeCore
from actors.lake.errors import TableExistsError, TableNotFoundError
from actors.lake.schema import plan_write
from actors.lake.service import LakeService, plain
from actors.lake.specs import parse_table_name
from cluster.console import console, key_value_table
from cluster.errors import DatapunkError, InvalidInputError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings
from jobs import join_cluster

READ_TASK_CPUS = 0.25
MIN_ACTOR_CPUS = 0.25
_NO_CLUSTER = (
    "batch scoring needs a Ray cluster; start the platform with `datapunk up`, "
    "or submit the job: ray job submit --working-dir . -- python -m jobs.score ..."
)


@dataclass(frozen=True)
class ScorePlan:
    """Everything checked before Ray: the version, the pinned snapshot, the run id."""

    request: ScoreRequest
    record: dict[str, Any]
    artifact: bytes
    snapshot_id: int
    source_rows: int | None
    schema: pa.Schema
    run_id: str
    committed: dict[str, Any] | None  # the output snapshot that already holds this run


@dataclass(frozen=True)
class ScoreOutcome:
    """What a run did (``already``: an earlier run with this id had committed it)."""

    run_id: str
    model: str
    version: int
    table: str
    snapshot_id: int
    output: str
    output_snapshot_id: int | None
    rows: int
    unscored: int | None  # rows with a null or NaN feature; None when not scored now
    seconds: float
    already: bool
    device: str = "-"
    actors: int = 0


class _AlreadyCommitted(Exception):
    """A twin run committed this run id between the plan and our commit."""

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(entry.get("snapshot_id"))
        self.entry = entry


# ---- plan ---------------------------------------------------------------------------


async def plan_scoring(settings: Settings, request: ScoreRequest) -> ScorePlan:
    """Resolve and check everything the run needs; raises typed errors, touches no Ray."""
    async with registry_from_settings(settings) as registry:
        record, artifact = await registry.artifact(request.model, request.ref)
    version = int(record["version"])
    # Load it once here, on the CPU: a version Cortex cannot serve (artifact, signature)
    # is refused now, not in every actor of the pool.
    ServedModel.from_artifact(record, artifact, "cpu")
    lake = LakeService(LakeCore(settings, 0))
    description = await lake.describe(request.table)
    snapshot = await asyncio.to_thread(
        lake.core.resolve_snapshot, request.table, request.snapshot_id
    )
    rows = _rows_at(description, snapshot)
    if snapshot is None or rows == 0:
        raise InvalidInputError(
            field=f"--table {request.table}",
            value=f"snapshot {snapshot}: no rows" if snapshot else "no snapshot: never written",
            allowed="a table snapshot with rows to score "
            f"(`datapunk lake history {request.table}` lists its snapshots)",
        )
    source = (await lake.scan(request.table, snapshot_id=snapshot, limit=0)).schema
    check_source(
        source,
        record["signature"],
        table=request.table,
        snapshot_id=snapshot,
        model=request.model,
        version=version,
    )
    schema = output_schema(source, record["signature"])
    run_id = request.run_id or default_run_id(
        request.model, version, request.table, snapshot, request.output
    )
    committed = None
    try:
        history = await lake.history(request.output)
    except TableNotFoundError:
        pass
    else:
        committed = committed_run(history, run_id)
        if committed is None:  # refuse a schema clash now, not after scoring every row
            _, table = lake.core.tables.load(request.output)
            plan_write(request.output, table.schema(), schema, evolve=True)
    return ScorePlan(request, record, artifact, snapshot, rows, schema, run_id, committed)


def _rows_at(description: dict[str, Any], snapshot_id: int | None) -> int | None:
    for entry in description.get("snapshots") or []:
        if entry.get("snapshot_id") == snapshot_id:
            total = (entry.get("summary") or {}).get("total-records")
            return int(total) if total is not None else None
    return None


# ---- score (Ray) --------------------------------------------------------------------


def _device_and_actors(request: ScoreRequest) -> tuple[str, int]:
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    if request.device == "cuda" and gpus < 1:
        raise InvalidInputError(
            field="--device",
            value="cuda",
            allowed="auto or cpu: the Ray cluster has no GPU (`ray status` lists its resources)",
        )
    device = resolve_device(request.device, gpus >= 1)
    return device, request.actors or default_actors(device, cpus, gpus)


def _actor_cpus(device: str, actors: int) -> float:
    """CPUs each scoring actor reserves: one beside its GPU; on the CPU a fair share of
    what is free now (at most one each, at least a quarter), leaving room for the reads.
    A fixed 1 CPU each would wait forever on a 2-CPU head whose gateway and Cortex
    replicas already hold one."""
    import ray

    if device == "cuda":
        return 1.0
    free = float(ray.available_resources().get("CPU", 0.0)) - READ_TASK_CPUS
    return max(MIN_ACTOR_CPUS, min(1.0, free / max(actors, 1)))


def _quiet_ray_data() -> None:
    """Our progress bar is the display: no Ray Data bars, and its console lines only from
    ERROR up (its session log file, ``logs/ray-data``, keeps everything)."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    for handler in logging.getLogger("ray.data").handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
            handler, logging.FileHandler
        ):
            handler.setLevel(logging.ERROR)


def score_on_ray(
    settings: Settings, plan: ScorePlan, advance: Callable[[int], None]
) -> tuple[pa.Table, str, int]:
    """Every row of the pinned snapshot scored by an actor pool; ``advance(rows)`` per
    batch that reaches the driver. Returns the rows, the device and the pool size."""
    import ray

    from actors.lake.client import to_ray_dataset

    device, actors = _device_and_actors(plan.request)
    _quiet_ray_data()
    # Reading Parquet is light: a quarter CPU per read task, so reads still schedule
    # beside the scoring actors on a small cluster whose Serve replicas hold CPUs too.
    dataset = to_ray_dataset(
        settings,
        plan.request.table,
        plan.snapshot_id,
        num_cpus=READ_TASK_CPUS,
    )
    scored = dataset.map_batches(
        BatchScorer,
        fn_constructor_kwargs={"record": plan.record, "artifact": plan.artifact, "device": device},
        batch_size=plan.request.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=_actor_cpus(device, actors),
        num_gpus=1 if device == "cuda" else 0,
    )
    batches: list[pa.Table] = []
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        batches.append(cast(pa.Table, batch))
        advance(batches[-1].num_rows)
    if not batches:
        return plan.schema.empty_table(), device, actors
    return pa.concat_tables(batches, promote_options="permissive"), device, actors


# ---- commit -------------------------------------------------------------------------


def commit(settings: Settings, plan: ScorePlan, rows: pa.Table) -> tuple[int | None, bool]:
    """Append ``rows`` to the output in one snapshot with the lineage properties; returns
    its id and False, or the twin run's snapshot id and True when it committed first."""
    request, core = plan.request, LakeCore(settings, 0)
    output = parse_table_name(request.output)
    core.create_namespace(output.namespace, exist_ok=True)
    with contextlib.suppress(TableExistsError):  # exists, or a twin run just created it
        core.create_table(request.output, schema=plan.schema)
    properties = lineage_properties(
        model=request.model,
        version=int(plan.record["version"]),
        table=request.table,
        snapshot_id=plan.snapshot_id,
        run_id=plan.run_id,
    )

    def refuse_a_second_commit() -> None:
        # Runs in every commit attempt: a twin whose commit beat ours makes ours retry,
        # and the retry finds the twin's snapshot here.
        entry = committed_run(plain(core.history(request.output)), plan.run_id)
        if entry is not None:
            raise _AlreadyCommitted(entry)

    try:
        result = core.append(
            request.output,
            rows,
            snapshot_properties=properties,
            before_commit=refuse_a_second_commit,
        )
    except _AlreadyCommitted as twin:
        return twin.entry.get("snapshot_id"), True
    return result.snapshot_id, False


# ---- the run ------------------------------------------------------------------------


def score(settings: Settings, request: ScoreRequest, *, out: Console = console) -> ScoreOutcome:
    """Plan, score on Ray and commit, with a progress bar on ``out``."""
    started = time.monotonic()
    plan = asyncio.run(plan_scoring(settings, request))
    done = functools.partial(
        ScoreOutcome,
        run_id=plan.run_id,
        model=request.model,
        version=int(plan.record["version"]),
        table=request.table,
        snapshot_id=plan.snapshot_id,
        output=request.output,
    )
    if plan.committed is not None:
        added = int((plan.committed.get("summary") or {}).get("added-records", 0))
        return done(
            output_snapshot_id=plan.committed.get("snapshot_id"),
            rows=added,
            unscored=None,
            seconds=time.monotonic() - started,
            already=True,
        )
    join_cluster(settings, no_cluster=_NO_CLUSTER)
    out.print(
        f"scoring [bold]{request.table}[/] snapshot {plan.snapshot_id} with "
        f"[bold]{request.model}[/] v{plan.record['version']} into [bold]{request.output}[/] "
        f"(run {plan.run_id})",
        highlight=False,
    )
    with _progress(out) as progress:
        task = progress.add_task("scoring", total=plan.source_rows)
        scored, device, actors = score_on_ray(settings, plan, lambda n: progress.advance(task, n))
        progress.update(task, description="committing")
        snapshot, already = commit(settings, plan, scored)
    return done(
        output_snapshot_id=snapshot,
        rows=scored.num_rows,
        unscored=scored.column("prediction").null_count,
        seconds=time.monotonic() - started,
        already=already,
        device=device,
        actors=actors,
    )


def _progress(out: Console) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} rows"),
        TimeElapsedColumn(),
        console=out,
    )


def outcome_table(outcome: ScoreOutcome) -> Table:
    """The run's summary: rows scored, the snapshot they landed in, seconds."""
    state = "already committed (nothing scored again)" if outcome.already else "committed"
    rows = {
        "model": f"{outcome.model} v{outcome.version}",
        "source": f"{outcome.table} @ snapshot {outcome.snapshot_id}",
        "output": outcome.output,
        "rows scored": f"{outcome.rows:,}",
        "rows without prediction": "-"
        if outcome.unscored is None
        else f"{outcome.unscored:,} (a null or NaN feature)",
        "snapshot": str(outcome.output_snapshot_id),
        "device": f"{outcome.device} x {outcome.actors} actor(s)" if outcome.actors else "-",
        "seconds": f"{outcome.seconds:.2f}",
    }
    return key_value_table(f"scoring run {outcome.run_id}: {state}", rows, ("", ""))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m jobs.score", description=__doc__)
    parser.add_argument("model", help="Registered model name.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--alias", default=None, help="Alias to score with (production).")
    which.add_argument("--version", type=int, default=None, help="Version number.")
    parser.add_argument("--table", required=True, help="Source Lake table, ns.table.")
    parser.add_argument("--snapshot", type=int, default=None, help="Source snapshot id.")
    parser.add_argument("--output", required=True, help="Output Lake table (created).")
    parser.add_argument("--batch-size", type=int, default=4096, help="Rows per model call.")
    parser.add_argument("--actors", type=int, default=None, help="Actors in the pool.")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--run-id", default=None, help="Defaults to a digest of the inputs.")
    return parser


def main(argv: list[str] | None = None, *, settings: Settings | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging("WARNING")
    try:
        request = ScoreRequest(
            model=args.model,
            alias=args.alias,
            version=args.version,
            table=args.table,
            snapshot_id=args.snapshot,
            output=args.output,
            batch_size=args.batch_size,
            actors=args.actors,
            device=args.device,
            run_id=args.run_id,
        )
        outcome = score(settings or load_settings(), request)
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 2
    console.print(outcome_table(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main())
