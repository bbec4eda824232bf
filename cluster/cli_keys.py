"""``datapunk keys`` and ``datapunk db``: API keys and platform-database migrations.

Each command loads settings, checks the database answers, brings its schema up to
date if it is behind, then does one thing. Plaintext keys are printed once, at
creation, and never again; listings show the display prefix only.
"""

from __future__ import annotations

import getpass
import json
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import run_cli, settings_from, stderr_console, stdout_console
from cluster.db.engine import check_database, create_engine, session_factory
from cluster.db.migrate import current_revision, ensure_schema, head_revision, upgrade
from cluster.security.grant_store import copy_key_grants
from cluster.security.keys import ApiKeyRecord, KeyStore
from cluster.security.rbac import ALLOWED_ROLES
from cluster.settings import Settings, redact_url

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Platform database migrations.", no_args_is_help=True)

_STATUS_STYLE = {
    "active": "green",
    "rotating": "cyan",
    "rotated": "yellow",
    "expired": "yellow",
    "revoked": "red",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}
DURATION_FORMAT = "a duration like 24h, 90m, 1h30m, 2d or 0"


def parse_duration(text: str) -> timedelta:
    """``24h``, ``90m``, ``1h30m``, ``2d``, ``45s`` or ``0`` as a ``timedelta``."""
    cleaned = text.strip().lower()
    if cleaned in ("0", "0s"):
        return timedelta(0)
    parts = _DURATION_PART.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise typer.BadParameter(f"{text!r} is not {DURATION_FORMAT}")
    return timedelta(seconds=sum(float(n) * _UNIT_SECONDS[u] for n, u in parts))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def operator_name() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no passwd entry (containers)
        return "cli"


def _when(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _day(value: datetime | None) -> str:
    return "never" if value is None else value.strftime("%Y-%m-%d")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


@asynccontextmanager
async def _key_store(settings: Settings) -> AsyncIterator[KeyStore]:
    await check_database(settings)
    await ensure_schema(settings)
    engine = create_engine(settings)
    try:
        # A rotated key's successor gets its scoped grants (else it would be unrestricted).
        yield KeyStore(session_factory(engine), now=_utcnow, on_rotate=(copy_key_grants,))
    finally:
        await engine.dispose()


# ---- datapunk db ---------------------------------------------------------------------


async def _db_upgrade(settings: Settings, revision: str) -> str:
    await check_database(settings)
    return await upgrade(settings, revision)


async def _db_current(settings: Settings) -> str | None:
    await check_database(settings)
    return await current_revision(settings)


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply the platform database migrations (idempotent); print the revision."""
    settings = settings_from(ctx)
    revision_now = run_cli(_db_upgrade(settings, revision))
    target = redact_url(settings.platform_db_url())
    stdout_console().print(
        f"platform database at revision [bold]{revision_now}[/] ({target})", soft_wrap=True
    )


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the revision the platform database is at."""
    settings = settings_from(ctx)
    revision = run_cli(_db_current(settings))
    console = stdout_console()
    if revision is None:
        console.print("platform database not initialised; run `datapunk db upgrade`")
    else:
        mark = " (head)" if revision == head_revision() else " (behind; run `datapunk db upgrade`)"
        console.print(f"platform database at revision [bold]{revision}[/]{mark}")


# ---- datapunk keys -------------------------------------------------------------------


async def _create(
    settings: Settings, role: str, name: str | None, expires_in: timedelta | None
) -> tuple[str, ApiKeyRecord]:
    async with _key_store(settings) as store:
        return await store.create(role, name, expires_in, created_by=operator_name())


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    role: Annotated[str, typer.Option(help=f"One of: {ALLOWED_ROLES}.")],
    name: Annotated[str | None, typer.Option(help="Label shown in listings.")] = None,
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Days until the key stops working.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create an API key and print it once; only its digest is stored."""
    expires_in = None if expires_in_days is None else timedelta(days=expires_in_days)
    settings = settings_from(ctx)
    token, record = run_cli(_create(settings, role, name, expires_in))
    if as_json:
        body = {
            "id": record.id,
            "key": token,
            "role": record.role.value,
            "name": record.name,
            "expires_at": _iso(record.expires_at),
        }
        sys.stdout.write(json.dumps(body) + "\n")
        return
    console = stdout_console()
    console.print(
        f"Created API key [bold]{record.id}[/] (role {record.role.value}, "
        f"name {escape(repr(record.name))}, expires {_when(record.expires_at)}):",
        soft_wrap=True,
        markup=True,
    )
    console.print(token, soft_wrap=True, markup=False)
    console.print("[yellow]Store it now: this key will not be shown again.[/]", soft_wrap=True)


def _table(records: list[ApiKeyRecord], now: datetime) -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        header_style="bold",
        caption="dates in UTC",
        pad_edge=False,
        collapse_padding=True,
    )
    # Never truncate what a person copies (id) or compares (prefix); only the name wraps.
    table.add_column("id", no_wrap=True, min_width=16)
    table.add_column("name")
    table.add_column("role", no_wrap=True, min_width=8)
    table.add_column("prefix", no_wrap=True, min_width=10)
    table.add_column("created", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=7)
    for record in records:
        status = record.status(now)
        table.add_row(
            record.id,
            escape(record.name),
            record.role.value,
            record.prefix,
            _day(record.created_at),
            _day(record.expires_at),
            f"[{_STATUS_STYLE[status]}]{status}[/]",
        )
    return table


def _as_dict(record: ApiKeyRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "role": record.role.value,
        "prefix": record.prefix,
        "created_at": _iso(record.created_at),
        "expires_at": _iso(record.expires_at),
        "revoked_at": _iso(record.revoked_at),
        "created_by": record.created_by,
        "status": record.status(now),
    }


async def _list(settings: Settings, include_revoked: bool) -> list[ApiKeyRecord]:
    async with _key_store(settings) as store:
        return await store.list(include_revoked=include_revoked)


@keys_app.command("ls")
def keys_ls(
    ctx: typer.Context,
    show_all: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List API keys (never the key or its digest)."""
    settings = settings_from(ctx)
    records = run_cli(_list(settings, show_all))
    now = _utcnow()
    if as_json:
        sys.stdout.write(json.dumps([_as_dict(r, now) for r in records]) + "\n")
    elif not records:
        stderr_console().print("no API keys; create one with `datapunk keys create --role admin`")
    else:
        stdout_console().print(_table(records, now))


async def _revoke(settings: Settings, key_id: str) -> ApiKeyRecord:
    async with _key_store(settings) as store:
        return await store.revoke(key_id)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id, as `datapunk keys ls` shows.")],
) -> None:
    """Revoke an API key; running gateways stop accepting it within their auth-cache TTL."""
    settings = settings_from(ctx)
    record = run_cli(_revoke(settings, key_id))
    ttl = settings.gateway.auth_cache_ttl_s
    stdout_console().print(
        f"Revoked [bold]{record.id}[/] ({escape(repr(record.name))}, role {record.role.value}) at "
        f"{_when(record.revoked_at)}; gateways refuse it within {ttl:g} s.",
        soft_wrap=True,
    )


