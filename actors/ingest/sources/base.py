"""The source port: what a run will read (a plan), how it reads it, and what it consumed.

A run of a pipeline follows one protocol, whatever the source (see ``actors/ingest/state``):

1. ``source.plan(state_view)`` lists the inputs this run will read (files with size and
   mtime, a SQL range above the stored high-water mark, queue messages fetched without
   ack, a Lake snapshot range) and leaves out what ``state_view`` records as consumed;
2. the runner reads ``source.read(plan)`` (or the ``splits`` of the plan in parallel) and
   commits one Iceberg snapshot carrying the run id in its summary;
3. ``state.mark_consumed(pipeline, run_id, plan)`` records the plan's inputs and new
   position; then ``source.ack(plan)`` (RabbitMQ acks; a no-op elsewhere).

Plans are plain, picklable data (``to_dict``/``from_dict`` give their JSON form, minus
message bodies), so the runner can ship splits to workers and store a plan with the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.errors import DatapunkError, InvalidInputError

SourceKind = Literal["files", "sql", "rabbitmq", "lake"]
InputKind = Literal["file", "rows", "message", "snapshot"]
# Inputs remembered one by one; "rows" (SQL ranges) are remembered by position only.
RECORDED_KINDS: frozenset[str] = frozenset({"file", "message", "snapshot"})
_LINEAGE_IDS = 100


@dataclass(frozen=True, slots=True)
class InputRef:
    """One input of a plan.

    ``id`` is the file's absolute path, the message id, the SQL source's identity or the
    Lake table. ``fingerprint`` tells versions of the same id apart (``size:mtime_ns`` or
    ``sha256:…`` of a file, a snapshot id); ``after``/``upto`` bound a SQL range or Lake
    snapshot range (encoded positions, ``after`` exclusive). ``delivery_tag`` and ``body``
    belong to a RabbitMQ delivery of this process and are never serialised.
    """

    kind: InputKind
    id: str
    fingerprint: str = ""
    size: int | None = None
    mtime_ns: int | None = None
    after: str | None = None
    upto: str | None = None
    delivery_tag: int | None = field(default=None, compare=False)
    content_type: str | None = field(default=None, compare=False)
    body: bytes | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: everything but the delivery and the body; ``None`` left out."""
        out: dict[str, Any] = {"kind": self.kind, "id": self.id}
        for name in ("fingerprint", "size", "mtime_ns", "after", "upto"):
            value = getattr(self, name)
            if value not in (None, ""):
                out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputRef:
        return cls(
            kind=data["kind"],
            id=data["id"],
            fingerprint=data.get("fingerprint", ""),
            size=data.get("size"),
            mtime_ns=data.get("mtime_ns"),
            after=data.get("after"),
            upto=data.get("upto"),
        )


