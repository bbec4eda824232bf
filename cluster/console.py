"""What a person reads at a terminal: Rich progress bars and tables, shared by CLI and jobs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


def quiet_library_logs() -> None:
    """Serve narrates every deploy at INFO; at a terminal our tables say it better."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


@contextmanager
def stepper(total: int, title: str = "starting") -> Iterator[Callable[[str], None]]:
    """A progress bar advanced one step per call of the yielded ``step(description)``."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        task = progress.add_task(title, total=total)

        def step(description: str) -> None:
            progress.update(task, description=description, advance=1)

        yield step
        progress.update(task, completed=total)


def key_value_table(title: str, rows: dict[str, str], headers: tuple[str, str]) -> Table:
    table = Table(title=title, header_style="bold")
    table.add_column(headers[0])
    table.add_column(headers[1])
    for key, value in rows.items():
        table.add_row(key, value)
    return table
