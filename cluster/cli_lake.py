"""``datapunk lake``: Iceberg tables from a terminal, in-process through ``LocalLake``.

The catalog is the source of truth and every commit is optimistic (a commit that lost a
race is retried on the fresh table), so these commands are safe beside a running actor
pool. Every ``DatapunkError`` is one ``error:`` line on stderr and exit code 2.
"""

from __future__ import annotations

import asyncio
import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from cluster.cli_support import fail, run_cli, settings_from, stderr_console, stdout_console
from cluster.errors import DatapunkError, InvalidInputError

# pyarrow, pyiceberg and DuckDB take a second to import: only `datapunk lake` pays for
# them, inside its commands, not every `datapunk` invocation.
if TYPE_CHECKING:
    import pyarrow as pa

    from actors.lake.service import LakeService

lake_app = typer.Typer(
    help="Lake tables: create, load, query, time travel and maintain.", no_args_is_help=True
)
namespace_app = typer.Typer(help="Namespaces: groups of tables.", no_args_is_help=True)
lake_app.add_typer(namespace_app, name="namespace")

TableName = Annotated[
    str, typer.Argument(help="namespace.table (namespace 'default' when omitted).")
]
COLUMN_FORMS = "name:type or name:type:required, e.g. id:long:required, price:decimal(10,2)"


class Output(StrEnum):
    """How rows are printed."""

    table = "table"
    json = "json"
    csv = "csv"


FormatOption = Annotated[
    Output, typer.Option("--format", "-f", help="table (Rich), json (an array) or csv.")
]


def _lake(ctx: typer.Context) -> LakeService:
    from actors.lake.service import LocalLake

    return LocalLake.from_settings(settings_from(ctx))


def _said(message: str) -> None:
    stdout_console().print(message, soft_wrap=True)


def _print_rows(table: pa.Table, fmt: Output) -> None:
    from actors.lake.formats import encode
    from cluster.cli_lake_render import rows_table

    if fmt is Output.table:
        stdout_console().print(rows_table(table))
        return
    body, _ = encode(table, "json" if fmt is Output.json else "csv")
    text = body.decode("utf-8")
    sys.stdout.write(text if text.endswith("\n") else text + "\n")


def parse_column(spec: str) -> pa.Field:
    """``name:type[:required]`` as an Arrow field (nullable unless ``required``)."""
    import pyarrow as pa
    from pyiceberg.io.pyarrow import schema_to_pyarrow

    from actors.lake.specs import parse_type

    parts = [part.strip() for part in spec.split(":")]
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidInputError(field="--column", value=spec, allowed=COLUMN_FORMS)
    if len(parts) == 3 and parts[2].lower() not in ("required", "optional"):
        raise InvalidInputError(field="--column", value=spec, allowed=COLUMN_FORMS)
    ice = parse_type(parts[1], field=f"--column {parts[0]} type")
    required = len(parts) == 3 and parts[2].lower() == "required"
    return pa.field(parts[0], schema_to_pyarrow(ice), nullable=not required)


def _schema(columns: list[str]) -> pa.Schema:
    import pyarrow as pa

    return pa.schema([parse_column(spec) for spec in columns])


# ---------------------------------------------------------------- tables


