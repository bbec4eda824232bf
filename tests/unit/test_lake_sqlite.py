"""The Lake contract on the embedded default: a SQLite catalog in the data directory.

Plus the case SQLite makes hard: several writer processes committing to one table at
once (the busy timeout and optimistic retries together must lose no row).
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from actors.lake.core import LakeCore
from cluster.settings import load_settings
from tests.contracts.lake import LakeContract, events, ids_of

WRITERS = 3
APPENDS = 4


class TestLakeOnSqlite(LakeContract):
    @pytest.fixture
    def lake(self, tmp_path: Path) -> LakeCore:
        settings = load_settings(data_dir=tmp_path)
        return LakeCore(settings, index=0, sleep=lambda _s: None)


def _writer(data_dir: str, writer: int) -> int:
    """One process appending rows of its own; returns the attempts its commits needed."""
    lake = LakeCore(load_settings(data_dir=Path(data_dir)), index=writer)
    first = 1000 * (writer + 1)
    return sum(lake.append("events", events([first + i])).attempts for i in range(APPENDS))


def test_writer_processes_racing_on_one_table_lose_no_row(tmp_path: Path) -> None:
    lake = LakeCore(load_settings(data_dir=tmp_path), index=0)
    lake.create_table("events", data=events([1]))
    context = multiprocessing.get_context("spawn")
    with context.Pool(WRITERS) as pool:
        attempts = pool.starmap(_writer, [(str(tmp_path), w) for w in range(WRITERS)])
    expected = [1] + [1000 * (w + 1) + i for w in range(WRITERS) for i in range(APPENDS)]
    assert ids_of(lake.scan("events")) == sorted(expected)
    assert len(lake.history("events")) == 1 + WRITERS * APPENDS
    assert sum(attempts) >= WRITERS * APPENDS
