"""``/api/v1/pipelines``: run pipelines by name as Ray jobs and read their records.

A run is submitted through Ray's Job Submission API (``python -m jobs.ingest FILE``), so
it gets Ray's job logs, status and retries, and runs on the cluster, not in the gateway.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from fastapi import APIRouter, Depends, Request

from actors.ingest.spec import load_pipeline
from actors.ingest.state import IngestState
from cluster.errors import InvalidInputError, NotFoundError
from cluster.security import grants
from serve_apps.gateway import access
from serve_apps.gateway.auth import permission

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


class JobLauncher(Protocol):
    """Ray's Job Submission API as the routes need it."""

    async def submit(self, entrypoint: str, metadata: dict[str, str]) -> str: ...
    async def status(self, submission_id: str) -> dict[str, Any]: ...


def pipeline_file(folder: Path, name: str) -> Path:
    """``folder/<name>.yaml``; a name that is not a plain file name is refused."""
    if not _NAME.match(name):
        raise InvalidInputError(field="pipeline", value=name, allowed="letters, digits, _ . -")
    for suffix in (".yaml", ".yml"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return path
    raise NotFoundError(
        kind="pipeline", name=name, fix=f"known pipelines: {', '.join(known(folder)) or 'none'}"
    )


def known(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.y*ml")) if folder.is_dir() else []


def pipelines_router(folder: Path, launcher: JobLauncher, state: IngestState) -> APIRouter:
    router = APIRouter(prefix="/pipelines", tags=["pipelines"])
    read = Depends(permission("platform:read"))

    @router.get("", dependencies=[read], summary="Pipelines that can be run by name.")
    def list_pipelines() -> list[str]:  # sync: FastAPI runs it in its thread pool
        return known(folder)

    @router.post(
        "/{name}/runs",
        status_code=202,
        dependencies=[Depends(permission("pipeline:run"))],
        summary="Submit a run as a Ray job; poll its status with the returned id.",
    )
    async def submit_run(name: str, request: Request) -> dict[str, Any]:
        path = await asyncio.to_thread(pipeline_file, folder, name)
        if grants.is_restricted(access.principal_of(request)):
            # Scoped grants name tables: the one this pipeline writes.
            spec = await asyncio.to_thread(load_pipeline, path)
            access.check_table(request, "pipeline:run", spec.sink.table)
        job = await launcher.submit(f"python -m jobs.ingest {path}", {"datapunk.pipeline": name})
        return {"pipeline": name, "submission_id": job, "status": "PENDING"}

    @router.get("/{name}/runs/{submission_id}", dependencies=[read], summary="A job's status.")
    async def job_status(name: str, submission_id: str) -> dict[str, Any]:
        return {"pipeline": name, **(await launcher.status(submission_id))}

    @router.get("/{name}/records", dependencies=[read], summary="Run records, newest first.")
    async def records(name: str, limit: int = 20) -> list[dict[str, Any]]:
        return [asdict(r) for r in await state.list_runs(name, limit=limit)]

    return router
