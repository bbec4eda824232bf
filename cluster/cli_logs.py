"""``datapunk logs``: the platform's JSON log lines, read from Ray's session log folder.

Every Datapunk process (gateway and Cortex replicas, the Lake/Stream/Cortex/Forge
actors, jobs) calls ``configure_logging``, which writes one JSON object per line to
the process's original stderr. Ray points that file descriptor at
``<temp dir>/session_latest/logs/worker-*.err`` (the head started by ``datapunk up``
uses ``--temp-dir`` from ``ray_runtime.temp_dir``), so that folder holds every
service's lines. This module finds them, keeps only Datapunk's (Ray's own lines and
tracebacks printed outside our handlers are not JSON objects with our fields), merges
them by time and prints them with Rich; ``--follow`` polls the files for new lines.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from cluster.cli_support import fail, settings_from, stdout_console
from cluster.errors import NotFoundError
from cluster.ray_runtime import temp_dir
from cluster.settings import Settings

# Files a Ray worker's stdout/stderr land in; Serve's own logs (logs/serve/) are
# Serve's format, not ours, so they are not read.
LOG_GLOBS = ("worker-*.err", "worker-*.out", "job-driver-*.log")
_REQUIRED = ("ts", "level", "service", "message")
_LEVEL_STYLE = {"DEBUG": "dim", "INFO": "green", "WARNING": "yellow", "ERROR": "bold red"}
_SHOWN = frozenset({*_REQUIRED, "logger", "request_id"})


def session_log_dir(settings: Settings) -> Path:
    """The log folder of the newest Ray session of the head ``datapunk up`` starts."""
    return temp_dir(settings) / "session_latest" / "logs"


def parse_line(line: str) -> dict[str, Any] | None:
    """A Datapunk record from one log line, or None for anything else in the file."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in _REQUIRED):
        return None
    return record


def log_files(folder: Path) -> list[Path]:
    """Every worker log file under ``folder``, in a stable order."""
    return sorted({path for pattern in LOG_GLOBS for path in folder.glob(pattern)})


@dataclass
class LogTail:
    """Reads new complete lines of every log file in a folder, poll by poll.

    Offsets are kept per file, so a poll returns only what was appended since the
    last one; a line still being written (no newline yet) waits for the next poll,
    and a worker started later (a new file) is picked up from its first line.
    """

    folder: Path
    service: str | None = None
    _offsets: dict[Path, int] = field(default_factory=dict)

    def poll(self) -> list[dict[str, Any]]:
        """New records since the last poll, oldest first."""
        records: list[dict[str, Any]] = []
        for path in log_files(self.folder):
            records.extend(self._read_new(path))
        # ISO-8601 UTC timestamps of equal shape sort as text.
        return sorted(records, key=lambda r: r["ts"])

    def _read_new(self, path: Path) -> list[dict[str, Any]]:
        start = self._offsets.get(path, 0)
        try:
            with path.open("rb") as handle:
                handle.seek(start)
                chunk = handle.read()
        except OSError:  # a file removed between glob and open: nothing to read
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self._offsets[path] = start + len(complete)
        found = []
        for raw in complete.decode("utf-8", errors="replace").splitlines():
            record = parse_line(raw)
            if record is not None and self.service in (None, record["service"]):
                found.append(record)
        return found


def render(record: dict[str, Any]) -> str:
    """One record as a line of Rich markup: time, level, service, request id, message."""
    level = record["level"]
    style = _LEVEL_STYLE.get(level, "white")
    request_id = record.get("request_id")
    rid = f" [magenta]{escape(str(request_id)[:12])}[/]" if request_id else ""
    extras = " ".join(
        f"[dim]{escape(k)}=[/]{escape(str(v))}"
        for k, v in record.items()
        if k not in _SHOWN and k != "exc"
    )
    line = (
        f"[dim]{escape(record['ts'])}[/] [{style}]{level:<7}[/] "
        f"[cyan]{escape(record['service'])}[/]{rid} {escape(record['message'])}"
    )
    if extras:
        line += f" {extras}"
    if record.get("exc"):
        line += "\n[red]" + escape(str(record["exc"]).rstrip()) + "[/]"
    return line


def services_table(records: list[dict[str, Any]]) -> Table:
    """Services that logged, with their line counts and last line's time."""
    counts = Counter(r["service"] for r in records)
    last = {r["service"]: r["ts"] for r in records}
    table = Table(title="Datapunk services in the session logs", header_style="bold")
    for column in ("service", "lines", "last line"):
        table.add_column(column)
    for name in sorted(counts):
        table.add_row(escape(name), str(counts[name]), escape(last[name]))
    return table


def logs(
    ctx: typer.Context,
    service: Annotated[
        str | None,
        typer.Argument(help="Only this service: gateway, cortex, lake, stream, forge, ..."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[
        int, typer.Option("--lines", "-n", min=0, help="Print the last N lines first.")
    ] = 50,
    list_services: Annotated[
        bool, typer.Option("--list", help="List the services that logged, with counts.")
    ] = False,
    log_dir: Annotated[
        Path | None,
        typer.Option("--dir", help="Read this folder instead of the platform's session logs."),
    ] = None,
    poll_s: Annotated[float, typer.Option(hidden=True, min=0.01)] = 0.5,
    max_polls: Annotated[int | None, typer.Option(hidden=True)] = None,
) -> None:
    """Print the platform's JSON log lines (all services, or one), oldest first."""
    folder = log_dir or session_log_dir(settings_from(ctx))
    if not folder.is_dir():
        fail(
            NotFoundError(
                kind="log folder",
                name=str(folder),
                fix="start the platform with `datapunk up`, or name a folder with --dir",
            )
        )
    console = stdout_console()
    tail = LogTail(folder, service)
    records = tail.poll()
    if list_services:
        console.print(services_table(records))
        return
    for record in records[-lines:] if lines else []:
        console.print(render(record), soft_wrap=True)
    polls = 0
    try:
        while follow and (max_polls is None or polls < max_polls):
            time.sleep(poll_s)
            polls += 1
            for record in tail.poll():
                console.print(render(record), soft_wrap=True)
    except KeyboardInterrupt:  # Ctrl+C ends --follow; no traceback for it
        return
