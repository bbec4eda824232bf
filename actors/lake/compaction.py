"""Compaction of small data files for pyiceberg tables (pyiceberg 0.12 has none).

**Compaction** rewrites, per partition, small data files (under the target size) into
about target-sized files and commits the swap as ONE overwrite snapshot that deletes
exactly the input files and adds the outputs. It uses pyiceberg's ``_OverwriteFiles``
producer (explicit ``delete_data_file`` + ``append_data_file``), not
``Transaction.overwrite(df, filter)``: a filter overwrite deletes whatever matches the
filter *at commit time*, so rows appended concurrently into the same partition would be
dropped. With explicit files, pyiceberg's commit retry rebuilds the snapshot on the new
head and keeps every file it did not name. Its default (serializable) validation would
also refuse any concurrent append, so compaction would never finish on a busy table; the
``_RewriteFiles`` subclass validates what Iceberg's Java ``RewriteFiles`` does instead:
every input file still exists and has no new delete files. A lost race therefore ends
in a retry on the new head or, when an input was deleted or rewritten meanwhile, in a
fresh plan; never in lost or resurrected rows. Files whose rows are masked by delete
files are left alone (rewriting them would need the deletes resolved and re-homed).

It leans on pyiceberg internals (``_OverwriteFiles``, ``_dataframe_to_data_files``,
the validation helpers), which is why pyproject pins pyiceberg below 0.13 and the race
tests in ``tests/unit/test_lake_maintenance.py`` pin the behaviour down.
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import TableProperties
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.table.update.validate import (
    _validate_data_files_exist,
    _validate_no_new_deletes_for_data_files,
)

from actors.lake.sql_errors import CompactionConflictError
from cluster.errors import DatapunkError, InvalidInputError

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile
    from pyiceberg.table import FileScanTask, Table
    from pyiceberg.table.metadata import TableMetadata

logger = logging.getLogger(__name__)

_UNBOUNDED_FILE_BYTES = str(1 << 62)  # one output file per planned bin; the bin sets the size


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What a compaction did; ``snapshot_id`` is None when there was nothing to do."""

    files_before: int
    files_after: int
    rows: int
    snapshot_id: int | None
    rewritten_files: int = 0
    written_files: int = 0


