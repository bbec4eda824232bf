"""Typed Forge errors: each names the spec key, table, snapshot or column and the fix.

They subclass the cluster errors, so the gateway maps them to HTTP statuses through
``http_status`` and the CLI prints ``message`` on one line. Every data error is raised
in the driver, before any training worker starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from cluster.errors import DatapunkError, InvalidInputError

_MAX_LISTED = 8


class InvalidTrainSpecError(DatapunkError):
    """A training spec that does not parse or validate; lists every problem found."""

    code: ClassVar[str] = "invalid_train_spec"
    http_status: ClassVar[int] = 422

    def __init__(self, *, source: str, problems: Sequence[str]) -> None:
        shown = list(problems[:_MAX_LISTED])
        more = len(problems) - len(shown)
        listed = "; ".join(f"({i}) {p}" for i, p in enumerate(shown, 1))
        tail = f"; (and {more} more)" if more else ""
        super().__init__(
            f"training spec {source} is invalid: {listed}{tail}; "
            "see configs/training/diabetes.yaml for a complete example",
            source=source,
            problems=list(problems),
        )


class ColumnTypeError(InvalidInputError):
    """A feature or label column whose type the task cannot use."""

    code: ClassVar[str] = "wrong_column_type"

    def __init__(
        self, *, table: str, snapshot_id: int, column: str, role: str, found: str, fix: str
    ) -> None:
        DatapunkError.__init__(
            self,
            f"{role} column {column!r} of table {table!r} (snapshot {snapshot_id}) is "
            f"{found}; fix: {fix}",
            table=table,
            snapshot_id=snapshot_id,
            column=column,
            found=found,
        )


class EmptyTrainingDataError(InvalidInputError):
    """No rows to train on: no snapshot, an empty snapshot, or an empty split."""

    code: ClassVar[str] = "empty_training_data"

    def __init__(self, *, table: str, snapshot_id: int | None, reason: str, fix: str) -> None:
        where = "no snapshot" if snapshot_id is None else f"snapshot {snapshot_id}"
        DatapunkError.__init__(
            self,
            f"table {table!r} ({where}) {reason}; fix: {fix}",
            table=table,
            snapshot_id=snapshot_id,
        )


class TrainingDataValueError(InvalidInputError):
    """Values the model cannot take: nulls, or class labels outside 0..C-1."""

    code: ClassVar[str] = "invalid_training_data"

    def __init__(
        self, *, table: str, snapshot_id: int | None, column: str, problem: str, fix: str
    ) -> None:
        where = "latest snapshot" if snapshot_id is None else f"snapshot {snapshot_id}"
        DatapunkError.__init__(
            self,
            f"column {column!r} of table {table!r} ({where}) {problem}; fix: {fix}",
            table=table,
            snapshot_id=snapshot_id,
            column=column,
        )


class ModelBuildError(InvalidInputError):
    """A model that cannot be built: an import path that does not resolve, bad kwargs."""

    code: ClassVar[str] = "invalid_model"

    def __init__(self, *, model: str, reason: str, fix: str) -> None:
        DatapunkError.__init__(
            self, f"model {model!r} cannot be built: {reason}; fix: {fix}", model=model
        )


class TrainingFailedError(DatapunkError):
    """Trials failed after their retries; the run can be resumed by resubmitting it."""

    code: ClassVar[str] = "training_failed"
    http_status: ClassVar[int] = 500

    def __init__(self, *, run_id: str, reason: str) -> None:
        super().__init__(
            f"training run {run_id!r} failed: {reason}; fix: correct the cause, then "
            "resubmit the same spec: the run resumes from its last checkpoints",
            run_id=run_id,
            reason=reason,
        )


class RunInterruptedError(DatapunkError):
    """The run was stopped (Ctrl+C, SIGUSR1, a lost driver) with trials unfinished."""

    code: ClassVar[str] = "run_interrupted"
    http_status: ClassVar[int] = 409

    def __init__(self, *, run_id: str, unfinished: int) -> None:
        super().__init__(
            f"training run {run_id!r} was stopped with {unfinished} trial(s) unfinished; "
            "its state is saved: resubmit the same spec to resume it",
            run_id=run_id,
            unfinished=unfinished,
        )
