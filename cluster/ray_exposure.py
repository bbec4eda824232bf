"""Keeping Ray's own doors shut: the dashboard, its Job API and the GCS.

Ray's Job API runs arbitrary code for whoever reaches it, so ``datapunk up``:

* refuses to bind the dashboard (``ray.dashboard_host``) or the head
  (``ray.node_ip_address``) beyond loopback unless Ray's token authentication is on
  with a private token file (``check_ray_exposure``, before ``ray start``);
* once the head answers, asks its Job API for the job list *without* a token and
  refuses to go on if it gets one (``check_job_api_protected``): whatever the
  configuration says, what matters is what the running cluster does.
"""

from __future__ import annotations

import ipaddress
import logging
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from cluster.errors import PlatformStateError
from cluster.settings import Settings

logger = logging.getLogger(__name__)
JOB_API_PATH = "/api/jobs/"
REFUSED = (401, 403)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: assume it resolves beyond this machine


def _token_problem(env: Mapping[str, str]) -> str | None:
    if env.get("RAY_AUTH_MODE", "").lower() != "token":
        return f"RAY_AUTH_MODE is {env.get('RAY_AUTH_MODE') or 'unset'!r}, not 'token'"
    path = env.get("RAY_AUTH_TOKEN_PATH")
    if not path or not Path(path).is_file():
        return f"the token file RAY_AUTH_TOKEN_PATH={path!r} does not exist"
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        return f"the token file {path} has mode {mode:04o} (others can read it)"
    return None


def check_ray_exposure(settings: Settings, env: Mapping[str, str]) -> None:
    """Refuse non-loopback Ray binds unless token auth is on (``env`` is Ray's)."""
    exposed = [
        f"{key}={host}"
        for key, host in (
            ("ray.dashboard_host", settings.ray.dashboard_host),
            ("ray.node_ip_address", settings.ray.node_ip_address),
        )
        if not is_loopback(host)
    ]
    if not exposed:
        return
    problem = _token_problem(env)
    if problem is not None:
        raise PlatformStateError(
            f"{', '.join(exposed)} exposes Ray's dashboard and Job API beyond this machine "
            f"without token authentication ({problem}); bind them to 127.0.0.1, or keep "
            "RAY_AUTH_MODE=token with a 0600 token file"
        )
    logger.warning("Ray listens beyond loopback (token auth on)", extra={"binds": exposed})


def anonymous_job_api_status(dashboard_url: str, timeout_s: float = 5.0) -> int:
    """The HTTP status Ray's Job API gives a caller with no token (200 would be open)."""
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        return client.get(dashboard_url.rstrip("/") + JOB_API_PATH).status_code


def check_job_api_protected(dashboard_url: str, wait_s: float = 20.0) -> int | None:
    """Refuse a Job API that answers without a token; return its status (None: no answer
    within ``wait_s``, e.g. a cluster without a dashboard)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            status = anonymous_job_api_status(dashboard_url)
            break
        except httpx.HTTPError:
            if time.monotonic() >= deadline:
                logger.warning("Ray's dashboard did not answer", extra={"url": dashboard_url})
                return None
            time.sleep(0.5)
    if status in REFUSED:
        return status
    where = urlsplit(dashboard_url).hostname or dashboard_url
    scope = "this machine" if is_loopback(where) else "the network"
    raise PlatformStateError(
        f"Ray's Job API at {dashboard_url} answered {status} to a call without a token: "
        f"anyone on {scope} could run code on the cluster; start Ray with "
        "RAY_AUTH_MODE=token (Datapunk's own head always does)"
    )
