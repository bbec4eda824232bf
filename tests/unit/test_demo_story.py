"""The pure parts of ``make demo``: its training spec, stream topology, orders and
summary (the demo itself runs against a live platform; see README)."""

from __future__ import annotations

from rich.console import Console

from actors.forge.spec import run_id_for
from cluster.platform_state import PlatformState
from cluster.settings import load_settings
from jobs import demo_forge, demo_stream
from jobs.demo_summary import summary_table


def test_the_demo_spec_is_a_small_valid_search_on_the_diabetes_table() -> None:
    spec = demo_forge.demo_spec()
    assert spec.data.table == demo_forge.TABLE
    assert spec.registry.model_name == demo_forge.MODEL
    assert spec.epochs <= 10 and spec.tune is not None
    concurrent = spec.tune.max_concurrent_trials or 1
    assert concurrent * spec.scaling.cpus_per_worker <= 1.0
    # Its own run id: the example spec's runs are never resumed or shadowed by the demo.
    assert run_id_for(spec).startswith("diabetes-demo-")


def test_the_topology_keeps_the_pattern_and_only_the_windows_lake_sink() -> None:
    spec = demo_stream.demo_topology()
    kinds = {op["name"]: op["kind"] for op in spec["operators"]}
    assert kinds[demo_stream.PATTERN] == "pattern"
    assert kinds[demo_stream.WINDOWS] == "window"
    lakes = [s for s in spec["sinks"] if s["kind"] == "lake"]
    assert [(s["from"], s["table"]) for s in lakes] == [
        (demo_stream.WINDOWS, "stream.demo_orders_per_minute")
    ]
    assert (spec["name"], spec["partitions"]) == (demo_stream.NAME, 1)


def test_the_orders_hold_one_big_order_cancelled_within_the_pattern_bound() -> None:
    orders = demo_stream.demo_orders()
    big = [o for o in orders if o["customer"] == "c_big"]
    assert [(o["status"], o["amount"] >= 1000) for o in big] == [
        ("new", True),
        ("cancelled", True),
    ]
    assert big[0]["ts"] < big[1]["ts"]
    assert len(orders) == 202


def test_the_summary_names_urls_and_every_grafana_dashboard() -> None:
    settings = load_settings()
    state = PlatformState(
        gcs_address="127.0.0.1:6390",
        dashboard_url="http://127.0.0.1:8265",
        gateway_url="http://127.0.0.1:8000",
        started_head=False,
        marker=None,
        started_at=0.0,
    )
    out = Console(width=200, record=True)
    out.print(summary_table(settings, state, {"training": "run x"}))
    text = out.export_text()
    assert "http://127.0.0.1:8000/docs" in text and "http://127.0.0.1:8265" in text
    assert "configs/prometheus/prometheus.yml" in text and "run x" in text
    for dashboard in (demo_forge.REPO / "configs" / "grafana" / "dashboards").glob("*.json"):
        assert f"configs/grafana/dashboards/{dashboard.name}" in text
