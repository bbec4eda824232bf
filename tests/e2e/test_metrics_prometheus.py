"""Debian's real Prometheus scrapes the running platform with configs/prometheus/prometheus.yml.

The shipped config is rewritten only where the test platform differs (its private
gateway port, its Ray temp dir, a 1 s interval, no Alertmanager), so its jobs, the
`/metrics` path, Ray's service-discovery file and alerts.yml are the ones users get.
The file name sorts before test_platform.py, whose last test stops the platform.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cluster.ray_runtime import temp_dir
from cluster.settings import Settings
from tests.e2e.conftest import PORTS, Platform
from tests.prometheus_support import CONFIG_DIR, prometheus_tools

PROMETHEUS_PORT = 29090  # private, like the platform's ports in conftest.PORTS
DISCOVERY_FILE = "prom_metrics_service_discovery.json"
DEADLINE_S = 60
TABLE = "e2e_metrics.readings"


def _config(discovery: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(CONFIG_DIR / "alerts.yml")]
    del config["alerting"]  # no Alertmanager here: amtool checks its config
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["datapunk-gateway"]["static_configs"] = [{"targets": [f"127.0.0.1:{PORTS['gateway']}"]}]
    jobs["ray"]["file_sd_configs"][0].update(files=[str(discovery)], refresh_interval="1s")
    return config


@pytest.fixture
def prometheus(platform: Platform, tmp_path: Path) -> Iterator[httpx.Client]:
    tools = prometheus_tools()
    settings = Settings(ray={"port": PORTS["ray"]})
    discovery = temp_dir(settings) / DISCOVERY_FILE
    assert discovery.exists(), f"Ray wrote no service-discovery file at {discovery}"
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(_config(discovery)))
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", PROMETHEUS_PORT)) != 0, "port 29090 is taken"
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            tools.prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{PROMETHEUS_PORT}", timeout=5) as client:
            _wait(lambda: _ready(client), "Prometheus to get ready", tmp_path)
            yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _ready(client: httpx.Client) -> bool:
    try:
        return client.get("/-/ready").status_code == 200
    except httpx.TransportError:
        return False


def _wait(check: Any, what: str, tmp_path: Path | None = None) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    log = (tmp_path / "prometheus.log").read_text()[-3000:] if tmp_path else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def _query(client: httpx.Client, promql: str) -> list[dict[str, Any]]:
    answer = client.get("/api/v1/query", params={"query": promql}).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


def _lake_traffic(platform: Platform) -> None:
    """One table, one append (a commit), one scan, through the gateway and the Lake pool."""
    created = platform.datapunk("keys", "create", "--role", "engineer", "--json")
    assert created.returncode == 0, created.stderr
    engineer = {"Authorization": f"Bearer {json.loads(created.stdout)['key']}"}
    columns = [{"name": "id", "type": "long", "required": True}, {"name": "v", "type": "double"}]
    with httpx.Client(base_url=f"{platform.gateway}/api/v1/lake", timeout=60) as lake:
        made = lake.post("/namespaces", json={"name": "e2e_metrics"}, headers=engineer)
        assert made.status_code == 201, made.text
        table = lake.post("/tables", json={"name": TABLE, "columns": columns}, headers=engineer)
        assert table.status_code == 201, table.text
        rows = [{"id": 1, "v": 1.5}, {"id": 2, "v": 2.5}]
        appended = lake.post(f"/tables/{TABLE}/append", json=rows, headers=engineer)
        assert appended.status_code == 200, appended.text
        scanned = lake.post(f"/tables/{TABLE}/query", json={}, headers=engineer)
        assert scanned.status_code == 200, scanned.text


def test_prometheus_scrapes_gateway_and_ray_and_evaluates_the_alerts(
    platform: Platform, prometheus: httpx.Client
) -> None:
    with httpx.Client(base_url=platform.gateway, timeout=10) as gateway:
        for _ in range(5):
            assert gateway.get("/healthz").status_code == 200
        for _ in range(3):
            assert gateway.get("/api/v1/whoami").status_code == 401
    _lake_traffic(platform)

    # The traffic, read back through Prometheus's HTTP API.
    def healthz_count() -> float:
        series = _query(
            prometheus, 'sum(datapunk_gateway_requests_total{route="/healthz",status="200"})'
        )
        return float(series[0]["value"][1]) if series else 0.0

    _wait(lambda: healthz_count() >= 5, "5 /healthz requests in Prometheus")
    refused = _wait(
        lambda: _query(prometheus, 'datapunk_gateway_errors_total{status="401"}'),
        "the 401s in datapunk_gateway_errors_total",
    )
    assert sum(float(s["value"][1]) for s in refused) >= 3

    # Both jobs are scraped; Ray's targets come from its service-discovery file.
    targets = prometheus.get("/api/v1/targets", params={"state": "active"}).json()
    jobs = {t["labels"]["job"]: t for t in targets["data"]["activeTargets"]}
    assert set(jobs) == {"datapunk-gateway", "ray"}, jobs
    healthy = _wait(
        lambda: _query(prometheus, "ray_serve_deployment_replica_healthy"),
        "Serve's replica health from Ray's exporter",
    )
    assert all(float(s["value"][1]) >= 1 for s in healthy), healthy

    # The Lake actor's ray.util.metrics counters, through Ray's exporter.
    commits = _wait(
        lambda: _query(
            prometheus, f'ray_datapunk_lake_commits_total{{table="{TABLE}",operation="append"}}'
        ),
        "the Lake commit counter",
    )
    assert sum(float(s["value"][1]) for s in commits) >= 1
    scans = _wait(
        lambda: _query(
            prometheus, f'ray_datapunk_lake_scan_bytes_total{{table="{TABLE}",method="scan"}}'
        ),
        "the Lake scan-bytes counter",
    )
    assert sum(float(s["value"][1]) for s in scans) > 0

    # alerts.yml is loaded and every rule evaluates cleanly against the real series.
    def rules() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules").json()["data"]["groups"]
        found = [rule for group in groups for rule in group["rules"]]
        return (
            found
            if found and all(r.get("lastEvaluation", "0001").startswith("2") for r in found)
            else []
        )

    loaded = _wait(rules, "alerts.yml to be evaluated")
    assert {r["name"] for r in loaded} >= {
        "DatapunkGateway5xxRate",
        "DatapunkGatewayP99Latency",
        "DatapunkStreamLag",
        "DatapunkStreamDeadLettersGrowing",
        "DatapunkReplicaDown",
    }
    assert all(r["health"] == "ok" for r in loaded), loaded
    firing = _query(prometheus, 'ALERTS{alertname="DatapunkReplicaDown"}')
    assert firing == [], firing
