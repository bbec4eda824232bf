"""Pipelines, Forge runs and streams: the operational queries and the stream-stop mutation.

Same backends and permissions as ``routes_pipelines``, ``routes_forge`` and
``routes_streams``: reading pipelines needs ``platform:read``, Forge runs ``model:read``,
streams ``stream:read``; stopping a stream ``stream:deploy`` on that stream. Listings
show only what a key narrowed by grants may read, as REST's do. Records are returned as
the REST routes return them (``JSON``), so both APIs say the same thing.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import strawberry
from strawberry.scalars import JSON

from cluster.errors import NotFoundError
from cluster.security import grants
from serve_apps.gateway import access
from serve_apps.gateway.graphql.context import MAX_LIST, GraphQLInfo, Needs, backend, bounded
from serve_apps.gateway.routes_pipelines import known, pipeline_file

PLATFORM_READ = "platform:read"
MODEL_READ = "model:read"
STREAM_READ = "stream:read"
STREAM_DEPLOY = "stream:deploy"


@strawberry.type
class OperationsQuery:
    @strawberry.field(
        description="Pipelines that can be run by name.", extensions=[Needs(PLATFORM_READ)]
    )
    async def pipelines(self, info: GraphQLInfo) -> list[str]:
        folder, _, _ = backend(info.context.deps.pipelines, "pipelines")
        return await asyncio.to_thread(known, folder)

    @strawberry.field(
        description="A pipeline's run records, newest first.",
        extensions=[Needs(PLATFORM_READ)],
    )
    async def pipeline_runs(self, info: GraphQLInfo, name: str, limit: int = 20) -> list[JSON]:
        folder, _, state = backend(info.context.deps.pipelines, "pipelines")
        await asyncio.to_thread(pipeline_file, folder, name)  # unknown names: 404 naming them
        runs = await state.list_runs(name, limit=bounded(limit, MAX_LIST))
        return [JSON(asdict(run)) for run in runs]

    @strawberry.field(
        description="The Ray job of a submitted pipeline run.",
        extensions=[Needs(PLATFORM_READ)],
    )
    async def pipeline_job(self, info: GraphQLInfo, name: str, submission_id: str) -> JSON:
        _, launcher, _ = backend(info.context.deps.pipelines, "pipelines")
        return JSON({"pipeline": name, **(await launcher.status(submission_id))})

    @strawberry.field(
        description="Training runs, newest first, of one spec name when given.",
        extensions=[Needs(MODEL_READ)],
    )
    async def forge_runs(
        self, info: GraphQLInfo, name: str | None = None, limit: int = 50
    ) -> list[JSON]:
        forge = backend(info.context.deps.forge, "forge")
        runs = await forge.runs.list(limit=bounded(limit, MAX_LIST), name=name)
        principal = info.context.principal
        return [JSON(r) for r in grants.visible(principal, MODEL_READ, runs, access.model_of_run)]

    @strawberry.field(
        description="One training run: state, pinned snapshot, trials, best trial, model.",
        extensions=[Needs(MODEL_READ)],
    )
    async def forge_run(self, info: GraphQLInfo, run_id: str) -> JSON:
        forge = backend(info.context.deps.forge, "forge")
        record = await forge.runs.get(run_id)
        principal = info.context.principal
        # A run of a model outside the caller's grants is answered as a missing run.
        if record is None or not grants.visible(
            principal, MODEL_READ, [record], access.model_of_run
        ):
            raise NotFoundError(kind="training run", name=run_id, fix="list them with forgeRuns")
        return JSON(record)

    @strawberry.field(
        description="Deployed stream topologies and their live state.",
        extensions=[Needs(STREAM_READ)],
    )
    async def streams(self, info: GraphQLInfo) -> list[JSON]:
        listed = await backend(info.context.deps.streams, "streams").ls()
        principal = info.context.principal
        shown = grants.visible(principal, STREAM_READ, listed, lambda s: grants.stream(s["name"]))
        return [JSON(s) for s in shown]

    @strawberry.field(
        description="A stream's state, counters and queue.",
        extensions=[Needs(STREAM_READ, "stream")],
    )
    async def stream(self, info: GraphQLInfo, name: str) -> JSON:
        return JSON(await backend(info.context.deps.streams, "streams").status(name))


@strawberry.type
class OperationsMutation:
    @strawberry.mutation(
        description="Stop a stream after committing; its checkpoints are kept.",
        extensions=[Needs(STREAM_DEPLOY, "stream")],
    )
    async def stop_stream(self, info: GraphQLInfo, name: str) -> JSON:
        return JSON(await backend(info.context.deps.streams, "streams").stop(name))
