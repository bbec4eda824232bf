"""A training spec: a pinned Lake snapshot -> a model -> a Tune search -> the registry.

``load_train_spec`` reads YAML (or takes a mapping from the REST API) and validates it
into ``TrainSpec``; every problem found is listed in one ``InvalidTrainSpecError``,
each with its key path and, for files, its line::

    training spec diabetes.yaml is invalid: (1) line 7, data.validation_fraction: ...;
    (2) line 19, tune.search_space.optimizer.lr.loguniform: loguniform needs low > 0 ...

``config_hash`` fingerprints the normalised spec (defaults filled, keys sorted); the
run id is the spec's name plus that hash, so resubmitting the same spec resumes the
same run. ``apply_params`` turns one trial's sampled hyperparameters into the spec that
trial trains. ``configs/training/diabetes.yaml`` is a complete example.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, PositiveInt, TypeAdapter, ValidationError, model_validator

from actors.forge.errors import InvalidTrainSpecError
from actors.forge.spec_models import (
    CheckpointSpec,
    DataSpec,
    Distribution,
    FailureSpec,
    ModelSpec,
    ObjectiveSpec,
    OptimizerSpec,
    RegisterSpec,
    ScalingSpec,
    SchedulerSpec,
    Section,
    StopSpec,
    Task,
    TuneSpec,
)
from actors.ingest.pipeline_errors import PipelineConfigError
from actors.ingest.yaml_lines import Document, dotted, parse_yaml

__all__ = [
    "METRIC_MODES",
    "CheckpointSpec",
    "DataSpec",
    "Distribution",
    "FailureSpec",
    "InvalidTrainSpecError",
    "ModelSpec",
    "ObjectiveSpec",
    "OptimizerSpec",
    "RegisterSpec",
    "ScalingSpec",
    "SchedulerSpec",
    "StopSpec",
    "TrainSpec",
    "TuneSpec",
    "apply_params",
    "canonical_json",
    "config_hash",
    "load_train_spec",
    "parse_train_spec",
    "run_id_for",
]

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "regression": ("val_loss", "rmse", "mae", "r2"),
    "classification": ("val_loss", "accuracy", "log_loss"),
}
TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "regression": ("mse", "mae", "huber"),
    "classification": ("cross_entropy",),
}
METRIC_MODES = {
    "val_loss": "min",
    "rmse": "min",
    "mae": "min",
    "r2": "max",
    "accuracy": "max",
    "log_loss": "min",
}
# Hyperparameters a search may set: continuous ones take any distribution, the rest
# only choice or grid. PBT may mutate only what leaves the network's shape alone.
CONTINUOUS = frozenset({"optimizer.lr", "optimizer.weight_decay", "optimizer.momentum"})
DISCRETE = frozenset({"batch_size", "model.hidden", "model.dropout"})
_KWARGS = "model.kwargs."
_SHAPE = ("model.hidden", _KWARGS)


class SpecProblems(ValueError):
    """Cross-section problems, each with its key path; pydantic keeps this as ctx."""

    def __init__(self, items: list[tuple[tuple[str | int, ...], str]]) -> None:
        super().__init__("; ".join(f"{dotted(path)}: {message}" for path, message in items))
        self.items = items


class TrainSpec(Section):
    """One training run: data, model, loss and metrics, scaling, search, stop, checkpoints."""

    name: str = Field(
        min_length=1,
        max_length=80,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        description="Run name: letters, digits, _ . - (the run id starts with it).",
    )
    description: str = Field("", description="What the model is for.")
    task: Task = Field(description="regression or classification.")
    data: DataSpec
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: str = Field("", description="regression: mse|mae|huber; classification: cross_entropy.")
    metrics: list[str] = Field(
        default_factory=list, description="Reported each epoch; unset = all of the task's."
    )
    objective: ObjectiveSpec = Field(default_factory=ObjectiveSpec)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: PositiveInt = Field(32, description="Rows per batch per worker.")
    epochs: PositiveInt = Field(10, description="Epochs per trial (the most any trial runs).")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    tune: TuneSpec = Field(default_factory=TuneSpec)
    stop: StopSpec = Field(default_factory=StopSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    failure: FailureSpec = Field(default_factory=FailureSpec)
    registry: RegisterSpec = Field(default_factory=RegisterSpec)

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Fill the task's loss, metrics and the objective's mode (normalised for the hash)."""
        if not isinstance(data, dict) or data.get("task") not in TASK_METRICS:
            return data
        task = data["task"]
        data = dict(data)
        data["loss"] = data.get("loss") or TASK_LOSSES[task][0]
        data["metrics"] = data.get("metrics") or list(TASK_METRICS[task])
        objective = data.get("objective") or {}
        if isinstance(objective, dict) and not objective.get("mode"):
            metric = objective.get("metric", "val_loss")
            if metric in METRIC_MODES:
                data["objective"] = {**objective, "mode": METRIC_MODES[metric]}
        return data

    @model_validator(mode="after")
    def _cross_check(self) -> TrainSpec:
        problems = _task_problems(self) + _search_problems(self) + _schedule_problems(self)
        if problems:
            raise SpecProblems(problems)
        return self

    @property
    def mode(self) -> str:
        """min or max: how the objective metric improves."""
        return self.objective.mode or METRIC_MODES.get(self.objective.metric, "min")

    @property
    def model_name(self) -> str:
        """The registry name the best model is registered under."""
        return self.registry.model_name or self.name


