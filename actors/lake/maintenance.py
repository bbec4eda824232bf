"""Table maintenance on pyiceberg: compact small files, expire snapshots, remove orphans.

pyiceberg 0.12 ships ``expire_snapshots`` but neither compaction nor orphan removal;
compaction lives in ``actors.lake.compaction`` (re-exported here), orphan removal below.

**Orphan removal** lists every file under the table location (local ``file://``
warehouses) and deletes those that no table metadata reaches and whose mtime is older
than the cut-off: live data and delete files of every snapshot's manifests, manifests,
manifest lists, the current and logged ``metadata.json`` files, and statistics files.
The cut-off is the safety margin for writes in flight (``LakeSettings.orphan_grace_s``):
their files exist before a commit references them, and pyiceberg's writer pool can still
be finishing a file after a failed append has already raised.

Time is injected: callers pass ``now`` and cut-offs; nothing here reads the clock.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from pyiceberg.table.refs import SnapshotRefType

from actors.lake.compaction import CompactionResult, compact, plan_bins, require_aware
from actors.lake.sql_errors import OrphanScanError
from cluster.errors import InvalidInputError

if TYPE_CHECKING:
    from pyiceberg.table import Table
    from pyiceberg.table.metadata import TableMetadata

__all__ = [
    "CompactionResult",
    "compact",
    "expire_snapshots",
    "plan_bins",
    "reachable_files",
    "remove_orphan_files",
    "select_expired",
    "select_orphans",
]

logger = logging.getLogger(__name__)

_EPOCH_NAIVE = datetime(1970, 1, 1)
# File-system catalogs point at the current metadata with this file; no metadata names it.
_NEVER_ORPHANS = frozenset({"version-hint.text"})


# ---------------------------------------------------------------- snapshot expiry


def select_expired(metadata: TableMetadata, *, older_than_ms: int, retain_last: int) -> list[int]:
    """Snapshot ids to expire: older than the cut-off, not a branch or tag head, not the
    current snapshot, and not among the ``retain_last`` newest ancestors of any branch."""
    keep = {ref.snapshot_id for ref in metadata.refs.values()}
    if metadata.current_snapshot_id is not None:
        keep.add(metadata.current_snapshot_id)
    branch = SnapshotRefType.BRANCH
    heads = [ref.snapshot_id for ref in metadata.refs.values() if ref.snapshot_ref_type == branch]
    for head in heads:
        keep.update(_ancestors(metadata, head, retain_last))
    old = [s for s in metadata.snapshots if s.timestamp_ms < older_than_ms]
    return [
        s.snapshot_id
        for s in sorted(old, key=lambda s: s.timestamp_ms)
        if s.snapshot_id not in keep
    ]


def _ancestors(metadata: TableMetadata, snapshot_id: int | None, count: int) -> list[int]:
    found: list[int] = []
    while snapshot_id is not None and len(found) < count:
        snapshot = metadata.snapshot_by_id(snapshot_id)
        if snapshot is None:
            break
        found.append(snapshot.snapshot_id)
        snapshot_id = snapshot.parent_snapshot_id
    return found


def expire_snapshots(table: Table, *, older_than: datetime, retain_last: int = 1) -> list[int]:
    """Expire snapshots older than ``older_than``; return their ids, oldest first.

    Never expires the current snapshot, branch or tag heads, or the ``retain_last`` newest
    ancestors of each branch. Files only the expired snapshots used become orphans, which
    ``remove_orphan_files`` deletes.
    """
    require_aware("older_than", older_than)
    if isinstance(retain_last, bool) or not isinstance(retain_last, int) or retain_last < 1:
        raise InvalidInputError(field="retain_last", value=retain_last, allowed="an int >= 1")
    table.refresh()
    expired = select_expired(
        table.metadata, older_than_ms=_epoch_ms(older_than), retain_last=retain_last
    )
    if expired:
        table.maintenance.expire_snapshots().by_ids(expired).commit()
    return expired


# ---------------------------------------------------------------- orphan files


def reachable_files(table: Table) -> set[str]:
    """Every file the table's metadata reaches, as normalised local paths."""
    metadata = table.metadata
    uris: set[str] = {table.metadata_location}
    uris.update(entry.metadata_file for entry in metadata.metadata_log)
    uris.update(stats.statistics_path for stats in metadata.statistics)
    uris.update(stats.statistics_path for stats in metadata.partition_statistics)
    seen_manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        uris.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            uris.add(manifest.manifest_path)
            # Live entries only: a file a snapshot marks deleted is still live in its parent
            # if that is kept (and then listed there), and unreadable if it was expired.
            entries = manifest.fetch_manifest_entry(table.io, discard_deleted=True)
            uris.update(entry.data_file.file_path for entry in entries)
    return {_local_path(uri) for uri in uris if _is_local(uri)}


