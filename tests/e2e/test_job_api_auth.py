"""Ray's Job API on the platform `datapunk up` started: no token, no jobs."""

from __future__ import annotations

import httpx

from cluster.ray_exposure import anonymous_job_api_status, check_job_api_protected
from tests.e2e.conftest import PORTS, Platform


def test_the_job_api_refuses_callers_without_the_token(platform: Platform) -> None:
    dashboard = f"http://127.0.0.1:{PORTS['dashboard']}"
    assert anonymous_job_api_status(dashboard) in (401, 403)
    assert check_job_api_protected(dashboard, wait_s=5) in (401, 403)
    wrong = httpx.get(
        f"{dashboard}/api/jobs/", headers={"Authorization": "Bearer " + "0" * 64}, timeout=10
    )
    assert wrong.status_code in (401, 403)
    token = (platform.data_dir / "ray" / "auth_token").read_text().strip()
    right = httpx.get(
        f"{dashboard}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert right.status_code == 200, right.text
    assert isinstance(right.json(), list)
