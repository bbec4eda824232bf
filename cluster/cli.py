"""The ``datapunk`` command: the platform's composition root at a terminal.

Settings are loaded here, once per command; every ``DatapunkError`` becomes one red
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cluster.cli_access import grants_app, roles
from cluster.cli_audit import audit_app
from cluster.cli_forge import forge_app, train
from cluster.cli_ingest import ingest, runs_app
from cluster.cli_keyring import rotate_master_command
from cluster.cli_keys import db_app, keys_app
from cluster.cli_lake import lake_app
from cluster.cli_logs import logs
from cluster.cli_models import models_app
from cluster.cli_stream import stream_app
from cluster.cli_support import fail, stderr_console
from cluster.cli_users import users_app
from cluster.console import console, key_value_table, quiet_library_logs, stepper
from cluster.errors import DatapunkError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

app = typer.Typer(
    name="datapunk",
    help="Datapunk: Lake, Stream, Forge and Cortex on one Ray cluster behind one gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(keys_app, name="keys", help="Create, list, rotate and revoke API keys.")
app.add_typer(users_app, name="users", help="Human accounts: create, disable, unlock, MFA.")
app.add_typer(db_app, name="db", help="Platform database migrations.")
app.add_typer(lake_app, name="lake", help="Lake tables: create, load, query, time travel.")
app.add_typer(runs_app, name="runs", help="Pipeline run records.")
app.add_typer(stream_app, name="stream", help="Stream topologies: deploy, status, stop, tail.")
app.add_typer(models_app, name="models", help="Model registry: list, show, history, promote.")
app.command("ingest")(ingest)
app.add_typer(forge_app, name="forge", help="Forge: training runs and their trials.")
app.command("train")(train)
keys_app.command("rotate-master")(rotate_master_command)
app.add_typer(grants_app, name="grants", help="Scoped grants: narrow a key to objects.")
app.command("roles")(roles)
app.command("logs")(logs)
app.add_typer(audit_app, name="audit", help="The hash-chained audit log: ls, verify.")
UP_STEPS = 6


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML settings file.", envvar=None)
    ] = None,
) -> None:
    ctx.obj = {"config_path": config}


def _settings(ctx: typer.Context) -> Settings:
    config = (ctx.obj or {}).get("config_path")
    try:
        settings = load_settings(config)
    except DatapunkError as exc:
        fail(exc)
    configure_logging("WARNING")
    quiet_library_logs()
    return settings


def _url_table(urls: dict[str, str]) -> Table:
    return key_value_table("Datapunk", urls, ("what", "where"))


@app.command()
def up(
    ctx: typer.Context,
    address: Annotated[
        str | None, typer.Option(help="Join this Ray cluster instead of starting a head.")
    ] = None,
) -> None:
    """Start the platform (Ray head, DB migrations, actor pools, gateway). Idempotent."""
    from cluster import platform

    settings = _settings(ctx)
    with stepper(UP_STEPS) as step:
        try:
            result = platform.up(settings, step=step, address=address)
        except DatapunkError as exc:
            fail(exc)
    if result.already_running:
        console.print(
            f"[yellow]Datapunk is already running[/] at {result.state.gateway_url}; "
            "nothing to do (`datapunk status` shows it, `datapunk down` stops it)."
        )
    else:
        console.print(_url_table(result.urls))
        console.print(f"platform DB at revision [bold]{result.db_revision}[/]")
    console.print("For Ray's own CLI (`ray status`, `ray job submit`):")
    console.print(platform.export_line(settings, result.state), soft_wrap=True, highlight=False)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop everything `datapunk up` started; no Ray process is left behind."""
    from cluster import platform

    settings = _settings(ctx)
    with console.status("stopping Datapunk"):
        try:
            stopped = platform.down(settings)
        except DatapunkError as exc:
            fail(exc)
    if stopped is None:
        console.print("Datapunk is not running; nothing to stop.")
    else:
        console.print(f"Datapunk stopped ({stopped} Ray processes ended).")


def _status_tables(report: dict[str, Any]) -> list[Table]:
    checks = Table(title="health", header_style="bold")
    checks.add_column("component")
    checks.add_column("state")
    for name, state in report.get("checks", {}).items():
        checks.add_row(name, "[green]ok[/]" if state == "ok" else f"[red]{state}[/]")
    replicas = Table(title="Serve", header_style="bold")
    for column in ("application", "deployment", "status", "replicas"):
        replicas.add_column(column)
    for app_name, app_info in report.get("serve", {}).get("applications", {}).items():
        for dep_name, dep in app_info.get("deployments", {}).items():
            counts = ", ".join(f"{k}={v}" for k, v in dep["replicas"].items())
            replicas.add_row(app_name, dep_name, dep["status"], counts)
    return [checks, replicas, _url_table(report.get("urls", {}))]


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Services, replicas and health of the running platform."""
    from cluster import platform

    settings = _settings(ctx)
    try:
        report = platform.status(settings)
    except DatapunkError as exc:
        fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        for table in _status_tables(report):
            console.print(table)
    if not report.get("ready"):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry: an unexpected failure is one line plus a log file, not a dump."""
    logging.captureWarnings(True)
    try:
        app()
    except Exception as exc:  # the last line of defence for the terminal
        log = Path(tempfile.gettempdir()) / "datapunk-cli-error.log"
        log.write_text(traceback.format_exc())
        stderr_console().print(
            f"[red]error:[/] unexpected {type(exc).__name__}: {exc} (traceback in {log})",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
