"""The Grafana dashboards and provisioning files are well-formed, and the PromQL
tokenizer the live check relies on (tests/e2e/test_grafana_dashboards.py) reads names right.

That every metric a panel names is really exported is checked against a running platform
in the e2e test; this file needs no Ray.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.grafana_support import (
    DASHBOARDS,
    FUNCTIONS,
    GRAFANA_DIR,
    declared_name,
    expressions,
    function_names,
    load_dashboards,
    metric_names,
    panels,
    scraped_names,
)

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@pytest.fixture(scope="module")
def boards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def test_every_dashboard_named_in_the_issue_is_shipped_with_a_unique_uid_and_title(
    boards: dict[str, dict[str, Any]],
) -> None:
    assert set(boards) == set(DASHBOARDS)
    uids = [board["uid"] for board in boards.values()]
    titles = [board["title"] for board in boards.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    for stem, board in boards.items():
        assert board["uid"] == f"datapunk-{stem}"
        assert len(board["uid"]) <= 40  # Grafana's limit on dashboard uids
        assert board["title"].startswith("Datapunk / ")
        assert isinstance(board["schemaVersion"], int) and board["description"]


def test_each_dashboard_selects_its_prometheus_through_the_ds_variable(
    boards: dict[str, dict[str, Any]],
) -> None:
    for board in boards.values():
        variables = {v["name"]: v for v in board["templating"]["list"]}
        assert variables["DS_PROMETHEUS"]["type"] == "datasource"
        assert variables["DS_PROMETHEUS"]["query"] == "prometheus"


def test_every_panel_has_a_prometheus_target_a_unique_id_and_a_place_on_the_grid(
    boards: dict[str, dict[str, Any]],
) -> None:
    for stem, board in boards.items():
        found = list(panels(board))
        assert found, stem
        ids = [panel["id"] for panel in found]
        assert len(set(ids)) == len(ids), stem
        for panel in found:
            where = f"{stem}: {panel['title']}"
            assert panel["datasource"] == DATASOURCE, where
            assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, where
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, where
            assert panel["targets"], where
            ref_ids = [target["refId"] for target in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), where
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, where
                assert target["expr"].strip(), where


def test_every_expression_reads_a_metric_and_calls_only_promql_functions(
    boards: dict[str, dict[str, Any]],
) -> None:
    for stem, board in boards.items():
        for title, expr in expressions(board):
            assert metric_names(expr), f"{stem}: {title}: {expr}"
            assert function_names(expr) <= FUNCTIONS, f"{stem}: {title}: {expr}"
            assert expr.count("(") == expr.count(")"), f"{stem}: {title}: {expr}"
            assert expr.count("{") == expr.count("}"), f"{stem}: {title}: {expr}"


def test_forge_says_it_has_no_metrics_of_its_own(boards: dict[str, dict[str, Any]]) -> None:
    assert "no metrics of its own" in boards["forge"]["description"]


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('sum by (job) (up{job=~"a|b"})', {"up"}),
        (
            "histogram_quantile(0.99, sum by (route, le) "
            "(rate(datapunk_gateway_request_duration_seconds_bucket[$__rate_interval])))",
            {"datapunk_gateway_request_duration_seconds_bucket"},
        ),
        (
            'sum(rate(a_total{status=~"5.."}[5m])) / clamp_min(sum(rate(a_total[5m])), 1e-9)',
            {"a_total"},
        ),
        ("sum(x) by (le) / on(job) group_left(instance) y offset 5m", {"x", "y"}),
        ('label_replace(z, "dst", "$1", "src", "(by|on).*")', {"z"}),
        ("rate(x[5m:30s]) > bool 0.5 and ray_y{State='ALIVE'}", {"x", "ray_y"}),
        ("max_over_time(q[${range}]) unless absent(w)", {"q", "w"}),
    ],
)
def test_the_tokenizer_finds_metric_names_and_nothing_else(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_declared_names_drop_rays_prefix_and_histogram_suffixes() -> None:
    assert declared_name("ray_datapunk_cortex_latency_seconds_bucket") == (
        "datapunk_cortex_latency_seconds"
    )
    assert declared_name("ray_datapunk_cortex_predictions_total") == (
        "datapunk_cortex_predictions_total"
    )


def test_scraped_names_are_the_sample_names_of_the_text_format() -> None:
    text = (
        "# HELP a_total A.\n# TYPE a_total counter\n"
        'a_total{route="/x"} 3.0\nb 1\nc_bucket{le="+Inf"} 2\n'
    )
    assert scraped_names(text) == {"a_total", "b", "c_bucket"}


def test_the_datasource_is_prometheus_with_the_uid_the_dashboards_default_to(
    boards: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"].startswith("http")
    for board in boards.values():
        (variable,) = [v for v in board["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
        assert variable["current"]["value"] == source["uid"]


def test_the_dashboard_provider_loads_json_files_from_a_folder() -> None:
    config = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/datapunk.yml").read_text())
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert provider["folder"] == "Datapunk"
