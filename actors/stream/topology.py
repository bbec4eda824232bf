"""A stream topology: source, event schema, map/filter, keyed operators, sinks.

Declared in YAML (``configs/streams/*.yaml``) or built in Python; validated here in
full before anything starts, so a typo in a column or an output name fails at deploy
with the value and the fix, not minutes later in an actor.

Outputs a sink may take ``from``: each operator's name, ``events`` (the events after
filter and derive), ``late`` (events too late for an operator, with ``operator`` and
``reason``) and ``dead_letters`` (undecodable or schema-violating messages). ``late``
and ``dead_letters`` always go to Lake tables (``late_table``/``dead_letter_table``):
nothing is dropped silently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import pyarrow as pa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actors.stream.anomaly import Threshold, ZScore
from actors.stream.config import Aggregation, StreamConfig, WindowSpec
from actors.stream.expr import Expr
from actors.stream.pattern_spec import AllOf, AnyOf, Cond, Condition
from cluster.errors import DatapunkError, InvalidInputError


class InvalidTopologyError(InvalidInputError):
    """A topology file or dict that does not validate; the message lists every problem."""

    code: ClassVar[str] = "invalid_topology"

    def __init__(self, *, label: str, problems: str) -> None:
        DatapunkError.__init__(
            self,
            f"{label} is invalid: {problems}; fix the topology and deploy again",
            label=label,
            problems=problems,
        )


BUILTIN_OUTPUTS = ("events", "late", "dead_letters")
_NAME = r"^[a-z][a-z0-9_]{0,62}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class QueueSource(_Model):
    """A message queue: RabbitMQ when ``DATAPUNK_AMQP_URL`` is set, else the in-cluster queue."""

    kind: Literal["queue"] = "queue"
    queue: str | None = Field(default=None, description="queue name; default stream.<topology>")
    prefetch: int = Field(default=20_000, ge=1, le=1_000_000, description="unacked messages")


class LakeReplaySource(_Model):
    """A Lake table replayed in event-time order (backfill); the topology ends with it."""

    kind: Literal["lake"] = "lake"
    table: str = Field(min_length=3, description="namespace.table to replay")
    snapshot_id: int | None = Field(default=None, description="pinned snapshot; default latest")
    batch_rows: int = Field(default=50_000, ge=1, description="rows per replayed batch")


SourceSpec = Annotated[QueueSource | LakeReplaySource, Field(discriminator="kind")]


class WindowOp(_Model):
    """Keyed event-time windows with aggregations."""

    kind: Literal["window"] = "window"
    name: str = Field(pattern=_NAME, description="output name")
    window: WindowSpec
    aggregations: list[Aggregation] = Field(min_length=1)
    max_delay_s: float = Field(default=0.0, ge=0, description="bounded out-of-orderness")
    allowed_lateness_s: float = Field(default=0.0, ge=0, description="updates after window end")


class PatternOp(_Model):
    """``steps[0]`` then ``steps[1]`` ... per key within ``within_s``, without ``absent``."""

    kind: Literal["pattern"] = "pattern"
    name: str = Field(pattern=_NAME, description="output name")
    steps: list[Condition] = Field(min_length=1)
    within_s: float = Field(ge=0, description="time bound from first to last step")
    absent: Condition | None = Field(default=None, description="must not occur in between")
    max_delay_s: float = Field(default=0.0, ge=0, description="bounded out-of-orderness")


class AnomalyOp(_Model):
    """Threshold or z-score anomalies of ``column`` per key over a sliding window."""

    kind: Literal["anomaly"] = "anomaly"
    name: str = Field(pattern=_NAME, description="output name")
    column: str = Field(min_length=1)
    window_s: float = Field(gt=0)
    method: Annotated[Threshold | ZScore, Field(discriminator="kind")]


OperatorSpec = Annotated[WindowOp | PatternOp | AnomalyOp, Field(discriminator="kind")]


class LakeSinkSpec(_Model):
    kind: Literal["lake"] = "lake"
    from_: str = Field(alias="from", description="an operator name or a built-in output")
    table: str = Field(min_length=3, description="namespace.table (created on first write)")


class CacheSinkSpec(_Model):
    """Latest row per key in Redis (in-process cache when no Redis is configured)."""

    kind: Literal["latest"] = "latest"
    from_: str = Field(alias="from")


class AlertSinkSpec(_Model):
    """Rows published to a RabbitMQ topic exchange (or kept in-cluster without RabbitMQ)."""

    kind: Literal["alerts"] = "alerts"
    from_: str = Field(alias="from")
    exchange: str = Field(default="datapunk.alerts", min_length=1)


class SubscribeSinkSpec(_Model):
    """Rows pushed to WebSocket subscribers of ``/api/v1/streams/{name}/subscribe``."""

    kind: Literal["subscribe"] = "subscribe"
    from_: str = Field(alias="from")


SinkSpec = Annotated[
    LakeSinkSpec | CacheSinkSpec | AlertSinkSpec | SubscribeSinkSpec, Field(discriminator="kind")
]


class CheckpointSpec(_Model):
    interval_s: float = Field(default=1.0, gt=0, le=600, description="epoch length")
    max_events: int = Field(default=200_000, ge=1, description="events that end an epoch early")
    keep: int = Field(default=3, ge=1, le=100, description="checkpoints kept")


class Topology(_Model):
    """One deployable stream topology."""

    name: str = Field(pattern=_NAME, description="unique topology name")
    source: SourceSpec
    event_schema: dict[str, str] = Field(
        alias="schema", default_factory=dict, description="column: Lake type (long, string ...)"
    )
    time_column: str = Field(min_length=1, description="event-time column")
    key_by: list[str] = Field(default_factory=list, description="key columns")
    where: Condition | None = Field(default=None, description="events kept (Arrow compute)")
    derive: dict[str, Expr] = Field(default_factory=dict, description="new or replaced columns")
    operators: list[OperatorSpec] = Field(default_factory=list)
    sinks: list[SinkSpec] = Field(default_factory=list)
    partitions: int = Field(default=1, ge=1, le=64, description="actors, split by key hash")
    max_in_flight: int = Field(default=4, ge=1, le=64, description="batches per partition")
    actor_cpus: float = Field(
        default=0.25, ge=0, le=64, description="CPUs Ray reserves per partition and coordinator"
    )
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    namespace: str = Field(default="stream", pattern=_NAME, description="Lake namespace")
    late_table: str | None = Field(default=None, description="default <namespace>.<name>_late")
    dead_letter_table: str | None = Field(default=None)

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        names = [op.name for op in self.operators]
        taken = sorted(
            {n for n in names if names.count(n) > 1} | (set(names) & set(BUILTIN_OUTPUTS))
        )
        if taken:
            raise ValueError(f"operator names must be unique and not {BUILTIN_OUTPUTS}: {taken}")
        outputs = {*names, *BUILTIN_OUTPUTS}
        for sink in self.sinks:
            if sink.from_ not in outputs:
                raise ValueError(
                    f"sink from {sink.from_!r} names no output; choose one of {sorted(outputs)}"
                )
        if self.partitions > 1 and not self.key_by:
            raise ValueError(f"partitions={self.partitions} needs key_by columns to split by")
        if not self.key_by and any(isinstance(s, CacheSinkSpec) for s in self.sinks):
            raise ValueError("a `latest` sink keeps one row per key: set key_by")
        if isinstance(self.source, QueueSource) and not self.event_schema:
            raise ValueError("a queue source needs `schema` (column: type) to decode events")
        self._check_columns()
        return self

    def _check_columns(self) -> None:
        if not self.event_schema:
            return
        have = set(self.event_schema)
        for column, expr in self.derive.items():
            _need(expr.columns(), have, f"derive.{column}")
        have |= set(self.derive)
        _need({self.time_column, *self.key_by}, have, "time_column/key_by")
        if self.where is not None:
            _need(condition_columns(self.where), set(self.event_schema) | set(self.derive), "where")
        for op in self.operators:
            _need(operator_columns(op), have, f"operator {op.name}")

    # -- derived views ----------------------------------------------------------------

    @property
    def queue_name(self) -> str:
        source = self.source
        queue = source.queue if isinstance(source, QueueSource) else None
        return queue or f"stream.{self.name}"

    @property
    def late_table_name(self) -> str:
        return self.late_table or f"{self.namespace}.{self.name}_late"

    @property
    def dead_letter_table_name(self) -> str:
        return self.dead_letter_table or f"{self.namespace}.{self.name}_dead_letters"

    def arrow_schema(self) -> pa.Schema | None:
        """The declared event schema as Arrow, or None when the source brings its own."""
        if not self.event_schema:
            return None
        from actors.ingest.transforms import arrow_type

        return pa.schema([(name, arrow_type(t)) for name, t in self.event_schema.items()])

    def window_config(self, op: WindowOp) -> StreamConfig:
        return StreamConfig(
            time_column=self.time_column,
            key_columns=self.key_by,
            window=op.window,
            aggregations=op.aggregations,
            max_delay_s=op.max_delay_s,
            allowed_lateness_s=op.allowed_lateness_s,
        )


def condition_columns(condition: Cond | AllOf | AnyOf) -> set[str]:
    if isinstance(condition, AllOf):
        return set().union(*(condition_columns(c) for c in condition.all))
    if isinstance(condition, AnyOf):
        return set().union(*(condition_columns(c) for c in condition.any))
    return {condition.column}


def operator_columns(op: WindowOp | PatternOp | AnomalyOp) -> set[str]:
    if isinstance(op, WindowOp):
        return {a.column for a in op.aggregations if a.column}
    if isinstance(op, AnomalyOp):
        return {op.column}
    conditions = [*op.steps, *([op.absent] if op.absent else [])]
    return set().union(*(condition_columns(c) for c in conditions))


def _need(columns: set[str], have: set[str], where: str) -> None:
    missing = sorted(columns - have)
    if missing:
        raise ValueError(f"{where} reads unknown columns {missing}; known: {sorted(have)}")


def load_topology(source: str | Path | dict[str, Any]) -> Topology:
    """A topology from a YAML file, YAML text or a dict; ``InvalidTopologyError`` otherwise."""
    label = str(source) if isinstance(source, Path) else "topology"
    if isinstance(source, Path):
        if not source.is_file():
            raise InvalidTopologyError(label=label, problems="the file does not exist")
        data: Any = yaml.safe_load(source.read_text())
    elif isinstance(source, str):
        data = yaml.safe_load(source)
    else:
        data = source
    if not isinstance(data, dict):
        raise InvalidTopologyError(
            label=label, problems=f"expected a mapping with name, source, ...; got {data!r}"
        )
    try:
        return Topology.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'topology'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidTopologyError(
            label=label, problems=problems.replace("Value error, ", "")
        ) from None
