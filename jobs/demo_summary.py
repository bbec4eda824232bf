"""The closing table of ``make demo``: where to look next, links and config paths."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from cluster import platform
from cluster.platform_state import PlatformState
from cluster.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def _relative(path: Path) -> str:
    return str(path.relative_to(REPO))


def summary_table(settings: Settings, state: PlatformState, results: dict[str, str]) -> Table:
    """Each step's outcome, then the platform's URLs, then the Prometheus and Grafana
    files (the Grafana JSON is provisioned by ``configs/grafana/provisioning``)."""
    table = Table(title="Datapunk demo: summary", header_style="bold", show_lines=False)
    table.add_column("what")
    table.add_column("where / outcome", overflow="fold")
    for step, outcome in results.items():
        table.add_row(step, outcome)
    table.add_section()
    for name, url in platform.urls(settings, state).items():
        table.add_row(name, f"[link={url}]{url}[/link]")
    table.add_section()
    prometheus = REPO / "configs" / "prometheus"
    for name in ("prometheus.yml", "alerts.yml", "alertmanager.yml"):
        if (prometheus / name).exists():
            table.add_row(f"Prometheus {name}", _relative(prometheus / name))
    for dashboard in sorted((REPO / "configs" / "grafana" / "dashboards").glob("*.json")):
        table.add_row(f"Grafana dashboard {dashboard.stem}", _relative(dashboard))
    provisioning = REPO / "configs" / "grafana" / "provisioning"
    if provisioning.exists():
        table.add_row("Grafana provisioning", _relative(provisioning) + "/")
    return table