@dataclass(frozen=True, slots=True)
class SourcePlan:
    """What one run reads from one source.

    ``position`` is the cursor to store once the run is consumed (the new SQL
    high-water mark, the Lake snapshot read), ``None`` when the source keeps none.
    ``skipped`` counts inputs left out because they were consumed before;
    ``redelivered`` holds queue messages delivered again although already consumed:
    they are not read, only acked. ``parts`` are the units ``splits`` divides
    (Lake data files).
    """

    source: str
    kind: SourceKind
    refs: tuple[InputRef, ...] = ()
    position: str | None = None
    skipped: int = 0
    redelivered: tuple[InputRef, ...] = ()
    parts: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to read (there may still be redelivered messages to ack)."""
        return not self.refs

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "kind": self.kind,
            "refs": [ref.to_dict() for ref in self.refs],
            "position": self.position,
            "skipped": self.skipped,
            "redelivered": [ref.to_dict() for ref in self.redelivered],
            "parts": list(self.parts),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourcePlan:
        return cls(
            source=data["source"],
            kind=data["kind"],
            refs=tuple(InputRef.from_dict(r) for r in data.get("refs", ())),
            position=data.get("position"),
            skipped=int(data.get("skipped", 0)),
            redelivered=tuple(InputRef.from_dict(r) for r in data.get("redelivered", ())),
            parts=tuple(data.get("parts", ())),
        )

    def lineage(self) -> dict[str, Any]:
        """A short JSON summary for the run record: source, inputs (first 100), range."""
        ids = [ref.id for ref in self.refs]
        out: dict[str, Any] = {
            "source": self.source,
            "kind": self.kind,
            "inputs": len(ids),
            "ids": ids[:_LINEAGE_IDS],
            "skipped": self.skipped,
        }
        bounded = [ref for ref in self.refs if ref.upto is not None]
        if bounded:
            out["after"] = bounded[0].after
            out["upto"] = bounded[-1].upto
        if self.position is not None:
            out["position"] = self.position
        return out


@dataclass(frozen=True)
class SourceBatch:
    """Rows read from a source, with one ref per row (``path:row``, a message id, …).

    ``errors`` carries inputs that could not be decoded when the source was asked to
    report rather than raise (RabbitMQ ``undecodable="report"``): each error holds the
    input's id and raw bytes, so the runner quarantines it or fails the run.
    """

    table: pa.Table
    refs: pa.Array | RowRefs
    errors: tuple[DatapunkError, ...] = ()

    def __post_init__(self) -> None:
        if len(self.refs) != self.table.num_rows:
            raise ValueError(
                f"a SourceBatch needs one ref per row: {self.table.num_rows} rows, "
                f"{len(self.refs)} refs"
            )


@dataclass(frozen=True)
class StateView:
    """What a pipeline consumed before, as its sources see it when planning.

    ``consumed`` holds ``(source, kind, id, fingerprint)`` of recorded inputs (files,
    recent message ids, pinned snapshots); ``positions`` the stored cursor per source.
    """

    pipeline: str
    consumed: frozenset[tuple[str, str, str, str]] = frozenset()
    positions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, pipeline: str) -> StateView:
        return cls(pipeline)

    def has(self, source: str, kind: str, input_id: str, fingerprint: str = "") -> bool:
        """Whether this exact input (and version) was consumed."""
        return (source, kind, input_id, fingerprint) in self.consumed

    def position(self, source: str) -> str | None:
        """The encoded cursor stored for ``source``; ``None`` before its first run."""
        return self.positions.get(source)


@runtime_checkable
class Source(Protocol):
    """A pipeline input: plans a run, reads it, and settles deliveries after the commit."""

    name: str
    kind: SourceKind

    def plan(self, state: StateView) -> SourcePlan:
        """The inputs this run will read: new ones only, per ``state``."""
        ...

    def read(self, plan: SourcePlan) -> Iterator[SourceBatch]:
        """The rows of ``plan`` in batches, each with per-row refs."""
        ...

    def splits(self, plan: SourcePlan, n: int) -> list[SourcePlan]:
        """``plan`` divided into at most ``n`` plans to read in parallel (same position)."""
        ...

    def ack(self, plan: SourcePlan) -> None:
        """Settle the plan's deliveries once the run is committed and marked consumed."""
        ...

    def nack(self, plan: SourcePlan, requeue: bool = True) -> None:
        """Give the plan's deliveries back after a failed run."""
        ...

    def close(self) -> None:
        """Release connections; unsettled deliveries return to their queue."""
        ...


class NoDeliveries:
    """Mixin for sources with nothing to acknowledge (files, SQL, Lake)."""

    def ack(self, plan: SourcePlan) -> None:
        """Nothing to settle: files, SQL ranges and snapshots stay where they are."""

    def nack(self, plan: SourcePlan, requeue: bool = True) -> None:
        """Nothing to give back."""

    def close(self) -> None:
        """Nothing held between calls."""

    def __enter__(self) -> NoDeliveries:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# ---------------------------------------------------------------- helpers


