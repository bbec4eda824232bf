"""``datapunk models``: the model registry at a terminal: list, show, history, promote,
and canaries (``canary``, ``rollback``, ``canary-promote``).

The commands read and write the platform database and the artifacts in ``data_dir``
directly (no running platform needed), through the same ``ModelRegistry`` the gateway's
``/api/v1/models`` routes use. A promotion through the gate scores the candidate and
the alias's holder on a holdout snapshot with Forge's evaluation, in this process.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli_canary_render import (
    canaries_table,
    canary_promoted_line,
    canary_set_line,
    rollback_line,
)
from cluster.cli_support import (
    NULL_CELL,
    cell,
    fail,
    print_json,
    run_cli,
    settings_from,
    stdout_console,
)
from cluster.errors import DatapunkError, InvalidInputError
from cluster.settings import Settings

# The registry imports SQLAlchemy models and pydantic: only `datapunk models` pays.
if TYPE_CHECKING:
    from actors.forge.registry import ModelRegistry

T = TypeVar("T")
EXIT_REFUSED = 1
_NULL = NULL_CELL


def cell6(value: Any) -> str:
    return cell(value, 6)


models_app = typer.Typer(
    help="Model registry: list, show, alias history, promote, canaries.", no_args_is_help=True
)
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
AliasOption = Annotated[str, typer.Option(help="The alias whose traffic the canary splits.")]
CanaryReason = Annotated[str | None, typer.Option(help="Kept in the canary history.")]


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no passwd entry (containers)
        return "cli"


def _registry(
    ctx: typer.Context,
    use: Callable[[ModelRegistry], Awaitable[T]],
    settings: Settings | None = None,
) -> T:
    """Run ``use`` with the registry of the settings' platform; errors end the command."""
    settings = settings or settings_from(ctx)
    from actors.forge.registry import registry_from_settings

    async def go() -> T:
        async with registry_from_settings(settings) as registry:
            return await use(registry)

    return run_cli(go())


def _day(iso: str | None) -> str:
    return _NULL if not iso else iso[:19].replace("T", " ")


def _pairs(values: dict[str, Any] | None) -> str:
    return ", ".join(f"{k}={cell6(v)}" for k, v in sorted((values or {}).items())) or _NULL


def parse_at(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is taken as UTC."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInputError(
            field="at", value=text, allowed="an ISO 8601 time, e.g. 2026-01-02T03:04:05Z"
        ) from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# ---- tables ---------------------------------------------------------------------------


def models_table(records: list[dict[str, Any]]) -> Table:
    """One row per registered model."""
    table = Table(title="models", header_style="bold")
    for column in ("name", "latest", "versions", "aliases", "created", "description"):
        table.add_column(column, justify="right" if column in ("latest", "versions") else "left")
    for record in records:
        table.add_row(
            escape(record["name"]),
            cell6(record["latest_version"]),
            cell6(record["version_count"]),
            _pairs(record["aliases"]),
            _day(record["created_at"]),
            cell6(record["description"]),
        )
    return table


def versions_table(name: str, versions: list[dict[str, Any]]) -> Table:
    """A model's versions with their metrics, aliases and training data."""
    table = Table(title=f"versions of {escape(name)}", header_style="bold")
    for column in ("version", "aliases", "metrics", "format", "size", "data", "run", "created"):
        table.add_column(column, justify="right" if column in ("version", "size") else "left")
    for record in versions:
        lineage = record["lineage"]
        table.add_row(
            str(record["version"]),
            ", ".join(record["aliases"]) or _NULL,
            _pairs(record["metrics"]),
            record["format"],
            f"{record['size']:,}",
            escape(f"{lineage.get('table')}@{lineage.get('snapshot_id')}"),
            cell6(lineage.get("run_id")),
            _day(record["created_at"]),
        )
    return table


def version_table(record: dict[str, Any]) -> Table:
    """One version in full: artifact, signature, metrics, params, tags, lineage."""
    table = Table(
        title=f"{escape(record['name'])} version {record['version']}",
        header_style="bold",
        show_header=False,
    )
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("aliases", ", ".join(record["aliases"]) or _NULL)
    table.add_row("format", record["format"])
    table.add_row("artifact", escape(record["artifact_path"]))
    table.add_row("sha256", record["sha256"])
    table.add_row("size", f"{record['size']:,} bytes")
    for key in ("metrics", "params", "tags"):
        table.add_row(key, _pairs(record[key]))
    table.add_row("signature", escape(json.dumps(record["signature"], sort_keys=True)))
    for key, value in record["lineage"].items():
        table.add_row(f"lineage.{escape(key)}", cell6(value))
    table.add_row("created", f"{_day(record['created_at'])} by {cell6(record['created_by'])}")
    return table


