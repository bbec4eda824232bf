"""The behaviour of ``LakeCore`` on any SQL catalog, written once.

Subclass ``LakeContract`` in a ``Test*`` class and provide the fixture ``lake``: a
``LakeCore`` on a fresh, empty catalog whose ``sleep`` does not really sleep. Tests that
need a second writer build one on the same catalog with ``other_core(lake)``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from actors.lake.core import LakeCore
from actors.lake.errors import (
    CommitConflictError,
    InvalidFilterError,
    NamespaceNotEmptyError,
    NamespaceNotFoundError,
    SchemaMismatchError,
    SnapshotNotFoundError,
    TableExistsError,
    TableNotFoundError,
    UnknownColumnError,
)
from actors.lake.sql_errors import ResultTooLargeError
from cluster.errors import InvalidInputError
from cluster.settings import Settings

DAY1 = datetime(2026, 1, 1, 8)
DAY2 = datetime(2026, 1, 2, 9)


def other_core(lake: LakeCore, **lake_settings: object) -> LakeCore:
    """Another writer (as another actor would be) on the same catalog and warehouse."""
    settings: Settings = lake.settings
    if lake_settings:
        changed = settings.lake.model_copy(update=lake_settings)
        settings = settings.model_copy(update={"lake": changed})
    return LakeCore(settings, index=lake.index + 1, sleep=lambda _s: None)


def events(ids: list[int], region: str = "eu", ts: datetime = DAY1) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "ts": pa.array([ts + timedelta(minutes=i) for i in ids], pa.timestamp("us")),
            "region": [region] * len(ids),
        }
    )


def ids_of(table: pa.Table) -> list[int]:
    return sorted(table.column("id").to_pylist())


class LakeContract:
    """Behaviour tests shared by the SQLite and PostgreSQL catalogs."""

    @pytest.fixture
    def lake(self) -> LakeCore:
        raise NotImplementedError("subclasses provide a LakeCore on a fresh catalog")

    @pytest.fixture
    def table(self, lake: LakeCore) -> str:
        """``default.events`` holding ids 1, 2, 3 (one snapshot)."""
        lake.create_table("events", data=events([1, 2, 3]))
        return "default.events"

    # --- namespaces and tables -------------------------------------------------------

    def test_create_from_schema_gives_an_empty_table_with_that_schema(self, lake: LakeCore) -> None:
        schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
        described = lake.create_table("people", schema=schema)
        assert described.name == "default.people"
        assert [(c.name, c.type, c.required) for c in described.schema] == [
            ("id", "long", True),
            ("name", "string", False),
        ]
        assert described.current_snapshot_id is None
        assert lake.scan("people").num_rows == 0

    def test_create_from_data_infers_the_schema_and_commits_the_rows(self, lake: LakeCore) -> None:
        described = lake.create_table("events", data=events([1, 2, 3]))
        assert [(c.name, c.type) for c in described.schema] == [
            ("id", "long"),
            ("ts", "timestamp"),
            ("region", "string"),
        ]
        assert len(described.snapshots) == 1
        assert described.properties["write.parquet.compression-codec"] == "zstd"
        assert ids_of(lake.scan("events")) == [1, 2, 3]

    def test_create_with_a_schema_and_data_conforms_the_data(self, lake: LakeCore) -> None:
        schema = pa.schema([("id", pa.int64()), ("name", pa.string())])
        lake.create_table("people", schema, pa.table({"id": pa.array([1], pa.int32())}))
        assert lake.scan("people").to_pylist() == [{"id": 1, "name": None}]
        with pytest.raises(SchemaMismatchError, match="'extra'"):
            lake.create_table("other", schema, pa.table({"extra": [1]}))
        assert lake.list_tables() == ["default.people"]

    def test_creating_an_existing_table_is_refused(self, lake: LakeCore, table: str) -> None:
        with pytest.raises(TableExistsError, match=r"default\.events"):
            lake.create_table(table, data=events([9]))
        assert ids_of(lake.scan(table)) == [1, 2, 3]

    def test_namespaces_are_created_listed_and_dropped(self, lake: LakeCore) -> None:
        with pytest.raises(NamespaceNotFoundError, match="sales"):
            lake.create_table("sales.orders", data=events([1]))
        lake.create_namespace("sales")
        lake.create_table("sales.orders", data=events([1]))
        assert "sales" in lake.list_namespaces()
        assert lake.list_tables("sales") == ["sales.orders"]
        assert lake.list_tables() == ["sales.orders"]
        with pytest.raises(NamespaceNotEmptyError, match=r"sales\.orders"):
            lake.drop_namespace("sales")
        lake.drop_table("sales.orders")
        lake.drop_namespace("sales")
        assert "sales" not in lake.list_namespaces()

    def test_an_unknown_table_error_names_the_table_and_the_fix(self, lake: LakeCore) -> None:
        with pytest.raises(TableNotFoundError) as info:
            lake.scan("nope.missing")
        assert "nope.missing" in info.value.message
        assert "datapunk lake ls" in info.value.message
        assert info.value.http_status == 404

    def test_a_dropped_table_is_gone(self, lake: LakeCore, table: str) -> None:
        lake.drop_table(table)
        with pytest.raises(TableNotFoundError):
            lake.describe(table)

    def test_a_bad_partition_token_is_named(self, lake: LakeCore) -> None:
        with pytest.raises(InvalidInputError, match=r"daily\(ts\)"):
            lake.create_table("t", data=events([1]), partition_by=["daily(ts)"])
        with pytest.raises(UnknownColumnError, match="nope"):
            lake.create_table("t", data=events([1]), partition_by=["bucket(4, nope)"])
        assert lake.list_tables() == []

    def test_partitioned_table_round_trips(self, lake: LakeCore) -> None:
        data = pa.concat_tables([events([1, 2, 3], ts=DAY1), events([4, 5], "us", ts=DAY2)])
        described = lake.create_table(
            "parts", data=data, partition_by=["day(ts)", "bucket(4, id)"], sort_by=["id desc"]
        )
        assert [(p.name, p.source, p.transform) for p in described.partition_spec] == [
            ("ts_day", "ts", "day"),
            ("id_bucket", "id", "bucket[4]"),
        ]
        assert [(s.source, s.direction) for s in described.sort_order] == [("id", "desc")]
        assert lake.scan("parts").sort_by("id").to_pylist() == data.sort_by("id").to_pylist()
        files = lake.catalog.load_table("default.parts").inspect.files()
        days = {path.split("/ts_day=")[1][:10] for path in files["file_path"].to_pylist()}
        assert days == {"2026-01-01", "2026-01-02"}
        assert ids_of(lake.scan("parts", filter="ts >= '2026-01-02T00:00:00'")) == [4, 5]

    # --- writes and schema reconciliation --------------------------------------------

    def test_append_adds_rows_and_reports_the_commit(self, lake: LakeCore, table: str) -> None:
        result = lake.append(table, events([4, 5]))
        assert (result.rows, result.attempts) == (2, 1)
        assert result.snapshot_id == lake.describe(table).current_snapshot_id
        assert ids_of(lake.scan(table)) == [1, 2, 3, 4, 5]

    def test_snapshot_properties_are_recorded_in_the_summary(
        self, lake: LakeCore, table: str
    ) -> None:
        lake.append(table, events([1]), snapshot_properties={"datapunk.run-id": "run-1"})
        changed = events([1], region="us")
        lake.upsert(table, changed, ["id"], snapshot_properties={"datapunk.run-id": "run-2"})
        summaries = [s.summary.get("datapunk.run-id") for s in lake.history(table)]
        # One upsert may commit several snapshots in its transaction; each carries its run.
        assert summaries.index("run-1") < summaries.index("run-2")
        assert summaries[-1] == "run-2"

    def test_append_accepts_a_record_batch_reader(self, lake: LakeCore, table: str) -> None:
        data = events([7, 8])
        lake.append(table, pa.RecordBatchReader.from_batches(data.schema, data.to_batches()))
        assert ids_of(lake.scan(table)) == [1, 2, 3, 7, 8]

    def test_append_evolves_the_schema_by_adding_a_column(self, lake: LakeCore, table: str) -> None:
        lake.append(table, events([4]).append_column("amount", pa.array([2.5])))
        assert [c.name for c in lake.describe(table).schema][-1] == "amount"
        rows = {
            r["id"]: r["amount"] for r in lake.scan(table, columns=["id", "amount"]).to_pylist()
        }
        assert rows == {1: None, 2: None, 3: None, 4: 2.5}

    def test_append_without_evolve_refuses_a_new_column(self, lake: LakeCore, table: str) -> None:
        with pytest.raises(SchemaMismatchError, match="amount"):
            lake.append(table, events([4]).append_column("amount", pa.array([1.0])), evolve=False)
        assert len(lake.describe(table).schema) == 3

    def test_an_incompatible_type_is_refused_and_the_table_is_unchanged(
        self, lake: LakeCore, table: str
    ) -> None:
        before = lake.describe(table).current_snapshot_id
        bad = pa.table({"id": ["seven"], "region": ["eu"]})
        with pytest.raises(SchemaMismatchError) as info:
            lake.append(table, bad)
        message = info.value.message
        assert "'id'" in message and "long" in message and "string" in message
        assert "cast" in message
        assert info.value.http_status == 422
        assert lake.describe(table).current_snapshot_id == before
        assert ids_of(lake.scan(table)) == [1, 2, 3]

    def test_a_null_in_a_required_column_is_refused(self, lake: LakeCore) -> None:
        schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("name", pa.string())])
        lake.create_table("people", schema=schema)
        with pytest.raises(SchemaMismatchError, match=r"'id'.*required.*null"):
            lake.append(
                "people", pa.table({"id": pa.array([1, None], pa.int64()), "name": ["a", "b"]})
            )
        lake.append("people", pa.table({"id": pa.array([1], pa.int64()), "name": ["a"]}))
        assert lake.scan("people").num_rows == 1

    def test_narrower_data_is_cast_and_wider_data_widens_the_column(self, lake: LakeCore) -> None:
        lake.create_table("nums", data=pa.table({"n": pa.array([1], pa.int32())}))
        assert lake.describe("nums").schema[0].type == "int"
        lake.append("nums", pa.table({"n": pa.array([2], pa.int16())}))
        lake.append("nums", pa.table({"n": pa.array([2**40], pa.int64())}))
        assert lake.describe("nums").schema[0].type == "long"
        lake.append("nums", pa.table({"n": pa.array([3], pa.int32())}))
        assert sorted(lake.scan("nums").column("n").to_pylist()) == [1, 2, 3, 2**40]

    def test_wider_data_without_evolve_is_refused(self, lake: LakeCore) -> None:
        lake.create_table("nums", data=pa.table({"n": pa.array([1], pa.int32())}))
        with pytest.raises(SchemaMismatchError, match=r"'n'.*int.*long.*evolve=True"):
            lake.append("nums", pa.table({"n": pa.array([2], pa.int64())}), evolve=False)

    def test_evolve_schema_adds_renames_and_widens(self, lake: LakeCore) -> None:
        lake.create_table("t", data=pa.table({"n": pa.array([1], pa.int32()), "s": ["a"]}))
        described = lake.evolve_schema(
            "t", add={"x": "double"}, rename={"s": "label"}, widen={"n": "long"}
        )
        assert [(c.name, c.type) for c in described.schema] == [
            ("n", "long"),
            ("label", "string"),
            ("x", "double"),
        ]
        assert lake.scan("t").to_pylist() == [{"n": 1, "label": "a", "x": None}]

    def test_evolve_schema_refuses_a_narrowing_and_an_unknown_column(self, lake: LakeCore) -> None:
        lake.create_table("t", data=pa.table({"n": pa.array([1], pa.int64())}))
        with pytest.raises(SchemaMismatchError, match=r"'n'.*long.*int"):
            lake.evolve_schema("t", widen={"n": "int"})
        with pytest.raises(UnknownColumnError, match=r"'zz'.*available columns: n"):
            lake.evolve_schema("t", rename={"zz": "yy"})

    def test_overwrite_replaces_the_rows_matching_a_filter(
        self, lake: LakeCore, table: str
    ) -> None:
        result = lake.overwrite(table, events([20, 30], "us"), filter="id >= 2")
        assert (result.rows, result.rows_deleted) == (2, 2)
        assert ids_of(lake.scan(table)) == [1, 20, 30]
        lake.overwrite(table, events([99]))
        assert ids_of(lake.scan(table)) == [99]

    def test_upsert_updates_matching_keys_and_inserts_the_rest(
        self, lake: LakeCore, table: str
    ) -> None:
        changes = events([2, 3, 4], "us")
        changes = changes.set_column(1, "ts", events([2, 3, 4]).column("ts"))  # 3 unchanged
        changes = changes.set_column(2, "region", pa.array(["us", "eu", "us"]))
        result = lake.upsert(table, changes, key_columns=["id"])
        assert (result.rows_updated, result.rows_inserted) == (1, 1)
        regions = {r["id"]: r["region"] for r in lake.scan(table).to_pylist()}
        assert regions == {1: "eu", 2: "us", 3: "eu", 4: "us"}

    def test_upsert_refuses_duplicate_keys_and_partial_rows(
        self, lake: LakeCore, table: str
    ) -> None:
        with pytest.raises(InvalidInputError, match="duplicate"):
            lake.upsert(table, events([5, 5]), key_columns=["id"])
        with pytest.raises(SchemaMismatchError, match="'ts'"):
            lake.upsert(table, pa.table({"id": pa.array([1], pa.int64()), "region": ["x"]}), ["id"])
        assert ids_of(lake.scan(table)) == [1, 2, 3]

    def test_delete_removes_the_rows_matching_a_filter(self, lake: LakeCore, table: str) -> None:
        result = lake.delete(table, "id = 2 or id = 3")
        assert result.rows_deleted == 2
        assert ids_of(lake.scan(table)) == [1]
        assert lake.delete(table, "id = 42").rows_deleted == 0

    # --- reads -----------------------------------------------------------------------

    def test_scan_projects_and_filters(self, lake: LakeCore, table: str) -> None:
        lake.append(table, events([4, 5], "us"))
        got = lake.scan(table, columns=["id"], filter="region = 'us' and id > 4")
        assert got.column_names == ["id"]
        assert got.column("id").to_pylist() == [5]
        assert lake.scan(table, limit=2).num_rows == 2

    def test_scan_of_an_unknown_column_lists_the_available_ones(
        self, lake: LakeCore, table: str
    ) -> None:
        with pytest.raises(UnknownColumnError, match=r"'nope'.*id, region, ts"):
            lake.scan(table, columns=["id", "nope"])
        with pytest.raises(UnknownColumnError, match="'zz'"):
            lake.scan(table, filter="zz > 1")

    def test_a_scan_over_the_byte_limit_is_refused(self, lake: LakeCore, table: str) -> None:
        lake.append(table, events(list(range(10, 400))))
        with pytest.raises(ResultTooLargeError, match=r"lake\.max_result_bytes"):
            other_core(lake, max_result_bytes=1024).scan(table)
        assert other_core(lake, max_result_bytes=1024).scan(table, limit=5).num_rows == 5

    def test_a_bad_filter_names_the_filter_and_the_problem(
        self, lake: LakeCore, table: str
    ) -> None:
        with pytest.raises(InvalidFilterError, match=r"'id >>> 1'.*column"):
            lake.scan(table, filter="id >>> 1")
        with pytest.raises(InvalidFilterError, match="abc"):
            lake.scan(table, filter="id = 'abc'")

    def test_time_travel_by_snapshot_id(self, lake: LakeCore, table: str) -> None:
        first = lake.describe(table).current_snapshot_id
        lake.append(table, events([4]))
        assert ids_of(lake.scan(table, snapshot_id=first)) == [1, 2, 3]
        assert lake.resolve_snapshot(table, snapshot_id=first) == first
        with pytest.raises(SnapshotNotFoundError, match="123"):
            lake.scan(table, snapshot_id=123)

    def test_time_travel_by_timestamp(self, lake: LakeCore, table: str) -> None:
        time.sleep(0.005)  # snapshot times are milliseconds
        lake.append(table, events([4]))
        first, second = lake.history(table)
        assert ids_of(lake.scan(table, as_of=first.timestamp)) == [1, 2, 3]
        assert ids_of(lake.scan(table, as_of=second.timestamp)) == [1, 2, 3, 4]
        assert lake.resolve_snapshot(table, as_of=datetime.now(UTC)) == second.snapshot_id
        with pytest.raises(SnapshotNotFoundError) as info:
            lake.scan(table, as_of=first.timestamp - timedelta(days=1))
        assert first.timestamp.isoformat() in info.value.message
        with pytest.raises(InvalidInputError, match="time zone"):
            lake.scan(table, as_of=datetime(2026, 1, 1))

    def test_history_is_oldest_first_with_operations(self, lake: LakeCore, table: str) -> None:
        lake.append(table, events([4]))
        lake.delete(table, "id = 1")
        entries = lake.history(table)
        assert [e.operation for e in entries][:2] == ["append", "append"]
        assert entries[-1].snapshot_id == lake.describe(table).current_snapshot_id
        assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
        assert entries[1].parent_id == entries[0].snapshot_id

    def test_rollback_restores_an_earlier_snapshot(self, lake: LakeCore, table: str) -> None:
        first = lake.describe(table).current_snapshot_id
        assert first is not None
        lake.append(table, events([4]))
        lake.delete(table, "id = 1")
        result = lake.rollback(table, first)
        assert result.snapshot_id == first
        assert ids_of(lake.scan(table)) == [1, 2, 3]
        assert lake.history(table)[-1].snapshot_id == first
        with pytest.raises(SnapshotNotFoundError):
            lake.rollback(table, 42)

    # --- failures and concurrency ----------------------------------------------------

    def test_a_failure_before_commit_leaves_the_table_exactly_as_it_was(
        self, lake: LakeCore, table: str
    ) -> None:
        before = lake.describe(table).current_snapshot_id

        def crash() -> None:
            raise RuntimeError("process killed between file write and commit")

        with pytest.raises(RuntimeError, match="killed"):
            lake.append(table, events([4]).append_column("extra", ["x"]), before_commit=crash)
        described = lake.describe(table)
        assert described.current_snapshot_id == before
        assert [c.name for c in described.schema] == ["id", "ts", "region"]
        assert ids_of(lake.scan(table)) == [1, 2, 3]
        assert lake.append(table, events([5])).attempts == 1
        assert ids_of(lake.scan(table)) == [1, 2, 3, 5]

    def test_a_lost_race_is_retried_and_no_update_is_lost(self, lake: LakeCore, table: str) -> None:
        rival = other_core(lake)
        fired: list[bool] = []

        def rival_commits_first() -> None:
            if not fired:
                fired.append(True)
                rival.append(table, events([200]))

        result = lake.append(table, events([100]), before_commit=rival_commits_first)
        assert result.attempts == 2
        assert ids_of(lake.scan(table)) == [1, 2, 3, 100, 200]
        assert result.snapshot_id == lake.describe(table).current_snapshot_id

    def test_an_upsert_that_loses_a_race_rereads_the_rows(self, lake: LakeCore, table: str) -> None:
        rival = other_core(lake)
        fired: list[bool] = []

        def rival_inserts_the_key() -> None:
            if not fired:
                fired.append(True)
                rival.append(table, events([7], "rival"))

        result = lake.upsert(
            table, events([7], "mine"), ["id"], before_commit=rival_inserts_the_key
        )
        assert (result.attempts, result.rows_updated, result.rows_inserted) == (2, 1, 0)
        assert [r["region"] for r in lake.scan(table, filter="id = 7").to_pylist()] == ["mine"]

    def test_exhausted_retries_raise_commit_conflict(self, lake: LakeCore, table: str) -> None:
        impatient = other_core(lake, commit_retries=1)
        rival = other_core(lake)
        counter = iter(range(300, 400))

        def rival_always_wins() -> None:
            rival.append(table, events([next(counter)]))

        with pytest.raises(CommitConflictError) as info:
            impatient.append(table, events([100]), before_commit=rival_always_wins)
        assert "default.events" in info.value.message and "2 commit attempts" in info.value.message
        assert info.value.http_status == 409
        assert ids_of(lake.scan(table)) == [1, 2, 3, 300, 301]

    def test_commit_retry_settings_are_not_stored_in_the_table(
        self, lake: LakeCore, table: str
    ) -> None:
        lake.append(table, events([4]))
        assert "commit.retry.num-retries" not in lake.describe(table).properties
