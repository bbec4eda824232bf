"""Files and globs: CSV, JSON Lines, Parquet and Arrow IPC, gzip by a ``.gz`` suffix.

Formats come from the file name (``actors.lake.formats.format_from_path``) and rows from
``iter_batches_from_file``, so malformed input is the shared ``MalformedFileError``
naming the file; the runner decides to quarantine the file or fail. A file is one input,
identified by its absolute path and versioned by ``size:mtime_ns`` (or its SHA-256):
a file seen before is skipped, a changed one is read again. Row refs are
``<path>:<row>``, rows numbered from 1 after any header.
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from actors.ingest.sources.base import (
    InputRef,
    NoDeliveries,
    SourceBatch,
    SourceKind,
    SourcePlan,
    StateView,
    row_refs,
    split_refs,
)
from actors.ingest.sources.errors import InputChangedError
from actors.lake.formats import FileFormat, format_from_path, iter_batches_from_file
from actors.lake.sql_errors import MalformedFileError
from cluster.errors import InvalidInputError, NotFoundError

Fingerprint = Literal["stat", "sha256"]
_HASH_CHUNK = 1 << 20
_GLOB_CHARS = frozenset("*?[")


class FileSource(NoDeliveries):
    """The files matching one or more glob patterns (``**`` recurses).

    ``format`` overrides what the extension says; ``schema`` fixes CSV/JSON Lines
    types instead of inferring them. ``min_age_s`` leaves files modified less than that
    long ago (by the injected ``now``) for a later run: they may still be written.
    """

    kind: SourceKind = "files"

    def __init__(
        self,
        paths: str | Sequence[str],
        *,
        name: str = "files",
        format: FileFormat | None = None,
        schema: pa.Schema | None = None,
        encoding: str = "utf8",
        delimiter: str | None = None,
        header: bool = True,
        batch_rows: int = 65_536,
        fingerprint: Fingerprint = "stat",
        min_age_s: float = 0.0,
        root: Path | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        patterns = [paths] if isinstance(paths, str) else list(paths)
        if not patterns or not all(isinstance(p, str) and p.strip() for p in patterns):
            raise InvalidInputError(
                field="paths", value=paths, allowed="one or more file paths or glob patterns"
            )
        if fingerprint not in ("stat", "sha256"):
            raise InvalidInputError(field="fingerprint", value=fingerprint, allowed="stat, sha256")
        if min_age_s < 0:
            raise InvalidInputError(field="min_age_s", value=min_age_s, allowed="0 or more")
        self.name = name
        self.patterns = patterns
        self.format = format
        self.schema = schema
        self.encoding = encoding
        self.delimiter = delimiter
        self.header = header
        self.batch_rows = batch_rows
        self.fingerprint = fingerprint
        self.min_age_s = min_age_s
        self.root = root
        self._now = now

    # --- plan ----------------------------------------------------------------------

    def plan(self, state: StateView) -> SourcePlan:
        """Every matching file not consumed in this version, oldest path order."""
        refs: list[InputRef] = []
        skipped = 0
        newest_ns = int((self._now() - self.min_age_s) * 1e9)
        for path in self.matches():
            ref = self._ref(path)
            if self.min_age_s and (ref.mtime_ns or 0) > newest_ns:
                continue  # still settling; a later run takes it
            if state.has(self.name, "file", ref.id, ref.fingerprint):
                skipped += 1
            else:
                refs.append(ref)
        return SourcePlan(source=self.name, kind=self.kind, refs=tuple(refs), skipped=skipped)

    def matches(self) -> list[str]:
        """Absolute paths of the files the patterns match, sorted, each once."""
        found: set[str] = set()
        for pattern in self.patterns:
            full = self._absolute(pattern)
            hits = glob.glob(full, recursive=True)
            if not hits and not _GLOB_CHARS.intersection(pattern):
                raise NotFoundError(
                    kind="file", name=full, fix="check the path, or use a glob pattern (*.csv)"
                )
            found.update(os.path.abspath(hit) for hit in hits if os.path.isfile(hit))
        return sorted(found)

    def _absolute(self, pattern: str) -> str:
        path = Path(pattern).expanduser()
        if not path.is_absolute():
            path = (self.root or Path.cwd()) / path
        return str(path)

    def _ref(self, path: str) -> InputRef:
        if self.format is None:
            format_from_path(path)  # an unknown extension fails the plan, naming the file
        stat = os.stat(path)
        return InputRef(
            kind="file",
            id=path,
            fingerprint=self._fingerprint(path, stat.st_size, stat.st_mtime_ns),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
        )

    def _fingerprint(self, path: str, size: int, mtime_ns: int) -> str:
        if self.fingerprint == "stat":
            return f"{size}:{mtime_ns}"
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        return "sha256:" + digest.hexdigest()

    # --- read ----------------------------------------------------------------------

    def read(self, plan: SourcePlan) -> Iterator[SourceBatch]:
        """Rows of each planned file in turn; ``MalformedFileError`` names a bad file."""
        for ref in plan.refs:
            yield from self._read_file(ref)

    def _read_file(self, ref: InputRef) -> Iterator[SourceBatch]:
        self._check_unchanged(ref)
        if ref.size == 0:
            return  # an empty file has no rows (pyarrow would call it malformed)
        row = 1
        fmt = self.format or format_from_path(ref.id)[0]
        batches = iter_batches_from_file(
            ref.id,
            self.format,
            schema=self.schema,
            batch_rows=self.batch_rows,
            encoding=self.encoding,
            delimiter=self.delimiter,
            header=self.header,
        )
        for table in _grouped(batches, self.batch_rows):
            if fmt == "csv":
                _refuse_runaway_quotes(table, ref.id, row)
            yield SourceBatch(table, row_refs(f"{ref.id}:", row, table.num_rows))
            row += table.num_rows
        self._check_unchanged(ref)  # what was read is what was planned

    def _check_unchanged(self, ref: InputRef) -> None:
        try:
            stat = os.stat(ref.id)
        except FileNotFoundError:
            raise InputChangedError(path=ref.id, planned=ref.fingerprint, found="no file") from None
        if (stat.st_size, stat.st_mtime_ns) == (ref.size, ref.mtime_ns):
            return
        found = self._fingerprint(ref.id, stat.st_size, stat.st_mtime_ns)
        if found != ref.fingerprint:  # a sha256 fingerprint survives a mere touch
            raise InputChangedError(path=ref.id, planned=ref.fingerprint, found=found)

    def splits(self, plan: SourcePlan, n: int) -> list[SourcePlan]:
        """By file, balanced by size (a single file is not divided)."""
        return split_refs(plan, n, (ref.size or 0 for ref in plan.refs))


def _refuse_runaway_quotes(table: pa.Table, path: str, first_row: int) -> None:
    """A CSV value with a line break means an unbalanced quote swallowed later rows.

    The shared reader assumes no line breaks in values (pyarrow's default), yet within
    one block its parser lets a quote run on to the end of the block: the rows after an
    unbalanced quote would silently become one value. Refuse that file instead.
    """
    for name, column in zip(table.column_names, table.columns, strict=True):
        if not (pat.is_string(column.type) or pat.is_large_string(column.type)):
            continue
        if not _has_line_break(column):
            continue  # the common case, found by a byte search instead of a regex per value
        breaks = pc.match_substring_regex(column, r"[\r\n]")
        if pc.any(breaks).as_py():
            index = pc.index(breaks, True).as_py()
            raise MalformedFileError(
                path=path,
                fmt="csv",
                problem=f"row {first_row + index}, column {name!r}: a quoted value runs "
                "across lines (an unbalanced quote swallows the rows after it)",
                fix="balance the quotes (a quote inside a quoted value is written twice); "
                "for values with line breaks use JSON Lines or Parquet",
            )


def _has_line_break(column: pa.ChunkedArray) -> bool:
    """Whether any value holds a CR or LF: one byte search over each chunk's value bytes.

    Only the bytes between the chunk's first and last offsets belong to its values, so a
    sliced chunk is judged on its own rows.
    """
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()[:3]
        if data is None or len(chunk) == 0:
            continue
        width = np.int64 if pat.is_large_string(chunk.type) else np.int32
        bounds = np.frombuffer(offsets, dtype=width, count=chunk.offset + len(chunk) + 1)
        values = memoryview(data)[int(bounds[chunk.offset]) : int(bounds[-1])].tobytes()
        if b"\n" in values or b"\r" in values:
            return True
    return False


def _grouped(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """Consecutive batches as tables of up to ``rows`` rows, without copying.

    The CSV reader yields one batch per 1 MiB block (~16k rows of a narrow file); the
    runner pays a fixed cost per batch it checks, so it gets ``batch_rows`` at a time.
    """
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if pending and count + batch.num_rows > rows:
            yield pa.Table.from_batches(pending)
            pending, count = [], 0
        pending.append(batch)
        count += batch.num_rows
    if pending:
        yield pa.Table.from_batches(pending)
