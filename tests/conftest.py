"""Shared test settings: every test gets its own data directory and no stray config."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests must not be steered by a developer's shell or by the real configs/ file.
for _name in list(os.environ):
    if _name.startswith("DATAPUNK_"):
        del os.environ[_name]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "datapunk"
    path.mkdir()
    yield path
