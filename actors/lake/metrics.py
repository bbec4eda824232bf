"""Lake commits and scan bytes in Ray's metrics system (exported to Prometheus by Ray).

``observations`` decides from one finished ``LakeService`` call what to count (no Ray in
it, so it is unit-tested); ``LakeMetrics`` records those counts in ``ray.util.metrics``
from the Lake actor. Ray prefixes the names with ``ray_``:
``ray_datapunk_lake_commits_total{table, operation}`` and
``ray_datapunk_lake_scan_bytes_total{table, method}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import pyarrow as pa
from ray.util import metrics

# The LakeService methods that commit a new data snapshot of one table (their first
# argument is the table's name).
COMMIT_METHODS = frozenset({"append", "append_file", "overwrite", "upsert", "delete", "rollback"})
# The reads that answer with Arrow tables: a scan of one table, or SQL over several.
SCAN_METHODS = frozenset({"scan", "sql"})


class Observation(NamedTuple):
    """Add ``amount`` to counter ``name`` under ``tags``."""

    name: str
    amount: float
    tags: dict[str, str]


def observations(
    method: str, args: Sequence[Any], kwargs: Mapping[str, Any], result: Any
) -> list[Observation]:
    """What one successful call adds to the Lake's counters."""
    if method in COMMIT_METHODS:
        table = args[0] if args else kwargs.get("name", "")
        return [Observation("commits_total", 1, {"table": str(table), "operation": method})]
    if method in SCAN_METHODS and isinstance(result, pa.Table):
        # SQL may join several tables; its bytes are counted under table="".
        table = (args[0] if args else kwargs.get("name", "")) if method == "scan" else ""
        tags = {"table": str(table), "method": method}
        # Arrow's in-memory size of what the read returned (after filters and limits).
        return [Observation("scan_bytes_total", float(result.nbytes), tags)]
    return []


class LakeMetrics:
    """The counters of one Lake actor."""

    def __init__(self) -> None:
        self._counters = {
            "commits_total": metrics.Counter(
                "datapunk_lake_commits_total",
                description="Data snapshots committed, by table and operation.",
                tag_keys=("table", "operation"),
            ),
            "scan_bytes_total": metrics.Counter(
                "datapunk_lake_scan_bytes_total",
                description="Arrow bytes returned by scans and SQL, by table and method.",
                tag_keys=("table", "method"),
            ),
        }

    def record(
        self, method: str, args: Sequence[Any], kwargs: Mapping[str, Any], result: Any
    ) -> None:
        for name, amount, tags in observations(method, args, kwargs, result):
            if amount > 0:
                self._counters[name].inc(amount, tags=tags)
