"""configs/prometheus: valid for Prometheus's own tools, aimed at what `datapunk up` runs,
and every alert names a metric the platform exports and fires when it should.

promtool and amtool come from Debian's packages (tests/prometheus_support.py installs
them when missing); `promtool test rules` replays synthetic series through alerts.yml.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families
from ray.util.metrics import Histogram, Metric

from actors.stream.metrics import StreamMetrics
from serve_apps.cortex.metrics import CortexMetrics
from serve_apps.gateway.metrics import GatewayMetrics
from tests.prometheus_support import CONFIG_DIR, REPO, prometheus_tools

# Exported by Ray itself: Serve's controller gauge and Prometheus's own scrape health.
# tests/e2e/test_metrics_prometheus.py reads ray_serve_deployment_replica_healthy back.
RAY_AND_PROMETHEUS = {"ray_serve_deployment_replica_healthy", "up"}


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=CONFIG_DIR)


def _load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIG_DIR / name).read_text())
    return loaded


def test_promtool_and_amtool_accept_the_configs() -> None:
    tools = prometheus_tools()
    config = _run(tools.promtool, "check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = _run(tools.promtool, "check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    alertmanager = _run(tools.amtool, "check-config", "alertmanager.yml")
    assert alertmanager.returncode == 0, alertmanager.stdout + alertmanager.stderr
    assert "1 receivers" in alertmanager.stdout


def test_scrape_targets_are_the_platform_defaults() -> None:
    defaults = yaml.safe_load((REPO / "configs" / "datapunk.yaml").read_text())
    jobs = {job["job_name"]: job for job in _load("prometheus.yml")["scrape_configs"]}
    gateway = jobs["datapunk-gateway"]
    assert gateway["metrics_path"] == "/metrics"
    host = defaults["gateway"]["host"]
    assert gateway["static_configs"] == [{"targets": [f"{host}:{defaults['gateway']['port']}"]}]
    # cluster.ray_runtime.temp_dir: Ray links its discovery file into <tmp>/datapunk-<port>.
    [files] = [sd["files"] for sd in jobs["ray"]["file_sd_configs"]]
    assert files == [f"/tmp/datapunk-{defaults['ray']['port']}/prom_metrics_service_discovery.json"]


def _gateway_names() -> set[str]:
    metrics = GatewayMetrics.create()
    metrics.requests.labels("/r", "GET", "500").inc()
    metrics.latency.labels("/r", "GET").observe(0.1)
    metrics.errors.labels("/r", "500").inc()
    families = text_string_to_metric_families(metrics.render().decode())
    return {sample.name for family in families for sample in family.samples}


def _ray_names(owner: object) -> set[str]:
    """The series names Ray's exporter gives an object's ray.util.metrics metrics."""
    found: list[Metric] = []
    for value in vars(owner).values():
        found.extend(v for v in (value.values() if isinstance(value, dict) else [value]))
    names: set[str] = set()
    for metric in (m for m in found if isinstance(m, Metric)):
        name = "ray_" + metric.info["name"]
        suffixes = ("_bucket", "_sum", "_count") if isinstance(metric, Histogram) else ("",)
        names.update(name + suffix for suffix in suffixes)
    return names


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load("alerts.yml")["groups"] for rule in group["rules"]]


def test_every_alert_names_exported_metrics() -> None:
    exported = (
        _gateway_names()
        | _ray_names(StreamMetrics("t"))
        | _ray_names(CortexMetrics())
        | RAY_AND_PROMETHEUS
    )
    functions = {"sum", "max", "rate", "increase", "histogram_quantile"}
    for rule in _alert_rules():
        # Drop label matchers, strings, range selectors and grouping clauses.
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]|\bby\s*\([^)]*\)', "", rule["expr"])
        names = set(re.findall(r"[a-z_][a-z0-9_]*", expr)) - functions
        assert names, rule["alert"]
        assert names <= exported, f"{rule['alert']} names unexported {names - exported}"
    assert {r["alert"] for r in _alert_rules()} == {
        "DatapunkGateway5xxRate",
        "DatapunkGatewayP99Latency",
        "DatapunkStreamLag",
        "DatapunkStreamDeadLettersGrowing",
        "DatapunkReplicaDown",
        "DatapunkScrapeTargetDown",
    }


_ROUTE = 'route="/api/v1/predict",method="POST"'
_BUCKET = "datapunk_gateway_request_duration_seconds_bucket{" + _ROUTE + ',le="%s"}'
_TROUBLE = {
    # 10% of answers are 5xx.
    "datapunk_gateway_requests_total{" + _ROUTE + ',status="200"}': "0+90x20",
    "datapunk_gateway_requests_total{" + _ROUTE + ',status="500"}': "0+10x20",
    # Half the requests take over 1 s: p99 is about 2.5 s.
    _BUCKET % "1.0": "0+50x20",
    _BUCKET % "2.5": "0+100x20",
    _BUCKET % "+Inf": "0+100x20",
    'ray_datapunk_stream_event_time_lag_seconds{topology="orders",operator="source"}': "600x20",
    'ray_datapunk_stream_dead_letters_total{topology="orders",operator="source"}': "0+1x20",
    'ray_serve_deployment_replica_healthy{application="cortex",deployment="Cortex"}': "1 1 0x18",
    'up{job="ray",instance="127.0.0.1:8266"}': "1 1 0x18",
}
_CALM = {
    "datapunk_gateway_requests_total{" + _ROUTE + ',status="200"}': "0+100x20",
    "datapunk_gateway_requests_total{" + _ROUTE + ',status="500"}': "0x20",
    _BUCKET % "1.0": "0+100x20",
    _BUCKET % "+Inf": "0+100x20",
    'ray_datapunk_stream_event_time_lag_seconds{topology="orders",operator="source"}': "5x20",
    'ray_datapunk_stream_dead_letters_total{topology="orders",operator="source"}': "3x20",
    'ray_serve_deployment_replica_healthy{application="cortex",deployment="Cortex"}': "2x20",
    'up{job="ray",instance="127.0.0.1:8266"}': "1x20",
}
_FIRED = {
    "DatapunkGateway5xxRate": {"severity": "page"},
    "DatapunkGatewayP99Latency": {"severity": "warning", "route": "/api/v1/predict"},
    "DatapunkStreamLag": {"severity": "warning", "topology": "orders"},
    "DatapunkStreamDeadLettersGrowing": {"severity": "warning", "topology": "orders"},
    "DatapunkReplicaDown": {"severity": "page", "application": "cortex", "deployment": "Cortex"},
    "DatapunkScrapeTargetDown": {"severity": "page", "job": "ray", "instance": "127.0.0.1:8266"},
}


def _scenario(series: dict[str, str], fired: bool) -> dict[str, Any]:
    return {
        "interval": "1m",
        "input_series": [{"series": name, "values": values} for name, values in series.items()],
        "alert_rule_test": [
            {"eval_time": "15m", "alertname": alert, "exp_alerts": [{"exp_labels": labels}]}
            if fired
            else {"eval_time": "15m", "alertname": alert, "exp_alerts": []}
            for alert, labels in _FIRED.items()
        ],
    }


def test_alerts_fire_on_trouble_and_stay_quiet_otherwise(tmp_path: Path) -> None:
    tools = prometheus_tools()
    # promtool compares annotations too; their wording is for people, not under test.
    rules = _load("alerts.yml")
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    suite = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [_scenario(_TROUBLE, fired=True), _scenario(_CALM, fired=False)],
    }
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(suite))
    result = subprocess.run(
        [tools.promtool, "test", "rules", "alerts_test.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
