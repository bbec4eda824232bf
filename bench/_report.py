"""What ``bench/gateway.py`` prints: the results table, the CPU breakdown, the target line.

Importing this module does nothing; run directly it exits 0 (``make bench``).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

TARGET_NAME, TARGET_CONCURRENCY, GOAL = "gateway_vs_uvicorn_c8", 8, 0.3


@dataclass(frozen=True)
class Row:
    """One target at one concurrency: what the load generator and CPU accounting saw."""

    target: str
    serve: bool
    phase: int
    concurrency: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_by_process: dict[str, float]
    first_error: str | None

    @property
    def cpu_ms_per_request(self) -> float:
        return sum(self.cpu_ms_by_process.values())


def ratio_of(row: Row, rows: list[Row]) -> float | None:
    """Serve req/s over uvicorn req/s at the same concurrency in the same phase."""
    if not row.serve:
        return None
    for base in rows:
        if not base.serve and (base.phase, base.concurrency) == (row.phase, row.concurrency):
            return row.rps / base.rps if base.rps > 0 else None
    return None


def results_table(rows: list[Row], endpoint: str) -> Table:
    table = Table(
        title=f"GET {endpoint}, authenticated (cached key)",
        caption="c: concurrency; n: timed requests; p50/p99: latency in ms; CPU: ms of server "
        "CPU per request (Serve: every Ray process of the head); ratio: serve req/s / uvicorn "
        "req/s at the same c",
        header_style="bold",
    )
    table.add_column("target", no_wrap=True)
    for column in ("c", "n", "errors", "req/s", "p50", "p99", "CPU", "ratio"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in sorted(rows, key=lambda r: (r.phase, r.concurrency, r.serve)):
        ratio = ratio_of(row, rows)
        table.add_row(
            row.target,
            str(row.concurrency),
            str(row.requests),
            f"[bold red]{row.errors}[/]" if row.errors else "0",
            f"{row.rps:,.0f}",
            f"{row.p50_ms:.2f}",
            f"{row.p99_ms:.2f}",
            f"{row.cpu_ms_per_request:.2f}",
            "-" if ratio is None else f"{ratio:.2f}",
            end_section=row.serve,
        )
    return table


def cpu_table(rows: list[Row], top: int = 8) -> Table:
    """Where the server CPU goes at the target concurrency, per process, ms per request."""
    table = Table(title=f"server CPU by process at c={TARGET_CONCURRENCY}", header_style="bold")
    for column in ("target", "process", "CPU ms/req"):
        table.add_column(column, justify="right" if column == "CPU ms/req" else "left")
    for row in rows:
        if row.concurrency != TARGET_CONCURRENCY:
            continue
        ranked = sorted(row.cpu_ms_by_process.items(), key=lambda kv: -kv[1])[:top]
        for index, (label, ms) in enumerate(ranked):
            table.add_row(row.target if index == 0 else "", label, f"{ms:.3f}")
        table.add_section()
    return table


def error_lines(rows: list[Row]) -> list[str]:
    return [
        f"[bold red]errors[/]: {row.target} c={row.concurrency}: {row.errors} failed "
        f"requests; first: {row.first_error}"
        for row in rows
        if row.errors
    ]


def target_line(rows: list[Row]) -> str:
    """``target gateway_vs_uvicorn_c8: R (goal >= 0.3) met|missed``; errors mean missed."""
    primary = [r for r in rows if r.phase == 0 and r.concurrency == TARGET_CONCURRENCY]
    serve = next(r for r in primary if r.serve)
    ratio = ratio_of(serve, rows) or 0.0
    met = ratio >= GOAL and not any(r.errors for r in primary)
    return f"target {TARGET_NAME}: {ratio:.2f} (goal >= {GOAL}) {'met' if met else 'missed'}"