@lake_app.command("ls")
def ls(
    ctx: typer.Context,
    namespace: Annotated[str | None, typer.Argument(help="Only this namespace.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List tables as namespace.table, one per line."""
    names = run_cli(_lake(ctx).list_tables(namespace))
    if as_json:
        sys.stdout.write(json.dumps(names) + "\n")
    elif not names:
        stderr_console().print(
            "no tables; create one with `datapunk lake create NAME --column id:long`"
        )
    else:
        for name in names:
            _said(escape(name))


@namespace_app.command("ls")
def namespace_ls(ctx: typer.Context) -> None:
    """List namespaces, one per line."""
    for namespace in run_cli(_lake(ctx).list_namespaces()):
        _said(escape(namespace))


@namespace_app.command("create")
def namespace_create(
    ctx: typer.Context,
    namespace: Annotated[str, typer.Argument(help="Letters, digits and _.")],
    exist_ok: Annotated[bool, typer.Option("--exist-ok", help="An existing one is fine.")] = False,
) -> None:
    """Create a namespace (`default` needs none: it appears with its first table)."""
    run_cli(_lake(ctx).create_namespace(namespace, exist_ok=exist_ok))
    _said(f"namespace [bold]{escape(namespace)}[/] is ready")


async def _create(lake: LakeService, name: str, source: Path, options: dict[str, Any]) -> Any:
    from actors.lake.errors import TableExistsError
    from actors.lake.specs import parse_table_name
    from cluster.cli_lake_render import read_file

    full = parse_table_name(name).full
    if full in await lake.list_tables():  # refuse before reading what may be a big file
        raise TableExistsError(table=full)
    data = await asyncio.to_thread(read_file, source, stderr_console())
    return await lake.create_table(name, data=data, **options)


@lake_app.command("create")
def create(
    ctx: typer.Context,
    name: TableName,
    column: Annotated[
        list[str] | None,
        typer.Option(
            "--column", metavar="NAME:TYPE[:required]", help=f"A column: {COLUMN_FORMS}. Repeat."
        ),
    ] = None,
    partition_by: Annotated[
        list[str] | None,
        typer.Option(
            metavar="TERM", help="Partition field: col, day(ts), bucket(16, id), ... Repeat."
        ),
    ] = None,
    sort_by: Annotated[
        list[str] | None, typer.Option(metavar="KEY", help="Sort key: col, 'ts desc', ... Repeat.")
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(
            "--from", metavar="FILE", help="Infer the schema from this file and load its rows."
        ),
    ] = None,
    sensitive: Annotated[
        str | None,
        typer.Option(
            metavar="COLS", help="Comma-separated columns stored encrypted (e.g. email,ssn)."
        ),
    ] = None,
) -> None:
    """Create a table from --column specs, or from a file (schema inferred, rows loaded)."""
    if bool(column) == (from_file is not None):
        given = "both" if column else "neither"
        fail(InvalidInputError(field="--column/--from", value=given, allowed="give one of them"))
    lake = _lake(ctx)
    options: dict[str, Any] = {"partition_by": partition_by or [], "sort_by": sort_by or []}
    if sensitive:
        options["properties"] = {"datapunk.sensitive": sensitive}
    if from_file is not None:
        desc = run_cli(_create(lake, name, from_file, options))
    else:
        try:
            schema = _schema(column or [])
        except DatapunkError as exc:
            fail(exc)
        desc = run_cli(lake.create_table(name, schema=schema, **options))
    rows = sum(int(s["summary"].get("added-records", 0)) for s in desc["snapshots"])
    loaded = f" with {rows:,} rows (snapshot {desc['current_snapshot_id']})" if rows else ""
    _said(f"created [bold]{escape(desc['name'])}[/] ({len(desc['schema'])} columns){loaded}")


@lake_app.command("describe")
def describe(ctx: typer.Context, name: TableName) -> None:
    """Columns, partition spec, sort order and snapshots of a table."""
    from cluster.cli_lake_render import description_tables

    desc = run_cli(_lake(ctx).describe(name))
    console = stdout_console()
    for table in description_tables(desc):
        console.print(table)


@lake_app.command("drop")
def drop(
    ctx: typer.Context,
    name: TableName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a table from the catalog (its files stay until the warehouse is cleaned)."""
    lake = _lake(ctx)
    run_cli(lake.describe(name))  # an unknown table is an error before any question
    if not yes:
        typer.confirm(f"Drop table {name}? Readers and writers lose it at once", abort=True)
    run_cli(lake.drop_table(name))
    _said(f"dropped [bold]{escape(name)}[/]")


# ---------------------------------------------------------------- writes


async def _append(lake: LakeService, name: str, source: Path, evolve: bool) -> Any:
    from cluster.cli_lake_render import read_file

    await lake.describe(name)  # an unknown table fails before a big file is read
    data = await asyncio.to_thread(read_file, source, stderr_console())
    return await lake.append(name, data, evolve=evolve)


@lake_app.command("append")
def append(
    ctx: typer.Context,
    name: TableName,
    file: Annotated[Path, typer.Argument(help="CSV, JSON Lines, Parquet or Arrow (.gz too).")],
    no_evolve: Annotated[
        bool,
        typer.Option("--no-evolve", help="Refuse new or wider columns instead of adding them."),
    ] = False,
) -> None:
    """Append a file's rows in one commit (new columns are added unless --no-evolve)."""
    result = run_cli(_append(_lake(ctx), name, file, not no_evolve))
    _said(
        f"appended {result['rows']:,} rows to [bold]{escape(result['table'])}[/]; "
        f"snapshot {result['snapshot_id']}"
    )


@lake_app.command("rollback")
def rollback(
    ctx: typer.Context,
    name: TableName,
    snapshot_id: Annotated[int, typer.Argument(help="As `datapunk lake history` shows.")],
) -> None:
    """Make an earlier snapshot current again (newer ones stay, for rolling forward)."""
    result = run_cli(_lake(ctx).rollback(name, snapshot_id))
    _said(f"[bold]{escape(result['table'])}[/] is at snapshot {result['snapshot_id']}")


@lake_app.command("compact")
def compact(
    ctx: typer.Context,
    name: TableName,
    expire_older_than_hours: Annotated[
        float | None, typer.Option(min=0, help="Also expire snapshots older than this.")
    ] = None,
    retain_last: Annotated[
        int, typer.Option(min=1, help="Snapshots always kept when expiring.")
    ] = 1,
    remove_orphans: Annotated[
        bool, typer.Option("--remove-orphans", help="Delete files no snapshot uses.")
    ] = False,
) -> None:
    """Compact small data files; optionally expire snapshots and remove orphan files."""
    from cluster.cli_lake_render import maintenance_table

    expire_s = None if expire_older_than_hours is None else expire_older_than_hours * 3600
    report = run_cli(
        _lake(ctx).maintain(
            name,
            expire_older_than_s=expire_s,
            retain_last=retain_last,
            remove_orphans=remove_orphans,
        )
    )
    stdout_console().print(maintenance_table(report))


# ---------------------------------------------------------------- reads


@lake_app.command("query")
def query(
    ctx: typer.Context,
    sql: Annotated[str, typer.Argument(help="One read-only SELECT over namespace.table names.")],
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="Most rows; a larger result is an error (add LIMIT)."),
    ] = None,
    fmt: FormatOption = Output.table,
) -> None:
    """Run read-only SQL (DuckDB) over the current snapshots of the tables it names."""
    # At a terminal the operator holds the master key file: sensitive columns in clear.
    _print_rows(run_cli(_lake(ctx).sql(sql, limit=limit, decrypt=True)), fmt)


@lake_app.command("scan")
def scan(
    ctx: typer.Context,
    name: TableName,
    columns: Annotated[str | None, typer.Option(help="Comma-separated columns.")] = None,
    filter: Annotated[
        str | None, typer.Option("--filter", help="Row filter, e.g. \"id > 10 and r = 'eu'\".")
    ] = None,
    as_of: Annotated[
        str | None, typer.Option(help="ISO 8601 time: read the snapshot current then.")
    ] = None,
    snapshot: Annotated[int | None, typer.Option(help="Read this snapshot id.")] = None,
    limit: Annotated[int | None, typer.Option(min=0, help="Stop after this many rows.")] = None,
    fmt: FormatOption = Output.table,
) -> None:
    """Read rows, with columns and filter pushed down, optionally at a snapshot or time."""
    wanted = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    table = run_cli(
        _lake(ctx).scan(
            name,
            columns=wanted,
            filter=filter,
            snapshot_id=snapshot,
            as_of=as_of,
            limit=limit,
            decrypt=True,  # the operator holds the master key file anyway
        )
    )
    _print_rows(table, fmt)


async def _history(lake: LakeService, name: str) -> tuple[list[dict[str, Any]], int | None]:
    entries = await lake.history(name)
    return entries, (await lake.describe(name))["current_snapshot_id"]


@lake_app.command("history")
def history(
    ctx: typer.Context,
    name: TableName,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """When each snapshot became current, oldest first (rollbacks included)."""
    from cluster.cli_lake_render import snapshots_table

    entries, current = run_cli(_history(_lake(ctx), name))
    if as_json:
        sys.stdout.write(json.dumps(entries) + "\n")
    else:
        stdout_console().print(snapshots_table(f"history of {name}", entries, current))


@lake_app.command("protect")
def protect(
    ctx: typer.Context,
    name: TableName,
    columns: Annotated[str, typer.Argument(help="Comma-separated columns, e.g. email,ssn.")],
) -> None:
    """Store columns encrypted from now on; data they already hold is rewritten encrypted."""
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    report = run_cli(_lake(ctx).protect_columns(name, wanted))
    _said(
        f"[bold]{escape(report['table'])}[/]: sensitive {', '.join(report['sensitive'])}; "
        f"{report['rows_rewritten']:,} rows rewritten encrypted"
    )
    if report["fix"]:
        stderr_console().print(
            f"[yellow]{report['plaintext_in_older_snapshots']} older snapshot(s) still hold "
            f"plaintext:[/] {escape(report['fix'])}",
            soft_wrap=True,
        )
