"""Configuration of a windowed aggregation: time column, keys, window, aggregations."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

AggFn = Literal["count", "sum", "mean", "min", "max", "first", "last", "distinct", "quantile"]

#: Column names the engine adds to results; aggregations may not reuse them.
RESERVED = frozenset({"window_start", "window_end", "is_update"})


class TumblingWindow(BaseModel):
    """Fixed, non-overlapping windows ``[k*size, (k+1)*size)``."""

    kind: Literal["tumbling"] = "tumbling"
    size_s: float = Field(gt=0, description="window length in seconds")


class SlidingWindow(BaseModel):
    """Overlapping (hop) windows of ``size_s`` starting every ``slide_s`` seconds."""

    kind: Literal["sliding"] = "sliding"
    size_s: float = Field(gt=0, description="window length in seconds")
    slide_s: float = Field(gt=0, description="distance between window starts in seconds")

    @model_validator(mode="after")
    def _slide_fits(self) -> SlidingWindow:
        if self.slide_s > self.size_s:
            raise ValueError(
                f"slide_s={self.slide_s} exceeds size_s={self.size_s}: events between "
                "windows would belong to none; use slide_s <= size_s"
            )
        return self


class SessionWindow(BaseModel):
    """Per-key sessions: a silence of at least ``gap_s`` seconds closes a session."""

    kind: Literal["session"] = "session"
    gap_s: float = Field(gt=0, description="inactivity gap in seconds that ends a session")


WindowSpec = Annotated[TumblingWindow | SlidingWindow | SessionWindow, Field(discriminator="kind")]


class Aggregation(BaseModel):
    """One output column: ``fn`` over ``column`` named ``as``."""

    model_config = ConfigDict(populate_by_name=True)

    column: str | None = Field(
        default=None, description="input column; may be omitted only for count (counts events)"
    )
    fn: AggFn = Field(description="aggregation function")
    as_: str = Field(alias="as", min_length=1, description="output column name")
    q: float | None = Field(
        default=None, ge=0, le=1, description="quantile in [0, 1]; required for fn=quantile"
    )

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        if self.column is None and self.fn != "count":
            raise ValueError(f"aggregation {self.as_!r}: fn={self.fn} needs a column")
        if (self.fn == "quantile") != (self.q is not None):
            raise ValueError(
                f"aggregation {self.as_!r}: q={self.q} is set only and always for fn=quantile"
            )
        if self.as_ in RESERVED or "__" in self.as_:
            raise ValueError(
                f"aggregation name {self.as_!r} is reserved; avoid {sorted(RESERVED)} and '__'"
            )
        return self


class StreamConfig(BaseModel):
    """A keyed, event-time windowed aggregation."""

    time_column: str = Field(
        min_length=1, description="event time: a timestamp column or numeric seconds"
    )
    key_columns: list[str] = Field(default_factory=list, description="group-by columns")
    window: WindowSpec
    aggregations: list[Aggregation] = Field(min_length=1, description="output aggregates")
    max_delay_s: float = Field(
        default=0.0, ge=0, description="bounded out-of-orderness subtracted for the watermark"
    )
    allowed_lateness_s: float = Field(
        default=0.0, ge=0, description="how long after window end late events still update it"
    )

    @model_validator(mode="after")
    def _names(self) -> StreamConfig:
        names = [a.as_ for a in self.aggregations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"aggregation names must be unique; repeated: {dupes}")
        clash = sorted(set(names) & set(self.key_columns))
        if clash:
            raise ValueError(f"aggregation names {clash} clash with key_columns; rename them")
        if self.time_column in self.key_columns:
            raise ValueError(f"time_column {self.time_column!r} cannot also be a key column")
        return self
