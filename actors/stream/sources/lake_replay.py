"""A Lake table replayed in event-time order: a bounded ``StreamSource``.

``open`` pins one snapshot (the checkpointed one, the one given, else the current),
reads the table at it and sorts the rows by ``time_column`` (stable, nulls last), so a
replay of the same snapshot hands out the same batches in the same order every time.
Each delivery is an Arrow IPC stream of up to ``batch_rows`` rows; its ``tag`` is the
row offset where it ends, and the resume position is ``{"snapshot_id", "offset"}``.

The whole snapshot is read into memory once (``LakeService.scan``, bounded by
``lake.max_result_bytes``): meant for replays and backfills of moderate tables.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.ipc as pa_ipc

from actors.ingest.sources.messages import ARROW_STREAM
from actors.lake.service import LakeService
from actors.stream.ports import Delivery
from cluster.errors import InvalidInputError


class LakeReplaySource:
    """Rows of one Lake snapshot, ordered by ``time_column``, as Arrow batches."""

    kind = "lake"

    def __init__(
        self,
        lake: LakeService,
        table: str,
        *,
        time_column: str,
        batch_rows: int = 10_000,
        snapshot_id: int | None = None,
    ) -> None:
        if batch_rows < 1:
            raise InvalidInputError(field="batch_rows", value=batch_rows, allowed="1 or more rows")
        self.lake = lake
        self.table = table
        self.time_column = time_column
        self.batch_rows = batch_rows
        self.snapshot_id = snapshot_id
        self._rows: pa.Table | None = None
        self._cursor = 0  # next row to hand out
        self._acked = 0  # rows before this offset are committed
        self._handed = 0  # rows before this offset were handed out at least once
        self._generation = 0

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def finished(self) -> bool:
        """True once every row of the snapshot was handed out."""
        return self._rows is not None and self._cursor >= self._rows.num_rows

    async def open(self, position: dict[str, Any] | None = None) -> None:
        """Pin the snapshot and load its rows, sorted; resume at ``position["offset"]``."""
        if position is not None:
            snapshot_id, offset = _parse_position(position)
        else:
            snapshot_id, offset = self.snapshot_id, 0
            if snapshot_id is None:
                snapshot_id = (await self.lake.describe(self.table))["current_snapshot_id"]
        self.snapshot_id = snapshot_id
        rows = pa.table({}) if snapshot_id is None else await self._sorted(snapshot_id)
        if offset > rows.num_rows:
            raise InvalidInputError(
                field="position.offset",
                value=offset,
                allowed=f"0 to {rows.num_rows} (the rows of {self.table!r} at snapshot "
                f"{snapshot_id}); start the replay afresh without a position",
            )
        self._rows = rows
        self._cursor = self._acked = self._handed = offset
        self._generation += 1

    async def _sorted(self, snapshot_id: int) -> pa.Table:
        rows = await self.lake.scan(self.table, snapshot_id=snapshot_id)
        if self.time_column not in rows.column_names:
            raise InvalidInputError(
                field="time_column",
                value=self.time_column,
                allowed=f"a column of {self.table!r}: {', '.join(rows.column_names)}",
            )
        # Table.sort_by is a stable sort: rows with equal times keep the table's order.
        return rows.sort_by([(self.time_column, "ascending")])

    async def fetch(self, max_messages: int, timeout_s: float) -> list[Delivery]:
        """Up to ``max_messages`` batches at once (never waits; [] once finished)."""
        rows = self._rows
        if rows is None:
            raise InvalidInputError(
                field="source", value=self.table, allowed="call open() before fetch()"
            )
        out: list[Delivery] = []
        while len(out) < max_messages and self._cursor < rows.num_rows:
            start = self._cursor
            end = min(start + self.batch_rows, rows.num_rows)
            out.append(
                Delivery(
                    message_id=f"lake:{self.table}:{self.snapshot_id}:{start}",
                    body=_ipc_stream(rows.slice(start, end - start)),
                    content_type=ARROW_STREAM,
                    tag=end,
                    generation=self._generation,
                    redelivered=start < self._handed,
                )
            )
            self._cursor = end
        self._handed = max(self._handed, self._cursor)
        return out

    def position(self, upto: Delivery | None) -> dict[str, Any] | None:
        """``{"snapshot_id", "offset"}`` to resume after ``upto`` (else the acked offset)."""
        offset = self._acked if upto is None else upto.tag
        return {"snapshot_id": self.snapshot_id, "offset": offset}

    async def ack(self, upto: Delivery) -> bool:
        """Mark rows up to ``upto.tag`` committed; False if its generation is gone."""
        if upto.generation != self._generation:
            return False
        self._acked = max(self._acked, upto.tag)
        return True

    async def dead_letter(self, deliveries: list[Delivery]) -> None:
        """Nothing to route: the rows stay in the table and are skipped once acked."""

    async def requeue_unacked(self) -> None:
        """Rewind to the last acked offset (new generation)."""
        self._cursor = self._acked
        self._generation += 1

    async def close(self) -> None:
        """Drop the loaded rows."""
        self._rows = None


def _parse_position(position: dict[str, Any]) -> tuple[int | None, int]:
    snapshot_id, offset = position.get("snapshot_id"), position.get("offset", 0)
    valid_snapshot = snapshot_id is None or (
        isinstance(snapshot_id, int) and not isinstance(snapshot_id, bool)
    )
    if not valid_snapshot or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidInputError(
            field="position",
            value=position,
            allowed='{"snapshot_id": int or null, "offset": int >= 0} as position() made it',
        )
    return snapshot_id, offset


def _ipc_stream(rows: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa_ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows)
    return bytes(sink.getvalue().to_pybytes())