# ---------------------------------------------------------------- cross-section rules

Problems = list[tuple[tuple[str | int, ...], str]]


def _task_problems(spec: TrainSpec) -> Problems:
    task = spec.task
    out: Problems = []
    if spec.model.type == "linear" and task != "regression":
        out.append((("model", "type"), "linear is for regression; fix: use logistic or mlp"))
    if spec.model.type == "logistic" and task != "classification":
        out.append((("model", "type"), "logistic is for classification; fix: use linear or mlp"))
    if spec.model.num_classes is not None and task != "classification":
        out.append((("model", "num_classes"), "applies to classification only; fix: remove it"))
    if spec.loss not in TASK_LOSSES[task]:
        allowed = ", ".join(TASK_LOSSES[task])
        out.append((("loss",), f"{spec.loss!r} is not a {task} loss; fix: use one of {allowed}"))
    allowed_metrics = TASK_METRICS[task]
    for i, metric in enumerate(spec.metrics):
        if metric not in allowed_metrics:
            out.append(
                (
                    ("metrics", i),
                    f"{metric!r} is not a {task} metric{_close(metric, allowed_metrics)}; "
                    f"fix: use {', '.join(allowed_metrics)}",
                )
            )
    if spec.objective.metric not in {*spec.metrics, "val_loss"}:
        out.append(
            (
                ("objective", "metric"),
                f"{spec.objective.metric!r} is not among the run's metrics "
                f"({', '.join(spec.metrics)}); fix: pick one of them",
            )
        )
    return out


def _search_problems(spec: TrainSpec) -> Problems:
    out: Problems = []
    for key, dist in spec.tune.search_space.items():
        path: tuple[str | int, ...] = ("tune", "search_space", key)
        custom_kwarg = key.startswith(_KWARGS) and len(key) > len(_KWARGS)
        if key not in CONTINUOUS | DISCRETE and not custom_kwarg:
            known = [*sorted(CONTINUOUS | DISCRETE), "model.kwargs.<name>"]
            why = f"{key!r} cannot be tuned{_close(key, known)}; fix: tune one of "
            out.append((path, why + ", ".join(known)))
            continue
        if custom_kwarg and spec.model.type != "custom":
            out.append((path, "model.kwargs.* applies to model type custom only"))
            continue
        if key == "model.hidden" and spec.model.type != "mlp":
            out.append((path, f"model {spec.model.type} has no hidden layers; fix: use type mlp"))
            continue
        if dist.kind in ("uniform", "loguniform") and key in DISCRETE:
            out.append((path, f"{key} takes choice or grid, not {dist.kind}"))
            continue
        for value in dist.samples():
            problem = _param_problem(spec, key, value)
            if problem:
                out.append(((*path, dist.kind), f"value {value!r}: {problem}"))
                break
    return out


def _schedule_problems(spec: TrainSpec) -> Problems:
    scheduler = spec.tune.scheduler
    out: Problems = []
    where: tuple[str | int, ...] = ("tune", "scheduler")
    if scheduler.type == "asha" and scheduler.grace_period > spec.epochs:
        out.append(((*where, "grace_period"), f"{scheduler.grace_period} > epochs {spec.epochs}"))
    if scheduler.type != "pbt":
        return out
    space = spec.tune.search_space
    if not space:
        out.append(((*where, "type"), "pbt needs a search_space to mutate; fix: add one"))
    for key, dist in space.items():
        if dist.kind == "grid":
            out.append((("tune", "search_space", key), "pbt cannot mutate a grid; use choice"))
        if key.startswith(_SHAPE):
            out.append((("tune", "search_space", key), "pbt cannot change the network's shape"))
    interval, every = scheduler.perturbation_interval, spec.checkpoint.every_epochs
    if interval % every:
        out.append(
            (
                (*where, "perturbation_interval"),
                f"{interval} is not a multiple of checkpoint.every_epochs {every}; fix: "
                "perturb on epochs that save a checkpoint",
            )
        )
    return out


def _param_problem(spec: TrainSpec, key: str, value: Any) -> str | None:
    try:
        apply_params(spec, {key: value})
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        return str(first["msg"]).removeprefix("Value error, ")
    return None


