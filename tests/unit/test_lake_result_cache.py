"""Result cache: stable keys that change with every snapshot, Arrow values through the port."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.lake.result_cache import ResultCache, cache_key, table_from_bytes, table_to_bytes
from cluster.cache import MemoryCache
from cluster.errors import InvalidInputError, ServiceUnavailableError

RESULT = pa.table({"id": [1, 2, 3], "name": ["a", None, "c"]})


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_key_is_stable_across_dict_order() -> None:
    a = cache_key("sql", {"s.a": 1, "s.b": 2}, {"query": "SELECT 1", "row_limit": 10})
    b = cache_key("sql", {"s.b": 2, "s.a": 1}, {"row_limit": 10, "query": "SELECT 1"})
    assert a == b
    assert a.startswith("lake:sql:")


def test_a_new_snapshot_of_any_table_is_a_new_key() -> None:
    request = {"query": "SELECT * FROM s.a JOIN s.b USING (id)"}
    base = cache_key("sql", {"s.a": 1, "s.b": 2}, request)
    assert cache_key("sql", {"s.a": 1, "s.b": 3}, request) != base
    assert cache_key("sql", {"s.a": 9, "s.b": 2}, request) != base
    assert cache_key("sql", {"s.a": None, "s.b": 2}, request) != base


def test_kind_and_request_are_part_of_the_key() -> None:
    assert cache_key("scan", {"s.a": 1}, {"columns": ["id"]}) != cache_key(
        "sql", {"s.a": 1}, {"columns": ["id"]}
    )
    assert cache_key("scan", {"s.a": 1}, {"columns": ["id"]}) != cache_key(
        "scan", {"s.a": 1}, {"columns": ["id", "name"]}
    )


@given(
    st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers()), min_size=1),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8))),
)
def test_key_is_a_pure_function(snapshots: dict, request: dict) -> None:
    assert cache_key("scan", snapshots, request) == cache_key(
        "scan", dict(snapshots), dict(request)
    )


def test_key_refuses_what_json_cannot_hold_stably() -> None:
    with pytest.raises(InvalidInputError, match="request"):
        cache_key("sql", {"s.a": 1}, {"at": object()})
    with pytest.raises(InvalidInputError, match="kind"):
        cache_key("rows", {"s.a": 1}, {})  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="snapshots"):
        cache_key("sql", {}, {})


def test_bytes_round_trip() -> None:
    assert table_from_bytes(table_to_bytes(RESULT)).equals(RESULT)


async def test_get_and_put_round_trip_through_memory_cache() -> None:
    cache = ResultCache(MemoryCache(), ttl_s=60, max_entry_bytes=1 << 20)
    key = cache_key("sql", {"s.a": 1}, {"query": "SELECT 1"})
    assert await cache.get(key) is None
    assert await cache.put(key, RESULT) is True
    cached = await cache.get(key)
    assert cached is not None and cached.equals(RESULT)


async def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = ResultCache(MemoryCache(now=clock), ttl_s=30, max_entry_bytes=1 << 20)
    await cache.put("k", RESULT)
    clock.now += 31
    assert await cache.get("k") is None


async def test_entries_over_the_size_limit_are_skipped() -> None:
    backend = MemoryCache()
    cache = ResultCache(backend, ttl_s=60, max_entry_bytes=64)
    assert await cache.put("big", RESULT) is False
    assert await backend.get("big") is None


async def test_an_unreadable_entry_is_a_miss_and_is_dropped() -> None:
    backend = MemoryCache()
    await backend.set("k", b"not arrow")
    cache = ResultCache(backend, ttl_s=60, max_entry_bytes=1 << 20)
    assert await cache.get("k") is None
    assert await backend.get("k") is None


class DownCache(MemoryCache):
    async def get(self, key: str) -> bytes | None:
        raise ServiceUnavailableError(service="Redis", target="x", reason="down", fix="start it")

    async def set(self, key: str, value: object, ttl_s: float | None = None) -> None:
        raise ServiceUnavailableError(service="Redis", target="x", reason="down", fix="start it")


async def test_an_unreachable_backend_reads_as_a_miss_and_skips_writes() -> None:
    cache = ResultCache(DownCache(), ttl_s=60, max_entry_bytes=1 << 20)
    assert await cache.get("k") is None
    assert await cache.put("k", RESULT) is False


def test_constructor_validates() -> None:
    with pytest.raises(InvalidInputError, match="ttl_s"):
        ResultCache(MemoryCache(), ttl_s=0, max_entry_bytes=10)
    with pytest.raises(InvalidInputError, match="max_entry_bytes"):
        ResultCache(MemoryCache(), ttl_s=1, max_entry_bytes=0)
