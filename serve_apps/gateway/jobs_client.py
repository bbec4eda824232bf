"""Ray's Job Submission API for the gateway (the Ray side of ``routes_pipelines``)."""

from __future__ import annotations

import asyncio
from typing import Any

from cluster.errors import NotFoundError


class RayJobLauncher:
    """Submits and inspects Ray jobs through the head's dashboard (token auth applies)."""

    def __init__(self, dashboard_url: str) -> None:
        self.dashboard_url = dashboard_url
        self._client: Any = None

    def _jobs(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.dashboard_url)
        return self._client

    async def submit(self, entrypoint: str, metadata: dict[str, str]) -> str:
        def go() -> str:
            return str(self._jobs().submit_job(entrypoint=entrypoint, metadata=metadata))

        return await asyncio.to_thread(go)

    async def status(self, submission_id: str) -> dict[str, Any]:
        def go() -> dict[str, Any]:
            try:
                info = self._jobs().get_job_info(submission_id)
            except RuntimeError:
                raise NotFoundError(kind="job", name=submission_id) from None
            return {
                "submission_id": submission_id,
                "status": str(getattr(info.status, "value", info.status)),
                "message": info.message,
                "logs_tail": self._jobs().get_job_logs(submission_id)[-2000:],
            }

        return await asyncio.to_thread(go)
