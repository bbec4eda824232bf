"""``datapunk keys rotate-master``: re-wrap every data key under a new master key.

No data file is rewritten: encrypted cells stay sealed by their data keys, and only the
wrapping of those keys in the platform DB changes. The old master key stays until every
data key is re-wrapped; an interrupted rotation is finished by running the command
again. ``--remove-old`` then destroys master keys that nothing needs any more.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from cluster.cli_support import run_cli, settings_from, stdout_console
from cluster.db.engine import check_database
from cluster.db.migrate import ensure_schema
from cluster.security.data_keys import DataKeyStore, RotationReport, rotate_master, sync_engine
from cluster.security.keyring import LocalKeyFile, build_key_provider
from cluster.settings import Settings


async def _rotate(settings: Settings, remove_old: bool) -> RotationReport:
    await check_database(settings)
    await ensure_schema(settings)
    provider = build_key_provider(settings)
    if isinstance(provider, LocalKeyFile):
        await asyncio.to_thread(provider.verify)  # refuse key files others can read
    engine = sync_engine(settings)
    try:
        store = DataKeyStore(engine)
        return await asyncio.to_thread(rotate_master, store, provider, remove_old=remove_old)
    finally:
        engine.dispose()


def _as_dict(report: RotationReport) -> dict[str, Any]:
    return {
        "master_key_id": report.master_key_id,
        "rewrapped": report.rewrapped,
        "resumed": report.resumed,
        "old_master_keys": report.old_master_keys,
        "removed": report.removed,
    }


def rotate_master_command(
    ctx: typer.Context,
    remove_old: Annotated[
        bool,
        typer.Option("--remove-old", help="Destroy master keys no data key needs any more."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Re-wrap every data key under a new master key (data files stay as they are)."""
    settings = settings_from(ctx)
    report = run_cli(_rotate(settings, remove_old))
    if as_json:
        sys.stdout.write(json.dumps(_as_dict(report)) + "\n")
        return
    console = stdout_console()
    how = "finished an interrupted rotation: " if report.resumed else ""
    console.print(
        f"{how}{report.rewrapped} data key(s) re-wrapped under master key "
        f"[bold]{escape(report.master_key_id)}[/]",
        soft_wrap=True,
    )
    if report.removed:
        console.print(f"removed old master key(s): {', '.join(report.removed)}", soft_wrap=True)
    elif report.old_master_keys:
        console.print(
            f"old master key(s) no longer needed: {', '.join(report.old_master_keys)}; "
            "remove them with `datapunk keys rotate-master --remove-old` once backups "
            "that need them have expired",
            soft_wrap=True,
        )