def plan_bins(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Group file indexes into bins of at most ``capacity`` bytes (first fit, largest first).

    Only bins of two or more files are returned: rewriting one file alone gains nothing.
    """
    bins: list[list[int]] = []
    used: list[int] = []
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for slot, total in enumerate(used):
            if total + sizes[index] <= capacity:
                bins[slot].append(index)
                used[slot] += sizes[index]
                break
        else:
            bins.append([index])
            used.append(sizes[index])
    return [sorted(b) for b in bins if len(b) >= 2]


def compact(
    table: Table,
    *,
    target_file_size_bytes: int,
    min_input_files: int = 2,
    now: datetime,
    max_attempts: int = 3,
    before_commit: Callable[[], None] | None = None,
) -> CompactionResult:
    """Rewrite small files of each partition into about target-sized ones, in one commit.

    A partition is compacted when it has at least ``min_input_files`` files smaller than
    ``target_file_size_bytes``. ``now`` is recorded in the snapshot summary.
    ``before_commit`` runs between reading the inputs and committing (a test seam for
    races). Raises ``CompactionConflictError`` after ``max_attempts`` lost races.
    """
    _check_compact_args(target_file_size_bytes, min_input_files, max_attempts)
    require_aware("now", now)
    reason = ""
    for attempt in range(1, max_attempts + 1):
        table.refresh()
        plan = _plan(table, target_file_size_bytes, min_input_files)
        if not plan.bins:
            return CompactionResult(plan.live_files, plan.live_files, 0, None)
        try:
            return _rewrite(table, plan, now, before_commit)
        except (CommitFailedException, ValidationException) as exc:
            reason = _first_line(exc)
            logger.warning(
                "compaction attempt %d of %s lost a race: %s", attempt, table.name(), reason
            )
    raise CompactionConflictError(table=_table_name(table), attempts=max_attempts, reason=reason)


def _check_compact_args(target: int, min_input_files: int, max_attempts: int) -> None:
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise InvalidInputError(field="target_file_size_bytes", value=target, allowed="an int >= 1")
    if isinstance(min_input_files, bool) or not isinstance(min_input_files, int):
        raise InvalidInputError(field="min_input_files", value=min_input_files, allowed="int >= 2")
    if min_input_files < 2:
        raise InvalidInputError(field="min_input_files", value=min_input_files, allowed="int >= 2")
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise InvalidInputError(field="max_attempts", value=max_attempts, allowed="an int >= 1")


@dataclass(frozen=True, slots=True)
class _Plan:
    live_files: int
    bins: list[list[FileScanTask]]


def _plan(table: Table, target: int, min_input_files: int) -> _Plan:
    snapshot = table.current_snapshot()
    if snapshot is None:
        return _Plan(0, [])
    tasks = list(table.scan(snapshot_id=snapshot.snapshot_id).plan_files())
    spec_id = table.spec().spec_id
    groups: dict[Any, list[FileScanTask]] = defaultdict(list)
    for task in tasks:
        data_file = task.file
        small = data_file.file_size_in_bytes < target
        if small and not task.delete_files and data_file.spec_id == spec_id:
            groups[(data_file.spec_id, data_file.partition)].append(task)
    bins: list[list[FileScanTask]] = []
    for group in groups.values():
        if len(group) >= min_input_files:
            sizes = [t.file.file_size_in_bytes for t in group]
            bins.extend([group[i] for i in b] for b in plan_bins(sizes, target))
    return _Plan(len(tasks), bins)


class _RewriteFiles(_OverwriteFiles):
    """An overwrite that swaps named files; like Java's RewriteFiles, appends never conflict."""

    def _validate_concurrency(self) -> None:
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        if not self._deleted_data_files:
            return
        table = self._transaction._table
        files = set(self._deleted_data_files)
        _validate_data_files_exist(table, window.head, files, window.base)
        _validate_no_new_deletes_for_data_files(table, window.head, None, files, window.base)


def _rewrite(
    table: Table, plan: _Plan, now: datetime, before_commit: Callable[[], None] | None
) -> CompactionResult:
    txn = table.transaction()
    summary = {"datapunk.maintenance": "compaction", "datapunk.compacted-at": now.isoformat()}
    producer = _RewriteFiles(
        operation=Operation.OVERWRITE, transaction=txn, io=table.io, snapshot_properties=summary
    )
    written: list[DataFile] = []
    try:
        rows = _write_bins(table, plan.bins, producer, written)
        if before_commit is not None:
            before_commit()
    except BaseException:
        _delete_quietly(table, written)  # nothing was committed yet
        raise
    try:
        producer.commit()
        txn.commit_transaction()
    except (CommitFailedException, ValidationException):
        _delete_quietly(table, written)  # the commit surely did not land: these are ours
        raise
    rewritten = sum(len(b) for b in plan.bins)
    return CompactionResult(
        files_before=plan.live_files,
        files_after=plan.live_files - rewritten + len(written),
        rows=rows,
        snapshot_id=producer.snapshot_id,
        rewritten_files=rewritten,
        written_files=len(written),
    )


def _write_bins(
    table: Table,
    bins: list[list[FileScanTask]],
    producer: _RewriteFiles,
    written: list[DataFile],
) -> int:
    """Read each bin, write it back as one file per partition; return the rows moved."""
    metadata = table.metadata
    write_metadata = _with_property(metadata, TableProperties.WRITE_TARGET_FILE_SIZE_BYTES)
    scan = ArrowScan(metadata, table.io, metadata.schema(), AlwaysTrue())
    counter = itertools.count(0)  # one counter: file names stay unique across bins
    rows = 0
    for tasks in bins:
        data = scan.to_table(tasks)
        expected = sum(t.file.record_count for t in tasks)
        if data.num_rows != expected:
            raise DatapunkError(
                f"compaction read {data.num_rows} rows from files that hold {expected}; "
                "refusing to commit; check the table's delete files and retry"
            )
        new_files = list(
            _dataframe_to_data_files(
                table_metadata=write_metadata,
                df=data,
                io=table.io,
                write_uuid=producer.commit_uuid,
                counter=counter,
            )
        )
        written.extend(new_files)
        for data_file in new_files:
            producer.append_data_file(data_file)
        for task in tasks:
            producer.delete_data_file(task.file)
        rows += data.num_rows
    return rows


def _with_property(metadata: TableMetadata, name: str) -> TableMetadata:
    properties = {**metadata.properties, name: _UNBOUNDED_FILE_BYTES}
    return metadata.model_copy(update={"properties": properties})


def _delete_quietly(table: Table, files: Iterable[DataFile]) -> None:
    for data_file in files:
        try:
            table.io.delete(data_file.file_path)
        except OSError:  # left for orphan removal
            logger.warning("could not delete uncommitted file %s", data_file.file_path)


def require_aware(field: str, value: datetime) -> None:
    """Refuse a naive datetime: maintenance cut-offs compare with UTC file and snapshot times."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidInputError(
            field=field, value=value, allowed="a timezone-aware datetime, e.g. datetime.now(UTC)"
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _table_name(table: Table) -> str:
    return ".".join(table.name())
