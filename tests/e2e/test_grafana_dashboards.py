"""Every metric a Grafana dashboard panel reads is one the running platform really exports.

Traffic first (gateway calls, a Lake append and scan, a prediction from a freshly
registered tiny model), because Ray exports a ``ray.util.metrics`` series only after its
first use. Then the gateway's ``/metrics`` and Ray's exporter (settings
``ray.metrics_export_port``) are scraped until every name the dashboards' PromQL reads is
there. Some names cannot be seen live here, and are checked otherwise:

- ``up``, which Prometheus writes itself for each target it scrapes: skipped.
- Counters that only a failure increments (dead prediction-log rows): checked against
  the names our code declares to ``ray.util.metrics`` (Ray adds the ``ray_`` prefix).
- Stream's series (``ray_datapunk_stream_*``): also checked against the declared names.
  Making them live takes a deployed topology, and topologies cannot be removed (only
  stopped), while test_platform.py, later on this same platform, asserts that
  `datapunk stream ls` lists its own topology and nothing else. test_platform.py's
  stream test does read ``datapunk_stream_events_total`` from this same exporter.

The file name sorts before test_platform.py, whose last test stops the platform.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
from ray.util.metrics import Metric

from actors.lake.metrics import LakeMetrics
from actors.stream.metrics import StreamMetrics
from serve_apps.cortex.metrics import CortexMetrics
from tests.e2e.conftest import BIN, PORTS, Platform, run
from tests.grafana_support import (
    RAY_PREFIX,
    dashboard_metric_names,
    declared_name,
    scraped_names,
)

REPO = Path(__file__).resolve().parents[2]
MODEL, FEATURES_TABLE = "e2e_grafana", "e2e_grafana.features"
LAKE_TABLE = "e2e_grafana.readings"
DEADLINE_S = 120  # Ray's exporter reports ray.util.metrics every few seconds
# Written by Prometheus itself per scrape target; never in an exporter's /metrics.
PROMETHEUS_SYNTHETIC = frozenset({"up"})
# Incremented only when a failure happens, so absent from a healthy run.
FAILURE_ONLY = frozenset({"ray_datapunk_cortex_log_dropped_rows_total"})
# See the module docstring: no topology is deployed here.
STREAM_PREFIX = "ray_datapunk_stream_"

REGISTER = f"""
import asyncio, json, sys
sys.path.insert(0, {str(REPO)!r})
from cluster.settings import load_settings
from tests.unit.test_cortex_scoring import FEATURES, register_tiny_model, source_rows, write_table

settings = load_settings()
rows = source_rows(10)
snapshot = asyncio.run(write_table(settings, "{FEATURES_TABLE}", rows))
asyncio.run(register_tiny_model(settings, "{MODEL}", "regression", table="{FEATURES_TABLE}",
                                snapshot_id=snapshot))
print(json.dumps(rows.select(FEATURES).to_pylist()))
"""


def _key(platform: Platform, role: str) -> dict[str, str]:
    created = platform.datapunk("keys", "create", "--role", role, "--json")
    assert created.returncode == 0, created.stderr
    return {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}


def _gateway_and_lake_traffic(platform: Platform, api: httpx.Client) -> None:
    for _ in range(3):
        assert api.get("/healthz").status_code == 200
    assert api.get("/api/v1/whoami").status_code == 401  # an error, by route and status
    engineer = _key(platform, "engineer")
    columns = [{"name": "id", "type": "long", "required": True}, {"name": "v", "type": "double"}]
    made = api.post("/api/v1/lake/namespaces", json={"name": "e2e_grafana"}, headers=engineer)
    assert made.status_code in (201, 409), made.text
    table = api.post(
        "/api/v1/lake/tables", json={"name": LAKE_TABLE, "columns": columns}, headers=engineer
    )
    assert table.status_code == 201, table.text
    rows = [{"id": 1, "v": 1.5}, {"id": 2, "v": 2.5}]
    appended = api.post(f"/api/v1/lake/tables/{LAKE_TABLE}/append", json=rows, headers=engineer)
    assert appended.status_code == 200, appended.text
    scanned = api.post(f"/api/v1/lake/tables/{LAKE_TABLE}/query", json={}, headers=engineer)
    assert scanned.status_code == 200, scanned.text


def _prediction(platform: Platform, api: httpx.Client) -> None:
    done = run([str(BIN / "python"), "-c", textwrap.dedent(REGISTER)], platform.env, 180)
    assert done.returncode == 0, done.stdout + done.stderr
    features = json.loads(done.stdout.strip().splitlines()[-1])
    service = _key(platform, "service")
    answer = api.post(
        f"/api/v1/models/{MODEL}/predict", json={"instances": features[:3]}, headers=service
    )
    assert answer.status_code == 200, answer.text


def _declared() -> set[str]:
    """The names our code gives ray.util.metrics (Ray exports them with ``ray_``)."""
    owners: list[Any] = [StreamMetrics("probe"), CortexMetrics(), LakeMetrics()]
    found: set[str] = set()
    for owner in owners:
        for value in vars(owner).values():
            candidates = value.values() if isinstance(value, dict) else [value]
            found |= {m.info["name"] for m in candidates if isinstance(m, Metric)}
    return found


def _live(platform: Platform) -> set[str]:
    gateway = httpx.get(f"{platform.gateway}/metrics", timeout=10)
    ray = httpx.get(f"http://127.0.0.1:{PORTS['metrics']}/metrics", timeout=10)
    assert gateway.status_code == 200 and ray.status_code == 200
    return scraped_names(gateway.text) | scraped_names(ray.text)


def test_every_panel_reads_metrics_the_running_platform_exports(platform: Platform) -> None:
    with httpx.Client(base_url=platform.gateway, timeout=60) as api:
        _gateway_and_lake_traffic(platform, api)
        _prediction(platform, api)

    used = dashboard_metric_names()
    assert set(used) >= FAILURE_ONLY, "FAILURE_ONLY names a metric no panel reads any more"
    by_declaration = FAILURE_ONLY | {name for name in used if name.startswith(STREAM_PREFIX)}
    wanted = set(used) - PROMETHEUS_SYNTHETIC - by_declaration
    deadline = time.monotonic() + DEADLINE_S
    while missing := wanted - _live(platform):
        if time.monotonic() > deadline:
            where = {name: sorted(used[name]) for name in sorted(missing)}
            raise AssertionError(f"not exported by the running platform: {where}")
        time.sleep(2)

    declared = _declared()
    assert len(by_declaration) > 5  # Stream's panels are there and were checked this way
    for name in by_declaration:
        assert name.startswith(RAY_PREFIX) and declared_name(name) in declared, name
