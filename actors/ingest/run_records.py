"""Ingest run records and pure helpers: counts, run ids, input keys, committed runs.

Kept apart from ``actors/ingest/state`` (the database side) so the runner and the CLI can
use them without touching a database.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cluster.db.models import IngestRun
from cluster.errors import InvalidInputError

RUN_ID_SUMMARY_KEY = "datapunk.ingest.run-id"
RunStatus = Literal["running", "succeeded", "failed", "recovered", "abandoned"]
FinalStatus = Literal["succeeded", "failed"]
_MAX_NAME = 200


@dataclass(frozen=True, slots=True)
class RunCounts:
    """Rows a run read from its sources, wrote, quarantined and filtered out."""

    read: int = 0
    written: int = 0
    quarantined: int = 0
    filtered: int = 0


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run as stored; ``counts`` is ``None`` until the run finishes."""

    run_id: str
    pipeline: str
    config_hash: str
    status: RunStatus
    started_at: datetime
    finished_at: datetime | None
    consumed_at: datetime | None
    duration_s: float | None
    counts: RunCounts | None
    snapshot_id: int | None
    lineage: Any
    error: str | None


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """Runs marked consumed from their stored plan, and runs given up as uncommitted."""

    recovered: tuple[str, ...] = ()
    abandoned: tuple[str, ...] = ()


def new_run_id(now: datetime) -> str:
    """``run_<UTC time>_<random>``: sortable by start, unique across processes."""
    return f"run_{now.astimezone(UTC):%Y%m%dT%H%M%S}_{secrets.token_hex(6)}"


def committed_run_ids(history: Iterable[Any], key: str = RUN_ID_SUMMARY_KEY) -> set[str]:
    """Run ids in snapshot summaries: ``LakeService.history()`` dicts or ``SnapshotInfo``s."""
    found = set()
    for entry in history:
        summary = entry.get("summary") if isinstance(entry, Mapping) else entry.summary
        value = (summary or {}).get(key)
        if value:
            found.add(str(value))
    return found


def input_key(pipeline: str, source: str, kind: str, input_id: str, fingerprint: str) -> str:
    """The primary key of an ``ingest_inputs`` row."""
    text = json.dumps([pipeline, source, kind, input_id, fingerprint], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def as_counts(counts: RunCounts | Mapping[str, int]) -> RunCounts:
    if isinstance(counts, RunCounts):
        values = counts
    else:
        unknown = set(counts) - {"read", "written", "quarantined", "filtered"}
        if unknown:
            raise InvalidInputError(
                field="counts",
                value=sorted(unknown),
                allowed="read, written, quarantined, filtered",
            )
        values = RunCounts(**{k: int(v) for k, v in counts.items()})
    if min(values.read, values.written, values.quarantined, values.filtered) < 0:
        raise InvalidInputError(field="counts", value=values, allowed="counts of 0 or more")
    return values


def check_name(field: str, value: str, limit: int = _MAX_NAME) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise InvalidInputError(field=field, value=value, allowed=f"1 to {limit} characters")
    return value


def run_record(row: IngestRun) -> RunRecord:
    counts = None
    if row.finished_at is not None and row.rows_read is not None:
        counts = RunCounts(
            row.rows_read or 0,
            row.rows_written or 0,
            row.rows_quarantined or 0,
            row.rows_filtered or 0,
        )
    return RunRecord(
        run_id=row.run_id,
        pipeline=row.pipeline,
        config_hash=row.config_hash,
        status=row.status,  # type: ignore[arg-type]
        started_at=row.started_at,
        finished_at=row.finished_at,
        consumed_at=row.consumed_at,
        duration_s=row.duration_s,
        counts=counts,
        snapshot_id=row.snapshot_id,
        lineage=row.lineage,
        error=row.error,
    )