class RowRefs:
    """``prefix`` + row number per row, as strings only for the rows someone reads.

    Most rows pass every check and their refs are never read, so a batch keeps the row
    numbers and ``take``/``cast``/``to_pylist`` make strings of just the rows asked for.
    """

    __slots__ = ("numbers", "prefix")

    def __init__(self, prefix: str, numbers: pa.Array) -> None:
        self.prefix = prefix
        self.numbers = numbers

    def __len__(self) -> int:
        return len(self.numbers)

    def take(self, indices: pa.Array | Sequence[int]) -> RowRefs:
        return RowRefs(self.prefix, pc.take(self.numbers, indices))

    def to_array(self) -> pa.Array:
        text = self.numbers.cast(pa.string())
        return pc.binary_join_element_wise(pa.scalar(self.prefix), text, "")

    def cast(self, target: pa.DataType) -> pa.Array:
        return self.to_array().cast(target)

    def to_pylist(self) -> list[Any]:
        return self.to_array().to_pylist()


def row_refs(prefix: str, first: int, count: int) -> RowRefs:
    """``prefix`` + row number for ``count`` rows numbered from ``first`` (lazily)."""
    return RowRefs(prefix, pa.array(np.arange(first, first + count, dtype=np.int64)))


def repeated_ref(ref: str, count: int) -> pa.Array:
    """The same ref ``count`` times (every row of one message)."""
    return pa.array([ref] * count, type=pa.string())


def check_split_count(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise InvalidInputError(field="n", value=n, allowed="a whole number of splits, 1 or more")


T = TypeVar("T")


def balance(items: Sequence[T], n: int, weight: Iterable[int]) -> list[list[T]]:
    """``items`` in at most ``n`` non-empty groups of about equal total ``weight``.

    Largest first onto the lightest group (LPT); each group keeps the items' order.
    """
    check_split_count(n)
    weights = list(weight)
    groups: list[list[int]] = [[] for _ in range(min(n, len(items)))]
    loads = [0] * len(groups)
    for index in sorted(range(len(items)), key=lambda i: -weights[i]):
        lightest = loads.index(min(loads))
        groups[lightest].append(index)
        loads[lightest] += max(weights[index], 1)
    return [[items[i] for i in sorted(group)] for group in groups if group]


def split_refs(plan: SourcePlan, n: int, weight: Iterable[int]) -> list[SourcePlan]:
    """``plan`` divided by its refs; the first split keeps ``skipped`` and ``redelivered``."""
    check_split_count(n)
    if plan.empty:
        return [plan]
    groups = balance(plan.refs, n, weight)
    return [
        replace(
            plan,
            refs=tuple(group),
            skipped=plan.skipped if i == 0 else 0,
            redelivered=plan.redelivered if i == 0 else (),
        )
        for i, group in enumerate(groups)
    ]


# ---------------------------------------------------------------- positions

Position = int | float | Decimal | str | datetime | date


def encode_position(value: Position) -> str:
    """A cursor value as tagged JSON text, so it comes back with its type."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str | date):
        raise InvalidInputError(
            field="incremental value",
            value=repr(value),
            allowed="an integer, float, decimal, string, date or datetime column",
        )
    if isinstance(value, datetime):
        tag, text = "datetime", value.isoformat()
    elif isinstance(value, date):
        tag, text = "date", value.isoformat()
    elif isinstance(value, int):
        tag, text = "int", str(value)
    elif isinstance(value, float):
        tag, text = "float", repr(value)
    elif isinstance(value, Decimal):
        tag, text = "decimal", str(value)
    else:
        tag, text = "str", value
    return json.dumps({"type": tag, "value": text}, separators=(",", ":"))


_DECODERS: dict[str, Any] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "int": int,
    "float": float,
    "decimal": Decimal,
    "str": str,
}


def decode_position(text: str | None) -> Position | None:
    """The value ``encode_position`` encoded; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        data = json.loads(text)
        value: Position = _DECODERS[data["type"]](data["value"])
    except (ValueError, KeyError, TypeError, ArithmeticError):
        raise InvalidInputError(
            field="stored position",
            value=text,
            allowed='tagged JSON such as {"type":"int","value":"42"}; '
            "reset the pipeline's state if it was edited by hand",
        ) from None
    return value