def select_orphans(
    listing: Iterable[tuple[str, int]], reachable: set[str], cutoff_ns: int
) -> list[str]:
    """Paths of ``listing`` (path, mtime ns) that nothing reaches, older than the cut-off."""
    return sorted(
        path for path, mtime_ns in listing if path not in reachable and mtime_ns < cutoff_ns
    )


def remove_orphan_files(table: Table, *, older_than: datetime, dry_run: bool = False) -> list[str]:
    """Delete (or, with ``dry_run``, only list) unreachable files older than ``older_than``.

    Returns the orphans as URIs, sorted. Only local (``file://``) warehouses are supported.
    """
    require_aware("older_than", older_than)
    table.refresh()
    root = _table_root(table.metadata.location)
    reachable = reachable_files(table)
    listing = _list_files(root)
    _check_listing(table, root, reachable, listing)
    orphans = select_orphans(listing, reachable, _epoch_ns(older_than))
    uris = [Path(path).as_uri() for path in orphans]
    if not dry_run:
        for uri in uris:
            table.io.delete(uri)
    logger.info("%s orphan files under %s", "found" if dry_run else "removed", root)
    return uris


def _table_root(location: str) -> str:
    if not _is_local(location):
        raise InvalidInputError(
            field="table location",
            value=location,
            allowed="a local file:// warehouse; orphan removal on object stores is not supported",
        )
    return _local_path(location)


def _list_files(root: str) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            if name in _NEVER_ORPHANS:
                continue
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            if not os.path.islink(path):  # a link may point outside the table: never ours
                found.append((os.path.normpath(path), stat.st_mtime_ns))
    return found


def _check_listing(
    table: Table, root: str, reachable: set[str], listing: list[tuple[str, int]]
) -> None:
    """Refuse to delete when the listing and the metadata disagree on how paths look."""
    current = _local_path(table.metadata_location)
    listed = {path for path, _ in listing}
    if _is_under(current, root) and current not in listed:
        raise OrphanScanError(
            location=root,
            reason=f"the current metadata file {current} is not among the listed files, so "
            "paths in metadata and on disk do not compare; check the warehouse path",
        )
    under_root = [path for path in reachable if _is_under(path, root)]
    if under_root and not any(path in listed for path in under_root):
        raise OrphanScanError(location=root, reason="no file the metadata reaches was listed")


def _is_local(uri: str) -> bool:
    return urlparse(uri).scheme in ("", "file")


def _local_path(uri: str) -> str:
    parsed = urlparse(uri)
    path = f"{parsed.netloc}{parsed.path}" if parsed.scheme == "file" else uri
    return os.path.normpath(os.path.abspath(path))


def _is_under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------- helpers


def _epoch_ms(value: datetime) -> int:
    return _epoch_us(value) // 1000


def _epoch_ns(value: datetime) -> int:
    return _epoch_us(value) * 1000


def _epoch_us(value: datetime) -> int:
    offset = value.utcoffset() or timedelta(0)
    naive_utc = value.replace(tzinfo=None) - offset
    return (naive_utc - _EPOCH_NAIVE) // timedelta(microseconds=1)
