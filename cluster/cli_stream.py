"""``datapunk stream``: deploy, list, inspect, stop and tail topologies on the running platform.

The commands join the platform's Ray cluster and use ``StreamControl``, the object behind
the gateway's ``/api/v1/streams`` routes, so both say the same thing. A topology file is
validated before anything connects: a typo fails at once, with or without a platform.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import fail, run_cli, settings_from, stdout_console
from cluster.errors import DatapunkError, PlatformStateError
from cluster.settings import Settings

# Ray, pyarrow and pydantic models take a while to import: only `datapunk stream` pays.
if TYPE_CHECKING:
    from actors.stream.control import StreamControl
    from actors.stream.topology import Topology

T = TypeVar("T")
FOLLOW_POLL_S = 10.0
_NULL = "[dim]-[/]"

stream_app = typer.Typer(
    help="Stream topologies: deploy, list, status, stop, tail.", no_args_is_help=True
)
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def read_topology(path: Path) -> Topology:
    """The topology in ``path``; ``InvalidTopologyError`` (one line) when it is not one."""
    import yaml

    from actors.stream.topology import InvalidTopologyError, load_topology

    try:
        return load_topology(path)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise InvalidTopologyError(label=str(path), problems=f"not YAML ({problem})") from None


def join_platform(settings: Settings) -> None:
    """Connect this process to the running platform's Ray cluster; refuse when none runs."""
    from cluster import platform
    from cluster.platform_state import PlatformState
    from cluster.ray_runtime import port_open

    state = PlatformState.load(settings.state_path)
    if state is None:
        raise PlatformStateError("the platform is not running; start it with `datapunk up`")
    host, _, port = state.gcs_address.rpartition(":")
    if not port_open(host, int(port)):
        raise PlatformStateError(
            f"the platform's Ray head at {state.gcs_address} is not answering; "
            "start the platform with `datapunk up`"
        )
    platform.connect(settings, state.gcs_address)


def _control(ctx: typer.Context, use: Callable[[StreamControl], Awaitable[T]]) -> T:
    """Run ``use`` with a ``StreamControl`` on the running platform; errors end the command."""
    settings = settings_from(ctx)
    try:
        join_platform(settings)
    except DatapunkError as exc:
        fail(exc)
    from actors.stream.control import StreamControl

    async def go() -> T:
        control = StreamControl(settings)
        try:
            return await use(control)
        finally:
            await control.close()

    return run_cli(go())


def _json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def _cell(value: Any, digits: int = 1) -> str:
    if value is None:
        return _NULL
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return escape(str(value))


def _state(state: str) -> str:
    colour = {"running": "green", "finished": "cyan", "stopped": "yellow"}.get(state, "red")
    return f"[{colour}]{escape(state)}[/]"


def streams_table(records: list[dict[str, Any]]) -> Table:
    """One row per deployed topology with its live counters."""
    table = Table(title="stream topologies", header_style="bold")
    columns = ("name", "state", "epoch", "events in", "events/s", "lag s", "late", "dead letters")
    for column in columns:
        table.add_column(column, justify="left" if column in ("name", "state") else "right")
    for record in records:
        live = record.get("live") or {}
        late = sum((live.get("late") or {}).values()) if live else None
        table.add_row(
            escape(record["name"]),
            _state(record.get("state", "?")),
            _cell(live.get("epoch")),
            _cell(live.get("events_in")),
            _cell(live.get("events_per_s")),
            _cell(live.get("event_time_lag_s")),
            _cell(late),
            _cell(live.get("dead_letters")),
        )
    return table


def status_tables(status: dict[str, Any]) -> list[Table]:
    """A topology's summary, its operators' lateness and its queue, as tables."""
    live = status.get("live") or {}
    tables = [_summary_table(status, live)]
    operators = _operators_table(live)
    if operators.row_count:
        tables.append(operators)
    queue = status.get("queue")
    if queue:
        table = Table(title="in-cluster queue", header_style="bold")
        for column in ("ready", "unacked", "dead", "max ready"):
            table.add_column(column, justify="right")
        table.add_row(*(_cell(queue.get(k)) for k in ("ready", "unacked", "dead", "max_ready")))
        tables.append(table)
    return tables


