"""The state file `datapunk up` leaves for `down` and `status`."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from cluster.platform_state import PlatformState

STATE = PlatformState(
    gcs_address="127.0.0.1:16501",
    dashboard_url="http://127.0.0.1:18265",
    gateway_url="http://127.0.0.1:18501",
    started_head=True,
    marker="0123abcd",
    started_at=1_767_322_800.5,
)


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "platform.json"  # the folder is created
    STATE.save(path)
    assert PlatformState.load(path) == STATE
    assert json.loads(path.read_text()) == asdict(STATE)  # plain JSON a person can read


def test_joined_cluster_state_has_no_marker(tmp_path: Path) -> None:
    joined = replace(STATE, started_head=False, marker=None)
    joined.save(tmp_path / "platform.json")
    assert PlatformState.load(tmp_path / "platform.json") == joined


def test_save_replaces_the_old_state_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    STATE.save(path)
    newer = replace(STATE, marker="fedcba98", started_at=STATE.started_at + 60)
    newer.save(path)
    assert PlatformState.load(path) == newer
    assert sorted(p.name for p in tmp_path.iterdir()) == ["platform.json"]


def test_missing_file_loads_as_none(tmp_path: Path) -> None:
    assert PlatformState.load(tmp_path / "platform.json") is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2]",
        '{"gcs_address": "127.0.0.1:1"}',
        json.dumps({**asdict(STATE), "unexpected": 1}),
    ],
)
def test_corrupt_file_loads_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "platform.json"
    path.write_text(text)
    assert PlatformState.load(path) is None


def test_clear_removes_the_file_and_tolerates_its_absence(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    STATE.save(path)
    PlatformState.clear(path)
    assert not path.exists()
    PlatformState.clear(path)  # again: no error
    assert PlatformState.load(path) is None


def test_state_is_immutable() -> None:
    with pytest.raises(AttributeError):
        STATE.marker = "other"  # type: ignore[misc]
