"""The last committed outputs of a topology, for ``tail`` and WebSocket subscribers.

A bounded ring of ``(seq, epoch, output, rows)``: the runner appends each committed
epoch's outputs (only after the commit, so a subscriber never sees a result that a
rollback takes back); readers long-poll with the last ``seq`` they saw. A slow reader
that falls behind the ring skips ahead and is told how many entries it missed.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from actors.stream.sinks import _encode  # one JSON form of a row for every sink


@dataclass(frozen=True)
class Entry:
    seq: int
    epoch: int
    output: str
    rows: pa.Table


class OutputHub:
    """Thread-safe ring of committed outputs (written by the loop, read by actor calls)."""

    def __init__(self, capacity: int = 256, max_rows: int = 1000) -> None:
        self._ring: deque[Entry] = deque(maxlen=capacity)
        self._cond = threading.Condition()
        self._seq = 0
        self._max_rows = max_rows

    def publish(self, epoch: int, outputs: Mapping[str, pa.Table]) -> None:
        with self._cond:
            for name, table in outputs.items():
                if table.num_rows:
                    self._seq += 1
                    rows = table.slice(max(0, table.num_rows - self._max_rows))
                    self._ring.append(Entry(self._seq, epoch, name, rows))
            self._cond.notify_all()

    def read(
        self, after: int, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]:
        """Entries newer than ``after`` (waiting up to ``timeout_s`` for one)."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after, timeout=max(0.0, timeout_s))
            oldest = self._ring[0].seq if self._ring else self._seq + 1
            missed = max(0, oldest - after - 1) if after < self._seq else 0
            entries = [e for e in self._ring if e.seq > after]
            cursor = self._seq
        chosen = [e for e in entries if outputs is None or e.output in outputs]
        return {
            "cursor": cursor,
            "missed": missed,
            "entries": [
                {
                    "seq": e.seq,
                    "epoch": e.epoch,
                    "output": e.output,
                    "rows": [json.loads(_encode(r)) for r in e.rows.to_pylist()],
                }
                for e in chosen
            ],
        }