def _summary_table(status: dict[str, Any], live: dict[str, Any]) -> Table:
    summary = Table(
        title=f"stream {escape(status['name'])}", header_style="bold", show_header=False
    )
    summary.add_column("what")
    summary.add_column("value")
    summary.add_row("state", _state(status.get("state", "?")))
    for key in ("epoch", "events_in", "events_kept", "events_per_s", "event_time_lag_s"):
        summary.add_row(key.replace("_", " "), _cell(live.get(key)))
    for key in ("dead_letters", "rollbacks", "restarts", "partitions", "last_checkpoint_ms"):
        summary.add_row(key.replace("_", " "), _cell(live.get(key)))
    error = live.get("error") or status.get("error")
    if error:
        summary.add_row("error", f"[red]{escape(str(error))}[/]")
    return summary


def _operators_table(live: dict[str, Any]) -> Table:
    operators = Table(title="operators", header_style="bold")
    for column in ("operator", "rows out", "late", "watermark delay s"):
        operators.add_column(column, justify="left" if column == "operator" else "right")
    late = live.get("late") or {}
    delays = live.get("watermark_delay_s") or {}
    outputs = live.get("outputs") or {}
    for name in sorted({*late, *delays}):
        operators.add_row(
            escape(name),
            _cell(outputs.get(name, 0)),
            _cell(late.get(name)),
            _cell(delays.get(name)),
        )
    return operators


def entry_table(entry: dict[str, Any]) -> Table:
    """One committed output entry's rows."""
    title = f"{escape(entry['output'])} · epoch {entry['epoch']} · seq {entry['seq']}"
    table = Table(title=title, header_style="bold", min_width=len(title) + 4)
    columns: dict[str, None] = {}
    for row in entry["rows"]:
        columns.update(dict.fromkeys(row))
    for column in columns:
        table.add_column(escape(column))
    for row in entry["rows"]:
        table.add_row(*(_cell(row.get(c), 3) for c in columns))
    return table


@stream_app.command("deploy")
def deploy(
    ctx: typer.Context,
    topology: Annotated[Path, typer.Argument(help="Topology YAML file.")],
    fresh: Annotated[bool, typer.Option(help="Drop its checkpoints: start over.")] = False,
) -> None:
    """Start a topology (or restart it with a new spec), resuming from its checkpoint."""
    try:
        spec = read_topology(topology)
    except DatapunkError as exc:
        fail(exc)
    status = _control(ctx, lambda c: c.deploy(spec, fresh=fresh, created_by="cli"))
    for table in status_tables({"name": spec.name, "state": status["state"], "live": status}):
        stdout_console().print(table)


@stream_app.command("ls")
def ls(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Deployed topologies with their state and counters."""
    records = _control(ctx, lambda c: c.ls())
    if as_json:
        _json(records)
    else:
        stdout_console().print(streams_table(records))


@stream_app.command("status")
def status(ctx: typer.Context, name: str, as_json: JsonOption = False) -> None:
    """One topology: state, epoch, rates, lag, lateness per operator, dead letters, queue."""
    report = _control(ctx, lambda c: c.status(name))
    if as_json:
        _json(report)
        return
    for table in status_tables(report):
        stdout_console().print(table)


@stream_app.command("stop")
def stop(ctx: typer.Context, name: str) -> None:
    """Commit the open epoch and stop; checkpoints are kept (deploy resumes)."""
    report = _control(ctx, lambda c: c.stop(name))
    stdout_console().print(f"stream {escape(name)} is {_state(report.get('state', 'stopped'))}")


@stream_app.command("tail")
def tail(
    ctx: typer.Context,
    name: str,
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="Only this output; repeat.")
    ] = None,
    follow: Annotated[bool, typer.Option(help="Keep printing new entries until Ctrl-C.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Newest entries shown at first.")] = 10,
    as_json: JsonOption = False,
) -> None:
    """Committed output entries, newest last; --follow long-polls for more."""
    console = stdout_console()

    def show(entry: dict[str, Any]) -> None:
        if as_json:
            sys.stdout.write(json.dumps(entry, default=str) + "\n")
            sys.stdout.flush()
        else:
            console.print(entry_table(entry))

    async def run(control: StreamControl) -> None:
        page = await control.tail(name, 0, output or None)
        for entry in page["entries"][-limit:]:
            show(entry)
        cursor = page["cursor"]
        while follow:
            page = await control.tail(name, cursor, output or None, FOLLOW_POLL_S)
            for entry in page["entries"]:
                show(entry)
            # A cursor behind ours means the coordinator restarted with an empty ring.
            cursor = page["cursor"] if page["cursor"] >= cursor else 0

    try:
        _control(ctx, run)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
