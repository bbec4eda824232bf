"""What ``datapunk models`` shows a person about canaries: a table and one-line results.

Kept apart from ``cluster/cli_models.py`` so the commands read as what they do; nothing
here talks to the registry, it only renders the records it returned (plain dicts).
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from cluster.cli_support import NULL_CELL, cell

__all__ = ["canaries_table", "canary_promoted_line", "canary_set_line", "rollback_line"]


def _since(iso: str | None) -> str:
    return NULL_CELL if not iso else iso[:19].replace("T", " ")


def canaries_table(name: str, canaries: list[dict[str, Any]], aliases: dict[str, int]) -> Table:
    """Active canaries: which share of which alias goes to which version instead."""
    table = Table(title=f"canaries of {escape(name)}", header_style="bold")
    table.add_column("alias", no_wrap=True)
    for column in ("points at", "canary to", "share"):
        table.add_column(column, justify="right")
    table.add_column("sticky by")
    table.add_column("since (UTC)", no_wrap=True)
    table.add_column("by")
    for canary in canaries:
        table.add_row(
            escape(canary["alias"]),
            cell(aliases.get(canary["alias"])),
            str(canary["version"]),
            f"{canary['percent']:g}%",
            cell(canary["sticky_key"]),
            _since(canary["created_at"]),
            cell(canary["created_by"]),
        )
    return table


def canary_set_line(record: dict[str, Any]) -> str:
    """``set_canary``'s result: the split, and what it replaced."""
    sticky = f", sticky by {escape(record['sticky_key'])}" if record["sticky_key"] else ""
    replaced = record["replaced"]
    was = "" if replaced is None else f" (replaces the canary to version {replaced['version']})"
    return (
        f"{escape(record['name'])} {escape(record['alias'])}: [bold]{record['percent']:g}%[/] "
        f"to version [bold]{record['version']}[/], the rest to version "
        f"{record['alias_version']}{sticky}{was}"
    )


def rollback_line(result: dict[str, Any]) -> str:
    """A rollback's result: what was removed (if anything) and where traffic goes now."""
    what = f"{escape(result['name'])} {escape(result['alias'])}"
    where = "nowhere" if result["version"] is None else f"version [bold]{result['version']}[/]"
    removed = result["canary"]
    if removed is None:
        return f"{what} has no canary: all traffic already goes to {where}"
    return (
        f"rolled back {what}: the canary ({removed['percent']:g}% to version "
        f"{removed['version']}) is gone; all traffic goes to {where}"
    )


def canary_promoted_line(moved: dict[str, Any]) -> str:
    """``promote_canary``'s result: the alias's move."""
    return (
        f"{escape(moved['name'])} {escape(moved['alias'])}: version "
        f"{moved['previous_version']} -> [bold]{moved['version']}[/] (its "
        f"{moved['canary']['percent']:g}% canary, promoted)"
    )
