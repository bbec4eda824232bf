"""Another Lake table, at a pinned snapshot (id or time) or incrementally by snapshot.

Pinned (``snapshot_id`` or ``as_of``): the whole table as of that snapshot, once: the
snapshot is recorded as consumed, so running again adds nothing. Incremental (the
default): the first run reads the whole current snapshot; later runs read only the rows
*appended* since the snapshot consumed last (pyiceberg's incremental append scan), and
the position moves to the snapshot read. Rows changed by overwrite, upsert or delete
snapshots are not re-read (Iceberg append-scan semantics), nor are compactions' rewrites.
If the table was rolled back past the consumed snapshot, planning fails with
``LakePositionError`` rather than guessing. Splits are by data file; row refs are
``<data file>:<row>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import pyarrow as pa
from pyiceberg.io.pyarrow import ArrowScan
from pyiceberg.table import Table

from actors.ingest.sources.base import (
    InputRef,
    NoDeliveries,
    SourceBatch,
    SourceKind,
    SourcePlan,
    StateView,
    balance,
    check_split_count,
    decode_position,
    encode_position,
    row_refs,
)
from actors.ingest.sources.errors import LakePositionError
from actors.lake.core import LakeCore
from actors.lake.service import LakeService, parse_as_of
from actors.lake.specs import parse_table_name
from cluster.errors import InvalidInputError, PlatformStateError


class LakeSource(NoDeliveries):
    """Rows of ``table`` through ``lake`` (a ``LakeService`` or its ``LakeCore``).

    The source reads in-process through the core's catalog (blocking pyiceberg calls),
    as a reader thread or Ray task would; nothing goes through the async service API.
    """

    kind: SourceKind = "lake"

    def __init__(
        self,
        lake: LakeService | LakeCore,
        table: str,
        *,
        name: str = "lake",
        snapshot_id: int | None = None,
        as_of: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        if snapshot_id is not None and as_of is not None:
            raise InvalidInputError(
                field="snapshot_id/as_of",
                value={"snapshot_id": snapshot_id, "as_of": as_of},
                allowed="a snapshot id or a time, not both",
            )
        self.core = lake.core if isinstance(lake, LakeService) else lake
        self.table = parse_table_name(table).full
        self.name = name
        self.snapshot_id = snapshot_id
        self.as_of = parse_as_of(as_of)
        self.columns = tuple(columns) if columns else ("*",)

    @property
    def pinned(self) -> bool:
        return self.snapshot_id is not None or self.as_of is not None

    # --- plan ----------------------------------------------------------------------

    def plan(self, state: StateView) -> SourcePlan:
        """The pinned snapshot once, or the rows appended since the consumed snapshot."""
        target = self.core.resolve_snapshot(self.table, self.snapshot_id, self.as_of)
        if target is None:  # an empty table: nothing yet, and no position to keep
            return SourcePlan(source=self.name, kind=self.kind)
        if self.pinned:
            if state.has(self.name, "snapshot", self.table, str(target)):
                return SourcePlan(source=self.name, kind=self.kind, skipped=1)
            return self._plan(None, target, position=None)
        stored = state.position(self.name)
        after = decode_position(stored)
        if after == target:
            return SourcePlan(source=self.name, kind=self.kind, position=stored)
        if after is not None and not isinstance(after, int):
            raise InvalidInputError(
                field="stored position", value=stored, allowed="a Lake snapshot id"
            )
        return self._plan(after, target, position=encode_position(target))

    def _plan(self, after: int | None, target: int, position: str | None) -> SourcePlan:
        table = self._load()
        scan = self._scan(table, after, target)
        tasks = list(scan.plan_files())
        ref = InputRef(
            kind="snapshot",
            id=self.table,
            fingerprint=str(target) if after is None else f"{after}..{target}",
            size=sum(task.file.record_count for task in tasks),
            after=None if after is None else encode_position(after),
            upto=encode_position(target),
        )
        parts = tuple(task.file.file_path for task in tasks)
        return SourcePlan(
            source=self.name, kind=self.kind, refs=(ref,), position=position, parts=parts
        )

    def _load(self) -> Table:
        _, table = self.core.tables.load(self.table)
        return table

    def _scan(self, table: Table, after: int | None, target: int) -> Any:
        if after is None:
            return table.scan(snapshot_id=target, selected_fields=self.columns)
        scan = table.incremental_append_scan(
            from_snapshot_id_exclusive=after,
            to_snapshot_id_inclusive=target,
            selected_fields=self.columns,
        )
        try:
            scan._validate_and_resolve_snapshots()  # fail here, not in a reader
        except ValueError as exc:
            raise LakePositionError(
                table=self.table, consumed=after, current=target, reason=str(exc)
            ) from None
        return scan

    # --- read ----------------------------------------------------------------------

    def read(self, plan: SourcePlan) -> Iterator[SourceBatch]:
        """The planned data files, each as batches with ``<file>:<row>`` refs."""
        for ref in plan.refs:
            yield from self._read_ref(ref, set(plan.parts))

    def _read_ref(self, ref: InputRef, parts: set[str]) -> Iterator[SourceBatch]:
        after, target = decode_position(ref.after), decode_position(ref.upto)
        if not isinstance(target, int) or not (after is None or isinstance(after, int)):
            raise InvalidInputError(field="plan ref", value=ref.to_dict(), allowed="a Lake ref")
        table = self._load()
        scan = self._scan(table, after, target)
        tasks = [task for task in scan.plan_files() if not parts or task.file.file_path in parts]
        missing = parts - {task.file.file_path for task in tasks}
        if missing:
            raise PlatformStateError(
                f"data files of table {self.table!r} planned for this run are gone "
                f"({len(missing)}, e.g. {sorted(missing)[0]!r}); snapshots may have been "
                "expired meanwhile. Fix: run the pipeline again to plan afresh",
                table=self.table,
            )
        reader = ArrowScan(table.metadata, table.io, scan.projection(), scan.row_filter)
        for task in tasks:
            row = 1
            for batch in reader.to_record_batches([task]):
                if batch.num_rows == 0:
                    continue
                refs = row_refs(f"{task.file.file_path}:", row, batch.num_rows)
                yield SourceBatch(pa.Table.from_batches([batch]), refs)
                row += batch.num_rows

    def splits(self, plan: SourcePlan, n: int) -> list[SourcePlan]:
        """By data file (round numbers of files per split); the position is shared."""
        check_split_count(n)
        if len(plan.parts) <= 1:
            return [plan]
        groups = balance(plan.parts, n, (1 for _ in plan.parts))
        return [replace(plan, parts=tuple(group)) for group in groups]
