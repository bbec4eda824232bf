"""``datapunk users``: human accounts (create, list, disable, enable, unlock, reset MFA).

Passwords are prompted without echo (twice, to catch a typo) or read from one line of
stdin with ``--password-stdin`` for scripts; they are never arguments (those show up
in ``ps`` and shell history), never printed and never logged.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cluster.cache import build_cache
from cluster.cli_keys import operator_name
from cluster.cli_support import run_cli, settings_from, stderr_console, stdout_console
from cluster.db.engine import check_database, create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.security.accounts import AccountService, LockoutPolicy
from cluster.security.passwords import HashParameters, Passwords
from cluster.security.rbac import ALLOWED_ROLES
from cluster.security.session_store import SessionStore
from cluster.security.sessions import REVOKED_PREFIX
from cluster.security.user_store import UserRecord, UserStore
from cluster.settings import Settings

users_app = typer.Typer(
    help="Human accounts: create, list, disable, unlock, reset MFA.", no_args_is_help=True
)
_STATUS_STYLE = {"active": "green", "locked": "yellow", "disabled": "red"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


@asynccontextmanager
async def _accounts(settings: Settings) -> AsyncIterator[AccountService]:
    await check_database(settings)
    await ensure_schema(settings)
    engine = create_engine(settings)
    sessions = session_factory(engine)
    try:
        yield AccountService(
            UserStore(sessions, _utcnow),
            SessionStore(sessions, _utcnow),
            Passwords(HashParameters.from_settings(settings)),
            _utcnow,
            lockout=LockoutPolicy.from_settings(settings),
            issuer=settings.auth.issuer,
        )
    finally:
        await engine.dispose()


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M UTC")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _as_dict(record: UserRecord, now: datetime) -> dict[str, Any]:
    return {
        "id": record.id,
        "username": record.username,
        "role": record.role.value,
        "status": record.status(now),
        "mfa": record.mfa,
        "locked_until": _iso(record.locked_until),
        "failed_logins": record.failed_logins,
        "last_login_at": _iso(record.last_login_at),
        "created_at": _iso(record.created_at),
        "created_by": record.created_by,
        "disabled_at": _iso(record.disabled_at),
    }


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.removesuffix("\n").removesuffix("\r")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="Login name (lower case).")],
    role: Annotated[str, typer.Option(help=f"One of: {ALLOWED_ROLES}.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from one stdin line.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Create an account; the password is prompted (never an argument, never echoed)."""
    settings = settings_from(ctx)
    password = _read_password(password_stdin)

    async def create() -> UserRecord:
        async with _accounts(settings) as accounts:
            return await accounts.create_user(username, password, role, created_by=operator_name())

    record = run_cli(create())
    if as_json:
        sys.stdout.write(json.dumps(_as_dict(record, _utcnow())) + "\n")
        return
    stdout_console().print(
        f"Created user [bold]{escape(record.username)}[/] ({record.id}, role "
        f"{record.role.value}); they sign in at POST /api/v1/auth/login and can turn on "
        "MFA at POST /api/v1/auth/mfa/enroll.",
        soft_wrap=True,
    )


@users_app.command("passwd")
def users_passwd(
    ctx: typer.Context,
    username: Annotated[str, typer.Argument(help="The account.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from one stdin line.")
    ] = False,
) -> None:
    """Set a new password for an account (an admin reset); lifts any lockout."""
    settings = settings_from(ctx)
    password = _read_password(password_stdin)

    async def change() -> UserRecord:
        async with _accounts(settings) as accounts:
            return await accounts.set_password(username, password)

    record = run_cli(change())
    stdout_console().print(f"Password of [bold]{escape(record.username)}[/] changed.")


def _table(records: list[UserRecord], now: datetime) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption="dates in UTC")
    table.add_column("username", min_width=8)
    for column in ("role", "status", "mfa", "last login", "created"):
        table.add_column(column, no_wrap=True)
    for record in records:
        status = record.status(now)
        shown = f"[{_STATUS_STYLE[status]}]{status}[/]"
        if status == "locked":
            shown += f" until {_when(record.locked_until)}"
        table.add_row(
            escape(record.username),
            record.role.value,
            shown,
            record.mfa,
            _when(record.last_login_at),
            _when(record.created_at),
        )
    return table


@users_app.command("ls")
def users_ls(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List accounts (never password hashes or MFA seeds)."""
    settings = settings_from(ctx)

    async def listing() -> list[UserRecord]:
        async with _accounts(settings) as accounts:
            return await accounts.list_users()

    records = run_cli(listing())
    now = _utcnow()
    if as_json:
        sys.stdout.write(json.dumps([_as_dict(r, now) for r in records]) + "\n")
    elif not records:
        stderr_console().print(
            "no users; create one with `datapunk users create NAME --role analyst`"
        )
    else:
        stdout_console().print(_table(records, now))


async def _mark_revoked(settings: Settings, session_ids: list[str]) -> None:
    """Tell gateways through the shared cache (Redis) that these sessions ended; without
    Redis they see it in the database within their auth-cache TTL."""
    if not session_ids or settings.secret("redis_url") is None:
        return
    cache = build_cache(settings)
    try:
        ttl = settings.auth.access_token_ttl_s
        for session_id in session_ids:
            await cache.set(REVOKED_PREFIX + session_id, b"account disabled", ttl)
    finally:
        await cache.close()


@users_app.command("disable")
def users_disable(
    ctx: typer.Context, username: Annotated[str, typer.Argument(help="The account.")]
) -> None:
    """Disable an account and end its sessions."""
    settings = settings_from(ctx)

    async def disable() -> tuple[UserRecord, list[str]]:
        async with _accounts(settings) as accounts:
            record, ended = await accounts.disable(username)
        await _mark_revoked(settings, ended)
        return record, ended

    record, ended = run_cli(disable())
    stdout_console().print(
        f"Disabled [bold]{escape(record.username)}[/]; ended {len(ended)} session(s) "
        f"(gateways refuse their tokens within {settings.gateway.auth_cache_ttl_s:g} s).",
        soft_wrap=True,
    )


async def _admin(settings: Settings, verb: str, username: str) -> UserRecord:
    async with _accounts(settings) as accounts:
        if verb == "enable":
            return await accounts.enable(username)
        if verb == "unlock":
            return await accounts.unlock(username)
        return await accounts.reset_mfa(username)


def _report(record: UserRecord, done: str) -> None:
    stdout_console().print(f"[bold]{escape(record.username)}[/]: {done}.", soft_wrap=True)


@users_app.command("enable")
def users_enable(
    ctx: typer.Context, username: Annotated[str, typer.Argument(help="The account.")]
) -> None:
    """Re-enable a disabled account."""
    _report(run_cli(_admin(settings_from(ctx), "enable", username)), "enabled")


@users_app.command("unlock")
def users_unlock(
    ctx: typer.Context, username: Annotated[str, typer.Argument(help="The account.")]
) -> None:
    """Lift a lockout after repeated failed sign-ins."""
    record = run_cli(_admin(settings_from(ctx), "unlock", username))
    _report(record, "unlocked; failed sign-ins reset")


@users_app.command("reset-mfa")
def users_reset_mfa(
    ctx: typer.Context, username: Annotated[str, typer.Argument(help="The account.")]
) -> None:
    """Turn MFA off (a lost phone); the user enrols again after signing in."""
    record = run_cli(_admin(settings_from(ctx), "reset-mfa", username))
    _report(record, "multi-factor authentication off; recovery codes dropped")
