"""Typed errors of ingest sources; each names the input that was wrong and the fix.

A malformed file is ``actors.lake.sql_errors.MalformedFileError`` (raised by the shared
file readers); these cover what only ingest meets: inputs that change under a run,
undecodable queue messages, SQL sources, Lake positions and acknowledgements.
"""

from __future__ import annotations

from typing import ClassVar

from cluster.errors import DatapunkError


class InputChangedError(DatapunkError):
    """A file changed between planning and reading: what was read is not what was planned."""

    code: ClassVar[str] = "input_changed"
    http_status: ClassVar[int] = 409

    def __init__(self, *, path: str, planned: str, found: str) -> None:
        super().__init__(
            f"file {path!r} changed while the run read it (planned {planned}, found {found}); "
            "nothing of this run was committed. Fix: write files elsewhere and move them into "
            "place when complete, or set min_age_s so files still being written wait for a "
            "later run; then run the pipeline again",
            path=path,
            planned=planned,
            found=found,
        )


class UndecodableMessageError(DatapunkError):
    """A queue message whose body is not a JSON object, JSON array of objects or Arrow IPC.

    ``body`` and ``message_id`` travel with the error so the runner can quarantine it.
    """

    code: ClassVar[str] = "undecodable_message"
    http_status: ClassVar[int] = 422

    def __init__(self, *, queue: str, message_id: str, problem: str, body: bytes) -> None:
        super().__init__(
            f"message {message_id!r} on queue {queue!r} cannot be decoded: {problem}; fix: "
            "publish a JSON object, a JSON array of objects or an Arrow IPC stream "
            "(content type application/vnd.apache.arrow.stream)",
            queue=queue,
            message_id=message_id,
            problem=problem,
        )
        self.body = body
        self.message_id = message_id


class SqlSourceError(DatapunkError):
    """A SQL source's table or query fails on its database (a typo, a missing column)."""

    code: ClassVar[str] = "sql_source_invalid"
    http_status: ClassVar[int] = 422

    def __init__(self, *, target: str, what: str, reason: str, fix: str) -> None:
        super().__init__(
            f"SQL source {what} at {target} failed: {reason}; fix: {fix}",
            target=target,
            what=what,
            reason=reason,
        )


class LakePositionError(DatapunkError):
    """The snapshot a Lake source consumed last is no longer an ancestor of the current one."""

    code: ClassVar[str] = "lake_position_lost"
    http_status: ClassVar[int] = 409

    def __init__(self, *, table: str, consumed: int, current: int, reason: str) -> None:
        super().__init__(
            f"table {table!r} moved away from snapshot {consumed}, which this pipeline read "
            f"last (current snapshot {current}: {reason}); appended rows can no longer be "
            "told apart. Fix: pin the source to a snapshot_id, or reset the pipeline's "
            "position to read the whole table again",
            table=table,
            consumed=consumed,
            current=current,
        )


class AckError(DatapunkError):
    """Deliveries could not be settled; the data is committed and recorded consumed."""

    code: ClassVar[str] = "ack_failed"
    http_status: ClassVar[int] = 503

    def __init__(self, *, queue: str, count: int, reason: str) -> None:
        super().__init__(
            f"could not settle {count} message(s) on queue {queue!r}: {reason}; the broker "
            "redelivers them, and a run that marked them consumed skips them as duplicates "
            "(within the message-id retention). Fix: ack with the same source object that "
            "planned the run, before closing it",
            queue=queue,
            count=count,
            reason=reason,
        )
