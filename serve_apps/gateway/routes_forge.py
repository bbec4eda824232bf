"""``/api/v1/forge``: start training runs as Ray jobs and read their records.

``POST /forge/runs`` takes a training spec as JSON, validates it here (a bad spec is a
422 listing its problems, and no job starts), writes it under
``<data_dir>/forge/specs/<run_id>.yaml`` and submits ``python -m jobs.train <path>``
through Ray's Job Submission API, as pipeline runs are. The job validates the data, pins
the snapshot and keeps the run record, which ``GET /forge/runs[/{run_id}]`` reads, per
trial. Posting the same spec again resumes its run. Starting needs ``model:train``;
reading needs ``model:read``.
"""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import yaml
from fastapi import APIRouter, Body, Depends, Query, Request

from actors.forge.spec import load_train_spec, run_id_for
from cluster.errors import NotFoundError
from cluster.security import grants
from serve_apps.gateway import access
from serve_apps.gateway.auth import permission
from serve_apps.gateway.routes_pipelines import JobLauncher

__all__ = ["ForgeBackend", "RunReader", "forge_router", "write_spec"]

READ = Depends(permission("model:read"))
TRAIN = Depends(permission("model:train"))


class RunReader(Protocol):
    """The run records as the routes read them (``ForgeRunStore``)."""

    async def get(self, run_id: str) -> dict[str, Any] | None: ...
    async def list(self, limit: int = 50, name: str | None = None) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class ForgeBackend:
    """What the routes use: where specs go, who runs the job, where records are."""

    specs_dir: Path
    launcher: JobLauncher
    runs: RunReader


def write_spec(folder: Path, spec: Any) -> Path:
    """Write the validated spec as ``folder/<run_id>.yaml``; the job reads it from there."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{run_id_for(spec)}.yaml"
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # a job never reads half a file
    return path


def forge_router(backend: ForgeBackend) -> APIRouter:
    router = APIRouter(prefix="/forge", tags=["forge"])

    @router.post(
        "/runs",
        status_code=202,
        dependencies=[TRAIN],
        summary="Validate a training spec and submit its run as a Ray job.",
    )
    async def submit_run(
        request: Request,
        spec: Annotated[dict[str, Any], Body(description="A training spec, as in YAML.")],
        fresh: bool = False,
    ) -> dict[str, Any]:
        validated = load_train_spec(spec)
        # A run reads its table and registers its model: model:train must reach both.
        access.check(request, "model:train", grants.model(validated.model_name))
        access.check_table(request, "model:train", validated.data.table)
        path = await asyncio.to_thread(write_spec, backend.specs_dir, validated)
        run_id = run_id_for(validated)
        principal = request.state.principal
        command = ["python", "-m", "jobs.train", str(path), "--created-by", principal.key_id]
        if fresh:
            command.append("--fresh")
        metadata = {"datapunk.forge.run": run_id, "datapunk.forge.name": validated.name}
        job = await backend.launcher.submit(shlex.join(command), metadata)
        existing = await backend.runs.get(run_id)
        return {
            "run_id": run_id,
            "name": validated.name,
            "submission_id": job,
            "status": "PENDING",
            "resumes": existing is not None and existing["state"] != "succeeded" and not fresh,
        }

    @router.get("/runs", dependencies=[READ], summary="Training runs, newest first.")
    async def list_runs(
        request: Request,
        name: Annotated[str | None, Query(max_length=80)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> list[dict[str, Any]]:
        runs = await backend.runs.list(limit=limit, name=name)
        return access.visible(request, "model:read", runs, access.model_of_run)

    @router.get(
        "/runs/{run_id}",
        dependencies=[READ],
        summary="One run: state, pinned snapshot, per-trial metrics, best trial, model.",
    )
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        record = await backend.runs.get(run_id)
        # A run of a model outside the caller's grants is answered as a missing run.
        if record is not None and not access.visible(
            request, "model:read", [record], access.model_of_run
        ):
            access.note_denied(request, access.model_of_run(record))
            record = None
        if record is None:
            raise NotFoundError(
                kind="training run", name=run_id, fix="list them with GET /api/v1/forge/runs"
            )
        return record

    @router.get(
        "/jobs/{submission_id}", dependencies=[READ], summary="The Ray job of a submitted run."
    )
    async def job_status(submission_id: str, request: Request) -> dict[str, Any]:
        # A job id names no model: a restricted caller needs model:read on '*'.
        access.check(request, "model:read", None)
        return await backend.launcher.status(submission_id)

    return router
