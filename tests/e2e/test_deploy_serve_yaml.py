"""Ray's own `serve deploy configs/serve.yaml` on a running platform redeploys the gateway
and Cortex with the builders `datapunk up` uses, and both come back healthy.

The test deploys a copy of configs/serve.yaml written to tmp, changed in one place only:
``http_options.port``. The shipped file names the developer default (8000, as
configs/datapunk.yaml does), while this platform's Serve listens on a private port
(conftest.PORTS) so a developer's own platform is neither used nor disturbed. Serve's HTTP
options are fixed when Serve starts; a config naming another port describes a different
proxy than the one running, so the copy states this cluster's port. ``args`` stay ``{}``:
the builders read the same DATAPUNK_* settings the platform's Ray processes inherited.
The file name sorts before test_platform.py, whose last test stops the platform.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.conftest import BIN, PORTS, Platform, run

REPO = Path(__file__).resolve().parents[2]
SERVE_YAML = REPO / "configs" / "serve.yaml"
DEADLINE_S = 180
# What `datapunk up` deploys (cluster/platform.py deploy): application -> deployments.
APPS = {"gateway": {"Gateway"}, "cortex": {"CortexModels"}}


def _serve(platform: Platform, *args: str) -> Any:
    address = f"http://127.0.0.1:{PORTS['dashboard']}"
    done = run([str(BIN / "serve"), *args, "-a", address], platform.ray_env(), 120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _status(platform: Platform) -> dict[str, Any]:
    shown = yaml.safe_load(_serve(platform, "status"))
    return dict(shown.get("applications") or {})


def _healthy(apps: dict[str, Any]) -> bool:
    return all(
        name in apps
        and apps[name]["status"] == "RUNNING"
        and set(apps[name]["deployments"]) == deployments
        and all(d["status"] == "HEALTHY" for d in apps[name]["deployments"].values())
        for name, deployments in APPS.items()
    )


def _redeployed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    return all(
        after[name]["last_deployed_time_s"] > before[name]["last_deployed_time_s"] for name in APPS
    )


def _e2e_config(tmp_path: Path) -> Path:
    config = yaml.safe_load(SERVE_YAML.read_text())
    config["http_options"]["port"] = PORTS["gateway"]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_serve_deploy_redeploys_gateway_and_cortex_as_datapunk_up_does(
    platform: Platform, tmp_path: Path
) -> None:
    before = _status(platform)
    assert _healthy(before), before
    shipped = yaml.safe_load(SERVE_YAML.read_text())
    assert {app["name"]: app["import_path"] for app in shipped["applications"]} == {
        "gateway": "serve_apps.gateway:app",
        "cortex": "serve_apps.cortex:app",
    }

    _serve(platform, "deploy", str(_e2e_config(tmp_path)))

    # `serve config` answers only for applications deployed from a config file: both are
    # now the serve.yaml ones, built by the import paths above.
    deployed = {app["name"]: app for app in yaml.safe_load_all(_serve(platform, "config"))}
    assert {name: app["import_path"] for name, app in deployed.items()} == {
        "gateway": "serve_apps.gateway:app",
        "cortex": "serve_apps.cortex:app",
    }
    assert deployed["gateway"]["route_prefix"] == "/"
    assert deployed["cortex"].get("route_prefix") is None

    # Healthy again, and redeployed by this call (not the state `up` left behind).
    deadline = time.monotonic() + DEADLINE_S
    while not (_healthy(after := _status(platform)) and _redeployed(before, after)):
        assert time.monotonic() < deadline, after
        time.sleep(2)

    created = platform.datapunk("keys", "create", "--role", "analyst", "--json")
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)["key"]
    with httpx.Client(base_url=platform.gateway, timeout=30) as api:
        assert api.get("/readyz").status_code == 200
        me = api.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert me.status_code == 200, me.text
        assert api.get("/api/v1/whoami").status_code == 401
    status = platform.datapunk("status")
    assert status.returncode == 0, status.stdout + status.stderr
