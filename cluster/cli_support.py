"""Helpers every ``datapunk`` sub-command shares: settings from the context, errors.

A ``DatapunkError`` becomes one red line on stderr and exit code 2, never a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cluster.errors import DatapunkError
from cluster.logging import redact
from cluster.settings import Settings, load_settings

T = TypeVar("T")
EXIT_ERROR = 2


def stdout_console() -> Console:
    """A console on the current stdout (made per call, so test runners can capture it)."""
    return Console(highlight=False)


def stderr_console() -> Console:
    """A console on the current stderr."""
    return Console(stderr=True, highlight=False)


def fail(exc: DatapunkError) -> NoReturn:
    """Print ``error: <message>`` in red on one stderr line and exit with code 2."""
    message = escape(redact(exc.message))
    stderr_console().print(f"[bold red]error:[/] [red]{message}[/]", soft_wrap=True)
    raise typer.Exit(EXIT_ERROR)


def run_cli(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion; a ``DatapunkError`` from it ends the command via ``fail``."""
    try:
        return asyncio.run(coro)
    except DatapunkError as exc:
        fail(exc)


def config_path_from(ctx: typer.Context | None) -> Path | None:
    """The ``--config`` path the main ``datapunk`` callback put in ``ctx.obj``, if any."""
    current: Any = ctx  # parents are plain (vendored) click contexts
    while current is not None:
        obj = current.obj
        if isinstance(obj, dict) and obj.get("config_path"):
            return Path(obj["config_path"])
        current = current.parent
    return None


def settings_from(ctx: typer.Context | None) -> Settings:
    """Load settings once for this command; a ``ConfigError`` ends it via ``fail``."""
    try:
        return load_settings(config_path_from(ctx))
    except DatapunkError as exc:
        fail(exc)


NULL_CELL = "[dim]-[/]"


def print_json(value: Any) -> None:
    """``value`` as indented JSON on stdout (datetimes and the like as text)."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def cell(value: Any, digits: int = 4) -> str:
    """A table cell: a dim dash for null, ``digits`` significant digits for floats."""
    if value is None:
        return NULL_CELL
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return escape(str(value))