def _close(value: str, options: Any) -> str:
    match = difflib.get_close_matches(value, list(options), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


# ---------------------------------------------------------------- trial parameters


def apply_params(spec: TrainSpec, params: Mapping[str, Any]) -> TrainSpec:
    """``spec`` with one trial's hyperparameters (search-space paths) set and validated."""
    model, optimizer = spec.model.model_dump(), spec.optimizer.model_dump()
    batch_size = spec.batch_size
    for key, value in params.items():
        if key == "batch_size":
            batch_size = TypeAdapter(PositiveInt).validate_python(value)
        elif key.startswith(_KWARGS):
            model["kwargs"] = {**model["kwargs"], key[len(_KWARGS) :]: value}
        elif key.startswith("model."):
            model[key.removeprefix("model.")] = value
        elif key.startswith("optimizer."):
            optimizer[key.removeprefix("optimizer.")] = value
        else:
            raise KeyError(key)
    return spec.model_copy(
        update={
            "model": ModelSpec.model_validate(model),
            "optimizer": OptimizerSpec.model_validate(optimizer),
            "batch_size": batch_size,
        }
    )


# ---------------------------------------------------------------- loading


def parse_train_spec(text: str, *, source: str = "<text>") -> TrainSpec:
    """Validate training-spec YAML ``text``; problems name ``source``, line and key."""
    try:
        doc = parse_yaml(text, source=source)
    except PipelineConfigError as exc:
        where = f"line {exc.fields['line']}, " if exc.fields.get("line") else ""
        raise InvalidTrainSpecError(
            source=source, problems=[f"{where}{exc.fields['key']}: {exc.fields['problem']}"]
        ) from None
    return _validate(doc.data, doc, source)


def load_train_spec(spec: str | Path | Mapping[str, Any]) -> TrainSpec:
    """A ``TrainSpec`` from a YAML file path or from a mapping (the REST body)."""
    if isinstance(spec, Mapping):
        return _validate(dict(spec), None, "<request>")
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidTrainSpecError(
            source=str(path), problems=[f"cannot read the file ({type(exc).__name__})"]
        ) from None
    return parse_train_spec(text, source=str(path))


def _validate(data: Any, doc: Document | None, source: str) -> TrainSpec:
    if not isinstance(data, dict):
        raise InvalidTrainSpecError(
            source=source,
            problems=[f"holds a {type(data).__name__}, not a mapping; start with name:, task:"],
        )
    try:
        return TrainSpec.model_validate(data)
    except ValidationError as exc:
        raise InvalidTrainSpecError(source=source, problems=_problems(exc, doc)) from None


def _problems(exc: ValidationError, doc: Document | None) -> list[str]:
    out: list[str] = []
    errors = sorted(exc.errors(include_url=False), key=lambda e: e["type"] != "extra_forbidden")
    for error in errors:
        cause = (error.get("ctx") or {}).get("error")
        base = tuple(error["loc"])
        if isinstance(cause, SpecProblems):
            out.extend(_where((*base, *path), message, doc) for path, message in cause.items)
        else:
            out.append(_where(base, _wording(error), doc))
    return out


def _wording(error: Any) -> str:
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return "is required but missing"
    if kind == "extra_forbidden":
        key = str(error["loc"][-1])
        return f"is not a key here{_close(key, _ALL_KEYS)}; fix: remove or correct it"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "; fix: " in message or kind == "value_error":
        return message
    shown = repr(value)
    return f"{shown if len(shown) <= 60 else shown[:59] + '…'}: {message}"


def _where(path: tuple[str | int, ...], message: str, doc: Document | None) -> str:
    line = doc.line_of(path) if doc is not None else None
    return (f"line {line}, " if line else "") + f"{dotted(path)}: {message}"


_SECTIONS: tuple[type[Section], ...] = (
    TrainSpec,
    DataSpec,
    ModelSpec,
    OptimizerSpec,
    Distribution,
    SchedulerSpec,
    TuneSpec,
    ScalingSpec,
    ObjectiveSpec,
    StopSpec,
    CheckpointSpec,
    FailureSpec,
    RegisterSpec,
)
_ALL_KEYS = sorted({name for section in _SECTIONS for name in section.model_fields})


# ---------------------------------------------------------------- identity


def canonical_json(spec: TrainSpec) -> str:
    """The normalised spec as canonical JSON: defaults filled, keys sorted."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def config_hash(spec: TrainSpec) -> str:
    """Hex SHA-256 of ``canonical_json(spec)``: same meaning, same hash."""
    return hashlib.sha256(canonical_json(spec).encode("utf-8")).hexdigest()


def run_id_for(spec: TrainSpec) -> str:
    """``<name>-<first 12 hex of the config hash>``: resubmitting the same spec resumes."""
    return f"{spec.name}-{config_hash(spec)[:12]}"
