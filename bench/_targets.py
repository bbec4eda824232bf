"""Shared by benchmarks: a figures table (what, measured, baseline, ratio) and target lines.

``bench/_report.py`` is specific to the gateway benchmark (rows per concurrency level,
one hard-coded target), so the generic pieces live here. A benchmark collects
``Figure`` rows and ``Target`` goals, prints ``figures_table`` and then, last, one
``Target.line()`` per target: ``target NAME: MEASURED (goal OP VALUE) met|missed``.

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

import argparse
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.table import Table

Op = Literal[">=", "<="]
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le}


@dataclass(frozen=True)
class Figure:
    """One row of the results table: a measurement, its baseline and their ratio.

    ``value`` and ``baseline`` are already formatted (units included) so each benchmark
    chooses its own precision; ``ratio`` is ``None`` where a ratio means nothing.
    """

    what: str
    value: str
    baseline: str = "-"
    ratio: float | None = None
    note: str = ""
    end_section: bool = False


@dataclass(frozen=True)
class Target:
    """A goal a benchmark reports on: ``measured OP goal`` is met, anything else missed.

    ``measured`` ``None`` (the measurement could not be taken) or NaN counts as missed.
    """

    name: str
    measured: float | None
    op: Op
    goal: float
    digits: int = 2

    @property
    def met(self) -> bool:
        if self.measured is None or math.isnan(self.measured):
            return False
        return _OPS[self.op](self.measured, self.goal)

    def line(self) -> str:
        """``target NAME: MEASURED (goal OP VALUE) met|missed``."""
        shown = "n/a" if self.measured is None else f"{self.measured:.{self.digits}f}"
        verdict = "met" if self.met else "missed"
        return f"target {self.name}: {shown} (goal {self.op} {self.goal:g}) {verdict}"


def figures_table(
    title: str, figures: Sequence[Figure], *, caption: str | None = None, baseline: str = "baseline"
) -> Table:
    """The figures as a Rich table: what, measured, baseline, ratio (and a note if any)."""
    table = Table(title=title, caption=caption, header_style="bold")
    table.add_column("what")
    table.add_column("lake", justify="right", no_wrap=True)
    table.add_column(baseline, justify="right", no_wrap=True)
    table.add_column("ratio", justify="right", no_wrap=True)
    with_notes = any(f.note for f in figures)
    if with_notes:
        table.add_column("note")
    for figure in figures:
        cells = [
            figure.what,
            figure.value,
            figure.baseline,
            "-" if figure.ratio is None else f"{figure.ratio:.2f}",
        ]
        if with_notes:
            cells.append(figure.note)
        table.add_row(*cells, end_section=figure.end_section)
    return table


def median(values: Sequence[float]) -> float:
    """The median (mean of the middle two for an even count); NaN for no values."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the nearest ranks; NaN for none."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def require_positive(
    parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str
) -> None:
    """Refuse counts below 1 with argparse's own error, naming the flag."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
