"""The sections of a training spec as strict pydantic models.

``actors/forge/spec.py`` assembles them into ``TrainSpec`` and holds the cross-section
rules; this module holds what each section accepts on its own. A misspelt key is an
error, never silently ignored.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    model_validator,
)

from actors.lake.specs import parse_table_name
from cluster.errors import DatapunkError

Task = Literal["regression", "classification"]
_CLASS_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class Section(BaseModel):
    """A spec section: frozen, and a misspelt key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _table_name(value: str) -> str:
    try:
        parse_table_name(value)
    except DatapunkError:
        raise ValueError(
            f"{value!r} is not a Lake table name; fix: write namespace.table or table "
            "(letters, digits and _, not starting with a digit), e.g. forge_demo.diabetes"
        ) from None
    return value


def _distinct(values: list[str]) -> list[str]:
    dupes = sorted({v for v in values if values.count(v) > 1})
    if dupes:
        raise ValueError(f"{', '.join(map(repr, dupes))} listed twice; fix: list each once")
    return values


LakeTable = Annotated[str, AfterValidator(_table_name)]
ColumnName = Annotated[str, Field(min_length=1, max_length=200)]


class DataSpec(Section):
    """Which rows of which Lake snapshot train the model, and how they are split."""

    table: LakeTable = Field(description="Lake table to train on, e.g. forge_demo.diabetes.")
    snapshot_id: int | None = Field(
        None, description="Snapshot to read; unset = the latest, pinned when the run starts."
    )
    features: Annotated[list[ColumnName], AfterValidator(_distinct)] = Field(
        min_length=1, description="Numeric input columns, in the order the model sees them."
    )
    label: ColumnName = Field(description="The column the model predicts.")
    validation_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of rows held out for validation (seeded split)."
    )
    seed: int = Field(0, description="Seed of the split, the shuffles and the initial weights.")

    @model_validator(mode="after")
    def _label_is_not_a_feature(self) -> DataSpec:
        if self.label in self.features:
            raise ValueError(
                f"label {self.label!r} is also listed in features; fix: remove it from features"
            )
        return self


class ModelSpec(Section):
    """A built-in network, or a user ``torch.nn.Module`` by import path."""

    type: Literal["linear", "logistic", "mlp", "custom"] = Field(
        "mlp",
        description="linear (regression), logistic (classification), mlp (either), "
        "custom (class_path).",
    )
    hidden: list[PositiveInt] = Field(
        default_factory=lambda: [64], min_length=1, description="MLP hidden layer widths."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="MLP dropout after each hidden layer.")
    class_path: str | None = Field(
        None,
        description="custom: 'package.module:Class', called as "
        "Class(in_features=F, out_features=O, **kwargs).",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="custom: extra keyword arguments of the class."
    )
    num_classes: int | None = Field(
        None, ge=2, description="classification: number of classes; unset = max(label) + 1."
    )

    @model_validator(mode="after")
    def _class_path_for_custom(self) -> ModelSpec:
        if self.type == "custom":
            if self.class_path is None:
                raise ValueError(
                    "type custom needs class_path; fix: add class_path: package.module:Class"
                )
            if not _CLASS_PATH.match(self.class_path):
                raise ValueError(
                    f"class_path {self.class_path!r} is not 'package.module:Class'; "
                    "fix: write the module's import path, a colon and the class name"
                )
        elif self.class_path is not None or self.kwargs:
            raise ValueError(
                f"class_path and kwargs apply to type custom only (type is {self.type}); "
                "fix: set type: custom or remove them"
            )
        return self


