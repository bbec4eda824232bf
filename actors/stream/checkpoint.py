"""What one epoch's checkpoint holds, and its byte format.

A checkpoint is the topology's commit point: partition states after the epoch, the
epoch's outputs (so sinks can be re-written after a crash between saving it and
writing them), the source position and the ids of recently committed messages (so a
message whose ack was lost is recognised when the broker redelivers it).

Format: one Arrow IPC stream of ``(name, payload)`` rows with the JSON metadata in the
schema metadata. No pickle: a checkpoint read back from a shared database executes
nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

_META = b"datapunk.stream.checkpoint"
_FORMAT = 1


@dataclass
class Checkpoint:
    """One committed epoch."""

    epoch: int
    states: list[bytes]
    outputs: dict[str, pa.Table] = field(default_factory=dict)
    position: dict[str, Any] | None = None
    recent_ids: list[list[str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def encode(self) -> bytes:
        names = [f"state:{i}" for i in range(len(self.states))]
        blobs = list(self.states)
        for name, table in self.outputs.items():
            names.append(f"output:{name}")
            blobs.append(_ipc(table))
        meta = {
            "format": _FORMAT,
            "epoch": self.epoch,
            "partitions": len(self.states),
            "position": self.position,
            "recent_ids": self.recent_ids,
            "stats": self.stats,
            "finished": self.finished,
        }
        container = pa.table({"name": names, "payload": pa.array(blobs, pa.large_binary())})
        container = container.replace_schema_metadata({_META: json.dumps(meta, default=str)})
        return _ipc(container)

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        container = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        meta = json.loads((container.schema.metadata or {})[_META])
        blobs = dict(
            zip(container["name"].to_pylist(), container["payload"].to_pylist(), strict=True)
        )
        states = [blobs[f"state:{i}"] for i in range(int(meta["partitions"]))]
        outputs = {
            name.removeprefix("output:"): pa.ipc.open_stream(pa.py_buffer(blob)).read_all()
            for name, blob in blobs.items()
            if name.startswith("output:")
        }
        return cls(
            epoch=int(meta["epoch"]),
            states=states,
            outputs=outputs,
            position=meta.get("position"),
            recent_ids=[list(ids) for ids in meta.get("recent_ids", [])],
            stats=dict(meta.get("stats", {})),
            finished=bool(meta.get("finished", False)),
        )


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())
