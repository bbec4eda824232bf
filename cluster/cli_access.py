"""``datapunk roles`` and ``datapunk grants``: what each role may do, and where each key may.

``grants add KEY_ID PERMISSION SCOPE`` narrows a key to that scope (``table:ns.t``,
``namespace:ns``, ``model:NAME``, ``stream:NAME`` or ``*``); a key with no grants has
its role everywhere, so removing a key's last grant widens it again (said when it
happens). Changes made here are appended to the audit log as the operator's, and reach
running gateways within their auth-cache TTL.
"""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import run_cli, settings_from, stderr_console, stdout_console
from cluster.db.engine import check_database, create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.security.audit import AuditDraft
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantRecord, GrantStore
from cluster.security.grants import SCOPE_FORMS, SCOPE_KINDS
from cluster.security.rbac import ROLE_PERMISSIONS, Permission, Role
from cluster.settings import Settings

grants_app = typer.Typer(
    help="Scoped grants: narrow an API key to tables, namespaces, models or streams.",
    no_args_is_help=True,
)
KeyId = Annotated[str, typer.Argument(help="The key's id, as `datapunk keys ls` shows.")]
PermissionArg = Annotated[str, typer.Argument(help="A permission, e.g. lake.table:read.")]
ScopeArg = Annotated[str, typer.Argument(help=SCOPE_FORMS)]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def operator() -> str:
    """``cli:<login>``: who ran the command, as keys and the audit log record it."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no passwd entry (containers)
        return "cli"


@dataclass
class _Stores:
    grants: GrantStore
    audit: AuditStore

    async def audited(self, command: str, key_id: str, target: str) -> None:
        """Append the change to the audit log as the operator's (status 200: it happened)."""
        draft = AuditDraft(
            at=_utcnow(),
            method="CLI",
            route=f"datapunk grants {command}",
            status=200,
            outcome="ok",
            actor=operator(),
            actor_kind="cli",
            permission="keys:manage",
            target=f"key_id={key_id},{target}",
        )
        await self.audit.append([draft])


@asynccontextmanager
async def _stores(settings: Settings) -> AsyncIterator[_Stores]:
    await check_database(settings)
    await ensure_schema(settings)
    engine = create_engine(settings)
    try:
        sessions = session_factory(engine)
        yield _Stores(GrantStore(sessions, _utcnow), AuditStore(sessions, _utcnow))
    finally:
        await engine.dispose()


# ---- datapunk roles ------------------------------------------------------------------


def roles_table() -> Table:
    """Roles across, permissions down, a mark where the role has it."""
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption="scopes besides *")
    table.add_column("permission", no_wrap=True, min_width=max(len(p) for p in Permission))
    for role in Role:
        table.add_column(role.value, justify="center", no_wrap=True, min_width=len(role))
    table.add_column("scopes")
    for permission in Permission:
        marks = ["[green]✓[/]" if permission in ROLE_PERMISSIONS[r] else "" for r in Role]
        kinds = sorted(k.value for k in SCOPE_KINDS.get(permission, ()))
        table.add_row(permission.value, *marks, ", ".join(kinds) or "[dim]* only[/]")
    return table


def roles(ctx: typer.Context, as_json: AsJson = False) -> None:
    """Show every role's permissions (and where a grant may scope each)."""
    if as_json:
        body = {r.value: sorted(p.value for p in ROLE_PERMISSIONS[r]) for r in Role}
        sys.stdout.write(json.dumps(body) + "\n")
        return
    stdout_console().print(roles_table())


# ---- datapunk grants -----------------------------------------------------------------


def _grants_table(records: list[GrantRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption="dates in UTC")
    table.add_column("permission", no_wrap=True)
    table.add_column("scope")
    table.add_column("created", no_wrap=True)
    table.add_column("by")
    for record in records:
        table.add_row(
            record.grant.permission.value,
            escape(str(record.grant.scope)),
            record.created_at.strftime("%Y-%m-%d %H:%M"),
            escape(record.created_by or "-"),
        )
    return table


async def _ls(settings: Settings, key_id: str) -> list[GrantRecord]:
    async with _stores(settings) as stores:
        return await stores.grants.list(key_id)


@grants_app.command("ls")
def grants_ls(ctx: typer.Context, key_id: KeyId, as_json: AsJson = False) -> None:
    """List a key's grants (none: its role applies everywhere)."""
    records = run_cli(_ls(settings_from(ctx), key_id))
    if as_json:
        sys.stdout.write(json.dumps([r.as_dict() for r in records]) + "\n")
    elif not records:
        stderr_console().print(
            f"{key_id} has no grants: its role's permissions apply everywhere", soft_wrap=True
        )
    else:
        stdout_console().print(_grants_table(records))


async def _add(settings: Settings, key_id: str, permission: str, scope: str) -> GrantRecord:
    async with _stores(settings) as stores:
        record = await stores.grants.add(key_id, permission, scope, created_by=operator())
        await stores.audited("add", key_id, str(record.grant.scope))
        return record


@grants_app.command("add")
def grants_add(
    ctx: typer.Context, key_id: KeyId, permission: PermissionArg, scope: ScopeArg
) -> None:
    """Allow PERMISSION on SCOPE; from the first grant on, the key is limited to its grants."""
    settings = settings_from(ctx)
    record = run_cli(_add(settings, key_id, permission, scope))
    ttl = settings.gateway.auth_cache_ttl_s
    stdout_console().print(
        f"{key_id} may use [bold]{record.grant.permission.value}[/] on "
        f"[bold]{escape(str(record.grant.scope))}[/] (gateways apply it within {ttl:g} s)",
        soft_wrap=True,
    )


async def _rm(
    settings: Settings, key_id: str, permission: str, scope: str
) -> tuple[GrantRecord, int]:
    async with _stores(settings) as stores:
        record = await stores.grants.remove(key_id, permission, scope)
        await stores.audited("rm", key_id, str(record.grant.scope))
        return record, len(await stores.grants.list(key_id))


@grants_app.command("rm")
def grants_rm(
    ctx: typer.Context, key_id: KeyId, permission: PermissionArg, scope: ScopeArg
) -> None:
    """Remove one grant; a key left with none has its role everywhere again."""
    record, left = run_cli(_rm(settings_from(ctx), key_id, permission, scope))
    stdout_console().print(f"removed {escape(str(record.grant))} from {key_id}", soft_wrap=True)
    if not left:
        stderr_console().print(
            f"[yellow]{key_id} has no grants left: its role's permissions now apply "
            "everywhere[/] (revoke the key, or add a grant, to narrow it again)",
            soft_wrap=True,
        )
