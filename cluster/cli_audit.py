"""``datapunk audit ls | verify``: read the hash-chained audit log and check its chain.

``verify`` walks every entry from the first, recomputing each hash; it exits 0 when the
chain is whole and 1 at the first broken entry, naming its ``seq`` and what is wrong
(changed, missing, out of order, cut off the end).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import (
    fail,
    print_json,
    run_cli,
    settings_from,
    stderr_console,
    stdout_console,
)
from cluster.db.engine import check_database, create_engine, session_factory
from cluster.db.migrate import ensure_schema
from cluster.errors import InvalidInputError
from cluster.security.audit import AuditRecord, ChainReport
from cluster.security.audit_store import AuditStore
from cluster.settings import Settings

audit_app = typer.Typer(help="The hash-chained audit log: list entries, verify the chain.")
EXIT_BROKEN = 1
_AGO = re.compile(r"^(\d+)\s*([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_OUTCOME_STYLE = {"ok": "green", "denied": "red", "error": "yellow"}


def _utcnow() -> datetime:
    return datetime.now(UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """``30m``, ``2h``, ``7d`` ago, or an ISO 8601 time (UTC when it has no offset)."""
    match = _AGO.match(text.strip().lower())
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            field="--since", value=text, allowed="an age such as 30m, 2h, 7d or an ISO 8601 time"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[AuditStore]:
    await check_database(settings)
    await ensure_schema(settings)
    engine = create_engine(settings)
    try:
        yield AuditStore(session_factory(engine), _utcnow)
    finally:
        await engine.dispose()


def _who(record: AuditRecord) -> str:
    draft = record.draft
    if draft.actor is None:
        return "[dim]anonymous[/]"
    name = f" ({escape(draft.actor_name)})" if draft.actor_name else ""
    return escape(draft.actor) + name


def audit_table(records: list[AuditRecord]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold", caption="times in UTC")
    table.add_column("seq", justify="right", no_wrap=True)
    table.add_column("time", no_wrap=True)
    table.add_column("who")
    table.add_column("role", no_wrap=True)
    table.add_column("call")
    table.add_column("target")
    table.add_column("status", justify="right", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for record in records:
        draft = record.draft
        style = _OUTCOME_STYLE.get(draft.outcome, "white")
        table.add_row(
            str(record.seq),
            draft.at.strftime("%Y-%m-%d %H:%M:%S"),
            _who(record),
            escape(draft.role or "-"),
            escape(f"{draft.method} {draft.route}"),
            escape(draft.target or "-"),
            str(draft.status),
            f"[{style}]{draft.outcome}[/]",
        )
    return table


async def _ls(
    settings: Settings,
    since: datetime | None,
    who: str | None,
    result: str | None,
    limit: int,
) -> list[AuditRecord]:
    async with _store(settings) as store:
        return await store.list(since=since, who=who, outcome=result, limit=limit)


@audit_app.command("ls")
def audit_ls(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option(help="Entries from then on: 30m, 2h, 7d or an ISO time.")
    ] = None,
    who: Annotated[str | None, typer.Option(help="A key or user id, or its name.")] = None,
    result: Annotated[
        Literal["ok", "denied", "error"] | None, typer.Option(help="Only this result.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Most entries shown.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List audit entries, newest first."""
    settings = settings_from(ctx)
    try:
        start = None if since is None else parse_since(since, _utcnow())
    except InvalidInputError as exc:
        fail(exc)
    records = run_cli(_ls(settings, start, who, result, limit))
    if as_json:
        print_json([r.as_dict() for r in records])
    elif not records:
        stderr_console().print("no audit entries match")
    else:
        stdout_console().print(audit_table(records))


async def _verify(settings: Settings) -> ChainReport:
    async with _store(settings) as store:
        return await store.verify()


@audit_app.command("verify")
def audit_verify(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Walk the hash chain; exit 1 at the first broken entry (named by its seq)."""
    report = run_cli(_verify(settings_from(ctx)))
    if as_json:
        print_json(report.as_dict())
    elif report.ok:
        stdout_console().print(
            f"[green]audit chain intact[/]: {report.checked} entries, head {report.head_seq} "
            f"({report.head_hash[:16]}...)",
            soft_wrap=True,
        )
    else:
        stderr_console().print(
            f"[bold red]audit chain broken at entry {report.broken_seq}[/]: "
            f"{escape(report.problem or '')} ({report.checked} entries verified before it)",
            soft_wrap=True,
        )
    if not report.ok:
        raise typer.Exit(EXIT_BROKEN)