def history_table(name: str, events: list[dict[str, Any]]) -> Table:
    """Alias moves, oldest first."""
    table = Table(title=f"alias history of {escape(name)}", header_style="bold")
    for column in ("at (UTC)", "alias", "from", "to", "by", "reason"):
        table.add_column(column)
    for event in events:
        to = "removed" if event["to_version"] is None else str(event["to_version"])
        table.add_row(
            _day(event["at"]),
            escape(event["alias"]),
            cell6(event["from_version"]),
            to,
            escape(event["actor"]),
            cell6(event["reason"]),
        )
    return table


def decision_table(decision: dict[str, Any]) -> Table:
    """What the promotion compared and what it decided."""
    verdict = "[green]promoted[/]" if decision["promoted"] else "[red]refused[/]"
    title = f"{escape(decision['name'])}: {escape(decision['alias'])}"
    table = Table(title=title, header_style="bold", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("decision", verdict)
    table.add_row("why", escape(decision["why"]))
    holdout = decision.get("holdout")
    if holdout:
        snapshot = holdout.get("snapshot_id")
        where = holdout["table"] + ("" if snapshot is None else f"@{snapshot}")
        table.add_row("holdout", escape(where))
    if decision.get("metric"):
        table.add_row("metric", f"{escape(decision['metric'])} ({decision['mode']} is better)")
    table.add_row(
        "candidate",
        f"version {decision['candidate_version']}: {cell6(decision['candidate_score'])}",
    )
    incumbent = decision["incumbent_version"]
    table.add_row(
        "holder",
        _NULL
        if incumbent is None
        else f"version {incumbent}: {cell6(decision['incumbent_score'])}",
    )
    return table


# ---- commands -------------------------------------------------------------------------


@models_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Registered models with their latest version and aliases."""
    records = _registry(ctx, lambda r: r.models())
    if as_json:
        print_json(records)
    else:
        stdout_console().print(models_table(records))


@models_app.command("show")
def show(
    ctx: typer.Context,
    name: str,
    version: Annotated[int | None, typer.Option(min=1, help="One version in full.")] = None,
    alias: Annotated[str | None, typer.Option(help="The version an alias points at.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A model's versions with metrics, aliases and lineage; or one version in full."""
    if version is not None and alias is not None:
        fail(InvalidInputError(field="--alias", value=alias, allowed="not with --version"))
    ref = version if version is not None else alias
    if ref is not None:
        record = _registry(ctx, lambda r: r.version(name, ref))
        if as_json:
            print_json(record)
        else:
            stdout_console().print(version_table(record))
        return
    model = _registry(ctx, lambda r: _with_canaries(r, name))
    if as_json:
        print_json(model)
        return
    console = stdout_console()
    console.print(models_table([model]))
    console.print(versions_table(name, model["versions"]))
    if model["canaries"]:
        console.print(canaries_table(name, model["canaries"], model["aliases"]))


async def _with_canaries(registry: ModelRegistry, name: str) -> dict[str, Any]:
    model = await registry.model(name)
    return {**model, "canaries": await registry.canaries(name)}


@models_app.command("history")
def history(
    ctx: typer.Context,
    name: str,
    alias: Annotated[str | None, typer.Option(help="Only this alias.")] = None,
    at: Annotated[
        str | None,
        typer.Option(help="ISO time (UTC when no offset): which version --alias pointed at."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Every alias move (who, when, from, to); with --at, where the alias pointed then."""
    if at is None:
        events = _registry(ctx, lambda r: r.history(name, alias))
        if as_json:
            print_json(events)
        else:
            stdout_console().print(history_table(name, events))
        return
    try:
        if alias is None:
            raise InvalidInputError(field="--at", value=at, allowed="with --alias NAME")
        when = parse_at(at)
    except DatapunkError as exc:
        fail(exc)
    pointed = _registry(ctx, lambda r: r.alias_at(name, alias, when))
    if as_json:
        print_json({"name": name, "alias": alias, "at": when.isoformat(), "version": pointed})
        return
    where = "no version" if pointed is None else f"version [bold]{pointed}[/]"
    stdout_console().print(
        f"{escape(name)} {escape(alias)} pointed at {where} at {when.isoformat()}"
    )


@models_app.command("promote")
def promote(
    ctx: typer.Context,
    name: str,
    version: Annotated[int, typer.Option(min=1, help="The candidate version.")],
    alias: Annotated[str, typer.Option(help="The alias to move.")] = "production",
    holdout: Annotated[
        str | None,
        typer.Option(help="TABLE[@SNAPSHOT_ID]: gate the move on this Lake data."),
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Metric to judge by (default: the version's own).")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="min or max: which way is better.")] = None,
    force: Annotated[bool, typer.Option(help="Move the alias without the gate.")] = False,
    reason: Annotated[str | None, typer.Option(help="Kept in the alias history.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Move an alias to a version: through the gate on --holdout, or with --force.

    The gate scores the candidate and the alias's current holder on the holdout and
    moves the alias only if the candidate is at least as good; exit code 1 when refused.
    """
    from actors.forge.promotion import holdout_evaluator, move_alias, parse_holdout

    settings = settings_from(ctx)
    try:
        gated = None if holdout is None else parse_holdout(holdout)
    except DatapunkError as exc:
        fail(exc)
    decision = _registry(
        ctx,
        lambda r: move_alias(
            r,
            name,
            alias,
            version,
            actor=_operator(),
            reason=reason,
            holdout=gated,
            metric=metric,
            mode=mode,
            force=force,
            evaluator=holdout_evaluator(settings),
        ),
        settings,
    )
    if as_json:
        print_json(decision)
    else:
        stdout_console().print(decision_table(decision))
    if not decision["promoted"]:
        raise typer.Exit(EXIT_REFUSED)


# ---- canaries -------------------------------------------------------------------------


@models_app.command("canary")
def canary(
    ctx: typer.Context,
    name: str,
    version: Annotated[int, typer.Argument(help="The version that gets the share.")],
    percent: Annotated[float, typer.Option(help="Share of the alias's traffic, 0 < P < 100.")],
    alias: AliasOption = "production",
    sticky_key: Annotated[
        str | None, typer.Option(help="Request header (e.g. X-User) keeping a caller on a side.")
    ] = None,
    reason: CanaryReason = None,
    as_json: JsonOption = False,
) -> None:
    """Send --percent of an alias's traffic to VERSION (replacing the alias's canary)."""
    record = _registry(
        ctx,
        lambda r: r.set_canary(
            name,
            alias,
            version=version,
            percent=percent,
            sticky_key=sticky_key,
            actor=_operator(),
            reason=reason,
        ),
    )
    _show(record, as_json, canary_set_line)


async def _rollback(
    registry: ModelRegistry, name: str, alias: str, reason: str | None
) -> dict[str, Any]:
    removed = await registry.clear_canary(name, alias, actor=_operator(), reason=reason)
    holder = (await registry.model(name))["aliases"].get(alias)
    result = {"name": name, "alias": alias, "rolled_back": removed is not None}
    return {**result, "canary": removed, "version": holder}


@models_app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: str,
    alias: AliasOption = "production",
    reason: CanaryReason = None,
    as_json: JsonOption = False,
) -> None:
    """Roll back an alias's canary: all its traffic to the version it points at.

    Safe to run twice: without a canary there is nothing to undo (exit code 0).
    """
    _show(_registry(ctx, lambda r: _rollback(r, name, alias, reason)), as_json, rollback_line)


@models_app.command("canary-promote")
def canary_promote(
    ctx: typer.Context,
    name: str,
    alias: AliasOption = "production",
    reason: Annotated[str | None, typer.Option(help="Kept in the alias history.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Move an alias to its canary's version (kept in the alias history); the canary ends."""
    moved = _registry(
        ctx, lambda r: r.promote_canary(name, alias, actor=_operator(), reason=reason)
    )
    _show(moved, as_json, canary_promoted_line)


def _show(result: dict[str, Any], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    if as_json:
        print_json(result)
    else:
        stdout_console().print(line(result))