class OptimizerSpec(Section):
    """The torch optimizer and its settings."""

    type: Literal["adam", "adamw", "sgd"] = Field("adam", description="Optimizer.")
    lr: PositiveFloat = Field(0.01, description="Learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="L2 penalty.")
    momentum: float = Field(0.0, ge=0, lt=1, description="sgd: momentum.")


class Distribution(Section):
    """One hyperparameter's search space: exactly one of the four keys."""

    choice: list[Any] | None = Field(None, min_length=1, description="Sample one of these.")
    grid: list[Any] | None = Field(None, min_length=1, description="Try each of these.")
    uniform: tuple[float, float] | None = Field(None, description="[low, high], uniform.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high], uniform in log space; low > 0."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("choice", "grid", "uniform", "loguniform") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of choice, grid, uniform, loguniform (got {given or 'none'})"
                "; fix: e.g. {loguniform: [0.0001, 0.1]}"
            )
        bounds = self.uniform or self.loguniform
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"bounds [{low}, {high}] need low < high; fix: swap or widen")
            if self.loguniform is not None and low <= 0:
                raise ValueError(f"loguniform needs low > 0 (got {low}); fix: e.g. 1e-5")
        return self

    @property
    def kind(self) -> Literal["choice", "grid", "uniform", "loguniform"]:
        if self.choice is not None:
            return "choice"
        if self.grid is not None:
            return "grid"
        return "uniform" if self.uniform is not None else "loguniform"

    def samples(self) -> list[Any]:
        """The values to check against the target field: every option, or both bounds."""
        return list(getattr(self, self.kind))


class SchedulerSpec(Section):
    """Which trials to stop early (ASHA), perturb (PBT) or just run (FIFO)."""

    type: Literal["fifo", "asha", "pbt"] = Field("fifo", description="Trial scheduler.")
    grace_period: PositiveInt = Field(1, description="asha: epochs before a trial may stop.")
    reduction_factor: float = Field(2.0, gt=1, description="asha: halving rate.")
    perturbation_interval: PositiveInt = Field(2, description="pbt: epochs between perturbs.")


class TuneSpec(Section):
    """The hyperparameter search."""

    search_space: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Spec path -> distribution, e.g. optimizer.lr: {loguniform: [1e-4, 1e-1]}.",
    )
    scheduler: SchedulerSpec = Field(default_factory=SchedulerSpec)
    num_samples: PositiveInt = Field(1, description="Trials sampled (times each grid point).")
    max_concurrent_trials: PositiveInt | None = Field(
        None, description="Trials at once; unset = as many as the cluster fits."
    )


class ScalingSpec(Section):
    """Workers per trial."""

    num_workers: PositiveInt = Field(1, description="Ray Train workers per trial.")
    use_gpu: bool | Literal["auto"] = Field(
        "auto", description="auto: use a GPU per worker when the cluster has one."
    )
    cpus_per_worker: PositiveFloat = Field(1.0, description="CPUs reserved per worker.")


class ObjectiveSpec(Section):
    """The metric trials are compared on."""

    metric: str = Field("val_loss", description="One of the run's metrics, or val_loss.")
    mode: Literal["min", "max"] | None = Field(None, description="Unset = the metric's own.")


class StopSpec(Section):
    """When trials stop before their last epoch."""

    metric_threshold: float | None = Field(
        None, description="Stop a trial once the objective reaches this value."
    )
    time_budget_s: PositiveFloat | None = Field(None, description="Stop the whole search.")


class CheckpointSpec(Section):
    """How often trials save model and optimizer state (the last epoch always saves)."""

    every_epochs: PositiveInt = Field(1, description="Save every N epochs.")
    num_to_keep: PositiveInt = Field(2, description="Checkpoints kept per trial.")


class FailureSpec(Section):
    """Retries: workers from the last checkpoint inside a trial, then whole trials."""

    max_failures: NonNegativeInt = Field(2, description="Worker-group restarts per trial.")
    trial_retries: NonNegativeInt = Field(0, description="Tune restarts of a failed trial.")


class RegisterSpec(Section):
    """Where the best model goes in the registry."""

    enabled: bool = Field(True, description="Register the best trial's model.")
    model_name: str | None = Field(
        None, min_length=1, max_length=100, description="Registry name; unset = the spec's."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags of the version.")