async def _rotate(settings: Settings, key_id: str, overlap: timedelta) -> tuple[ApiKeyRecord, str]:
    async with _key_store(settings) as store:
        return await store.rotate(key_id, overlap=overlap, actor=operator_name())


@keys_app.command("rotate")
def keys_rotate(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="The key's id, as `datapunk keys ls` shows.")],
    overlap: Annotated[
        str | None,
        typer.Option(
            help=f"How long the old key keeps working ({DURATION_FORMAT}); "
            "default: auth.rotation_overlap_s (24h)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Issue a successor of a key and print it once; the old key stops after the overlap."""
    settings = settings_from(ctx)
    window = (
        timedelta(seconds=settings.auth.rotation_overlap_s)
        if overlap is None
        else parse_duration(overlap)
    )
    record, token = run_cli(_rotate(settings, key_id, window))
    old_end = record.created_at + window
    if as_json:
        body = {
            "id": record.id,
            "key": token,
            "replaces": record.replaces,
            "role": record.role.value,
            "name": record.name,
            "expires_at": _iso(record.expires_at),
            "old_key_expires_at": _iso(old_end),
        }
        sys.stdout.write(json.dumps(body) + "\n")
        return
    console = stdout_console()
    console.print(
        f"Rotated [bold]{key_id}[/]: new key [bold]{record.id}[/] (role {record.role.value}, "
        f"name {escape(repr(record.name))}, expires {_when(record.expires_at)}):",
        soft_wrap=True,
    )
    console.print(token, soft_wrap=True, markup=False)
    console.print("[yellow]Store it now: this key will not be shown again.[/]", soft_wrap=True)
    ttl = settings.gateway.auth_cache_ttl_s
    console.print(
        f"{key_id} keeps working until {_when(old_end)} at the latest (gateways may accept "
        f"it up to {ttl:g} s longer when the overlap is shorter than that); switch clients "
        "to the new key before then.",
        soft_wrap=True,
    )
