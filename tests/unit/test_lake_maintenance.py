"""Maintenance on real pyiceberg tables (SQLite catalog, local warehouse), no Ray."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import LongType, NestedField, StringType
from pyiceberg.utils.concurrent import ExecutorFactory

from actors.lake.maintenance import (
    compact,
    expire_snapshots,
    plan_bins,
    reachable_files,
    remove_orphan_files,
    select_expired,
    select_orphans,
)
from actors.lake.sql_errors import CompactionConflictError, OrphanScanError
from cluster.errors import InvalidInputError

NOW = datetime(2030, 1, 1, tzinfo=UTC)  # after every file these tests write
ARROW_SCHEMA = pa.schema(
    [pa.field("id", pa.int64(), nullable=False), ("batch", pa.int64()), ("region", pa.string())]
)
ICEBERG_SCHEMA = Schema(
    NestedField(1, "id", LongType(), required=True),
    NestedField(2, "batch", LongType(), required=False),
    NestedField(3, "region", StringType(), required=False),
)
MB = 1 << 20


@pytest.fixture
def catalog(tmp_path: Path) -> SqlCatalog:
    catalog = SqlCatalog("t", uri=f"sqlite:///{tmp_path}/cat.db", warehouse=f"file://{tmp_path}/wh")
    catalog.create_namespace("ns")
    return catalog


@pytest.fixture
def table(catalog: SqlCatalog) -> Table:
    return catalog.create_table("ns.events", schema=ICEBERG_SCHEMA)


def _rows(batch: int, count: int = 10, region: str = "eu") -> pa.Table:
    ids = [batch * 1000 + i for i in range(count)]
    return pa.table(
        {"id": ids, "batch": [batch] * count, "region": [region] * count}, schema=ARROW_SCHEMA
    )


def _append_batches(table: Table, batches: int, region: str = "eu") -> None:
    for b in range(batches):
        table.append(_rows(b, region=region))


def _contents(table: Table) -> list[dict[str, Any]]:
    table.refresh()
    return (
        table.scan().to_arrow().sort_by([("id", "ascending"), ("region", "ascending")]).to_pylist()
    )


def _data_files(table: Table) -> list[str]:
    table.refresh()
    return sorted(task.file.file_path for task in table.scan().plan_files())


def _files_on_disk(table: Table) -> set[str]:
    root = table.location().removeprefix("file://")
    return {os.path.join(d, f) for d, _, files in os.walk(root) for f in files}


# ---------------------------------------------------------------- bin planning


def test_plan_bins_groups_small_files_and_drops_singletons() -> None:
    assert plan_bins([10, 10, 10], 30) == [[0, 1, 2]]
    assert plan_bins([20, 20, 20], 30) == []
    assert plan_bins([25, 5, 20, 10], 30) == [[0, 1], [2, 3]]


@given(st.lists(st.integers(min_value=1, max_value=100), max_size=30), st.integers(1, 150))
def test_plan_bins_respects_capacity_and_uses_each_file_once(sizes: list[int], cap: int) -> None:
    bins = plan_bins(sizes, cap)
    used = [i for b in bins for i in b]
    assert len(used) == len(set(used))
    assert all(len(b) >= 2 and sum(sizes[i] for i in b) <= cap for b in bins)


# ---------------------------------------------------------------- compaction


def test_compact_rewrites_small_files_into_one_and_keeps_every_row(table: Table) -> None:
    _append_batches(table, 5)
    before, schema = _contents(table), table.schema()
    result = compact(table, target_file_size_bytes=MB, now=NOW)
    assert (result.files_before, result.files_after, result.rows) == (5, 1, 50)
    assert result.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    assert _contents(table) == before
    assert table.schema() == schema
    assert len(_data_files(table)) == 1
    summary = table.current_snapshot().summary  # type: ignore[union-attr]
    assert summary["datapunk.maintenance"] == "compaction"
    assert summary["datapunk.compacted-at"] == NOW.isoformat()


def test_compact_works_per_partition_and_honours_min_input_files(catalog: SqlCatalog) -> None:
    spec = PartitionSpec(PartitionField(3, 1000, IdentityTransform(), "region"))
    table = catalog.create_table("ns.parted", schema=ICEBERG_SCHEMA, partition_spec=spec)
    _append_batches(table, 3, region="eu")
    _append_batches(table, 2, region="us")
    table.append(_rows(9, region="ap"))
    before = _contents(table)
    result = compact(table, target_file_size_bytes=MB, min_input_files=3, now=NOW)
    assert (result.files_before, result.files_after, result.rewritten_files) == (6, 4, 3)
    assert _contents(table) == before
    regions = sorted(t.file.partition[0] for t in table.scan().plan_files())
    assert regions == ["ap", "eu", "us", "us"]


def test_compact_with_nothing_to_do(table: Table) -> None:
    assert compact(table, target_file_size_bytes=MB, now=NOW).snapshot_id is None  # no snapshot
    _append_batches(table, 3)
    snapshot = table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    result = compact(table, target_file_size_bytes=10, now=NOW)  # every file is "large"
    assert (result.files_before, result.files_after, result.snapshot_id) == (3, 3, None)
    assert table.current_snapshot().snapshot_id == snapshot  # type: ignore[union-attr]


def test_compact_after_schema_evolution_keeps_rows_and_schema(table: Table) -> None:
    _append_batches(table, 2)
    with table.update_schema() as update:
        update.add_column("note", StringType())
    table.append(
        pa.table(
            {"id": [5000], "batch": [5], "region": ["eu"], "note": ["new"]},
            schema=ARROW_SCHEMA.append(pa.field("note", pa.string())),
        )
    )
    before, schema = _contents(table), table.schema()
    compact(table, target_file_size_bytes=MB, now=NOW)
    assert _contents(table) == before
    assert table.schema() == schema
    assert len(_data_files(table)) == 1


def test_compaction_racing_an_append_keeps_the_appended_rows(
    table: Table, catalog: SqlCatalog
) -> None:
    _append_batches(table, 4)
    other_writer = catalog.load_table("ns.events")

    def append_meanwhile() -> None:
        if not appended:
            appended.append(True)
            other_writer.append(_rows(77, count=3))

    appended: list[bool] = []
    expected = sorted([*_contents(table), *_rows(77, count=3).to_pylist()], key=lambda r: r["id"])
    result = compact(table, target_file_size_bytes=MB, now=NOW, before_commit=append_meanwhile)
    assert result.snapshot_id == table.current_snapshot().snapshot_id  # type: ignore[union-attr]
    assert _contents(table) == expected
    assert len(_data_files(table)) == 2  # the compacted file and the racing append


def test_compaction_racing_a_delete_replans_and_never_resurrects_rows(
    table: Table, catalog: SqlCatalog
) -> None:
    _append_batches(table, 4)
    other_writer = catalog.load_table("ns.events")
    calls: list[int] = []

    def delete_an_input_file() -> None:
        calls.append(1)
        if len(calls) == 1:
            other_writer.delete("batch = 2")  # drops one whole input file

    compact(table, target_file_size_bytes=MB, now=NOW, before_commit=delete_an_input_file)
    assert len(calls) == 2  # the first plan lost, the second won
    assert [r["batch"] for r in _contents(table)] == [0] * 10 + [1] * 10 + [3] * 10
    assert len(_data_files(table)) == 1
    leftovers = remove_orphan_files(table, older_than=NOW, dry_run=True)
    assert not [p for p in leftovers if p.endswith(".parquet")]  # the lost attempt cleaned up


def test_compaction_gives_up_with_a_typed_error_and_changes_nothing(
    table: Table, catalog: SqlCatalog
) -> None:
    _append_batches(table, 3)
    other_writer = catalog.load_table("ns.events")

    deleted: list[int] = []

    def delete_every_time() -> None:
        other_writer.refresh()
        deleted.append(other_writer.scan().to_arrow().column("batch").to_pylist()[0])
        other_writer.delete(f"batch = {deleted[-1]}")

    with pytest.raises(CompactionConflictError) as info:
        compact(
            table,
            target_file_size_bytes=MB,
            now=NOW,
            max_attempts=1,
            before_commit=delete_every_time,
        )
    assert "ns.events" in info.value.message and "no data changed" in info.value.message
    kept = sorted({0, 1, 2} - set(deleted))
    assert [r["batch"] for r in _contents(table)] == [b for b in kept for _ in range(10)]
    leftovers = remove_orphan_files(table, older_than=NOW, dry_run=True)
    assert not [p for p in leftovers if p.endswith(".parquet")]


def test_compact_validates_arguments(table: Table) -> None:
    with pytest.raises(InvalidInputError, match="min_input_files"):
        compact(table, target_file_size_bytes=MB, min_input_files=1, now=NOW)
    with pytest.raises(InvalidInputError, match="target_file_size_bytes"):
        compact(table, target_file_size_bytes=0, now=NOW)
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        compact(table, target_file_size_bytes=MB, now=datetime(2030, 1, 1))


# ---------------------------------------------------------------- snapshot expiry


def _snapshot_ids(table: Table) -> list[int]:
    table.refresh()
    return [s.snapshot_id for s in sorted(table.snapshots(), key=lambda s: s.timestamp_ms)]


def test_expire_keeps_current_and_retain_last(table: Table) -> None:
    _append_batches(table, 4)
    ids, before = _snapshot_ids(table), _contents(table)
    assert expire_snapshots(table, older_than=NOW, retain_last=2) == ids[:2]
    assert _snapshot_ids(table) == ids[2:]
    assert expire_snapshots(table, older_than=NOW) == [ids[2]]
    assert _snapshot_ids(table) == ids[3:]
    assert _contents(table) == before


def test_expire_only_snapshots_older_than_the_cutoff(table: Table) -> None:
    _append_batches(table, 3)
    table.refresh()
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms)
    cutoff = datetime.fromtimestamp(snapshots[1].timestamp_ms / 1000, tz=UTC)
    expired = expire_snapshots(table, older_than=cutoff)
    assert expired == [
        s.snapshot_id for s in snapshots if s.timestamp_ms < snapshots[1].timestamp_ms
    ]


def test_expire_never_touches_tagged_or_branch_heads(table: Table) -> None:
    _append_batches(table, 4)
    ids = _snapshot_ids(table)
    table.manage_snapshots().create_tag(ids[0], "release").create_branch(ids[1], "audit").commit()
    expired = expire_snapshots(table, older_than=NOW)
    assert expired == [ids[2]]
    assert _snapshot_ids(table) == [ids[0], ids[1], ids[3]]
    assert table.scan(snapshot_id=ids[0]).to_arrow().num_rows == 10


def test_select_expired_is_pure_over_metadata(table: Table) -> None:
    _append_batches(table, 3)
    ids = _snapshot_ids(table)
    assert select_expired(table.metadata, older_than_ms=0, retain_last=1) == []
    far = int(NOW.timestamp() * 1000)
    assert select_expired(table.metadata, older_than_ms=far, retain_last=3) == []
    assert _snapshot_ids(table) == ids  # nothing committed


def test_expire_refuses_naive_cutoffs_and_bad_retention(table: Table) -> None:
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        expire_snapshots(table, older_than=datetime(2030, 1, 1))
    with pytest.raises(InvalidInputError, match="retain_last"):
        expire_snapshots(table, older_than=NOW, retain_last=0)


# ---------------------------------------------------------------- orphan files


def _interrupted_append(table: Table) -> None:
    """Stage an append (data file, manifest, manifest list written) and abandon it."""
    txn = table.transaction()
    txn.append(_rows(50))
    del txn  # never committed


def _failing_append(table: Table) -> None:
    """An append whose source dies after the first batch was written to a file."""

    def batches() -> Iterator[pa.RecordBatch]:
        yield from _rows(60).to_batches()
        raise RuntimeError("source died mid-stream")

    with table.transaction() as txn:
        txn.set_properties({"write.target-file-size-bytes": "1"})
    reader = pa.RecordBatchReader.from_batches(ARROW_SCHEMA, batches())
    with pytest.raises(Exception, match="source died"):
        table.append(reader)
    # pyiceberg writes files on its thread pool; one in flight when the source failed
    # lands after the exception (which is why orphan removal needs a grace period).
    ExecutorFactory.get_or_create().shutdown(wait=True)
    ExecutorFactory._instance = None


def _age(paths: Iterator[str] | set[str], when: datetime) -> None:
    for path in paths:
        os.utime(path, (when.timestamp(), when.timestamp()))


def test_remove_orphans_after_interrupted_and_failed_appends(table: Table) -> None:
    _append_batches(table, 2)
    referenced = _files_on_disk(table)
    snapshots, before = _snapshot_ids(table), _contents(table)
    data_dir = Path(table.location().removeprefix("file://")) / "data"
    by_hand = data_dir / "written-by-hand.parquet"
    by_hand.write_bytes(b"PAR1 not really")
    _interrupted_append(table)
    _failing_append(table)
    referenced |= {p for p in _files_on_disk(table) if p.endswith(".metadata.json")}  # property
    orphans = _files_on_disk(table) - referenced
    assert str(by_hand) in orphans
    assert any(p.endswith(".parquet") and p != str(by_hand) for p in orphans)
    assert any("snap-" in p for p in orphans)  # the abandoned manifest list

    assert remove_orphan_files(table, older_than=NOW, dry_run=True) == sorted(
        Path(p).as_uri() for p in orphans
    )
    assert _files_on_disk(table) >= orphans  # a dry run deletes nothing
    removed = remove_orphan_files(table, older_than=NOW)
    assert sorted(removed) == sorted(Path(p).as_uri() for p in orphans)
    assert _files_on_disk(table) == referenced
    assert _contents(table) == before
    assert table.scan(snapshot_id=snapshots[0]).to_arrow().num_rows == 10


def test_files_younger_than_the_cutoff_are_kept(table: Table) -> None:
    _append_batches(table, 1)
    data_dir = Path(table.location().removeprefix("file://")) / "data"
    old, young = data_dir / "old-orphan.parquet", data_dir / "young-orphan.parquet"
    old.write_bytes(b"x")
    young.write_bytes(b"y")
    cutoff = datetime.now(UTC) - timedelta(hours=1)  # the grace: an hour
    _age({str(old)}, cutoff - timedelta(minutes=5))
    assert remove_orphan_files(table, older_than=cutoff) == [old.as_uri()]
    assert young.exists() and not old.exists()


def test_expire_then_remove_orphans_reclaims_compacted_files(table: Table) -> None:
    _append_batches(table, 4)
    before = _contents(table)
    compact(table, target_file_size_bytes=MB, now=NOW)
    expire_snapshots(table, older_than=NOW)
    removed = remove_orphan_files(table, older_than=NOW)
    assert sum(p.endswith(".parquet") for p in removed) == 4
    parquet_on_disk = {p for p in _files_on_disk(table) if p.endswith(".parquet")}
    assert parquet_on_disk == {p.removeprefix("file://") for p in _data_files(table)}
    assert _contents(table) == before


def test_reachable_files_cover_every_kind_of_metadata(table: Table) -> None:
    _append_batches(table, 2)
    reachable = reachable_files(table)
    assert _files_on_disk(table) == reachable  # nothing orphaned yet, nothing missing
    assert any(p.endswith(".metadata.json") for p in reachable)
    assert any("snap-" in p for p in reachable)


def test_orphan_removal_refuses_when_metadata_and_disk_disagree(
    table: Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    _append_batches(table, 1)
    monkeypatch.setattr(table, "refresh", lambda: table)
    table.metadata_location = table.metadata_location.replace(".metadata.json", ".gone.json")
    with pytest.raises(OrphanScanError, match="nothing was deleted"):
        remove_orphan_files(table, older_than=NOW)
    assert len(_data_files(table)) == 1


def test_version_hint_is_never_an_orphan(table: Table) -> None:
    _append_batches(table, 1)
    hint = Path(table.location().removeprefix("file://")) / "metadata" / "version-hint.text"
    hint.write_text("1")
    assert remove_orphan_files(table, older_than=NOW) == []
    assert hint.exists()


def test_select_orphans_is_pure() -> None:
    listing = [("/t/a", 5), ("/t/b", 50), ("/t/c", 5)]
    assert select_orphans(listing, {"/t/c"}, cutoff_ns=10) == ["/t/a"]


def test_orphan_removal_refuses_object_stores() -> None:
    fake = SimpleNamespace(refresh=lambda: None, metadata=SimpleNamespace(location="s3://b/t"))
    with pytest.raises(InvalidInputError, match="s3://b/t"):
        remove_orphan_files(fake, older_than=NOW)  # type: ignore[arg-type]
