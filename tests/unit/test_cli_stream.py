"""`datapunk stream` through Typer's test runner: one-line errors without a platform or
for a bad topology file, and the tables it prints (over a ``StreamControl`` stand-in)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import actors.stream.control
from cluster import cli_stream
from cluster.cli import app
from cluster.platform_state import PlatformState
from cluster.settings import load_settings
from tests.stream_support import window_topology

GOOD = window_topology("orders").model_dump(mode="json", by_alias=True)
LIVE = {
    "name": "orders",
    "state": "running",
    "error": None,
    "restarts": 0,
    "partitions": 1,
    "epoch": 12,
    "events_in": 1500,
    "events_kept": 1500,
    "dead_letters": 2,
    "events_per_s": 250.0,
    "event_time_lag_s": 1.5,
    "late": {"per_10s": 3, "low_then_high": 0},
    "watermark_delay_s": {"per_10s": 6.5, "low_then_high": 6.5},
    "outputs": {"per_10s": 40},
}
ENTRY = {"seq": 4, "epoch": 12, "output": "per_10s", "rows": [{"k": "a", "n": 7, "total": None}]}


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["stream", *args], catch_exceptions=False)


def one_error_line(result: Any) -> str:
    """Exit 2, nothing on stdout, one `error:` line on stderr, no traceback."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    line: str = lines[0]
    return line


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("ls",), ("status", "orders"), ("stop", "orders"), ("tail", "orders", "--follow")],
)
def test_without_a_platform_says_to_run_up(runner: CliRunner, args: tuple[str, ...]) -> None:
    assert "`datapunk up`" in one_error_line(invoke(runner, *args))


def test_deploy_of_a_good_file_without_a_platform_says_to_run_up(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = write(tmp_path / "orders.yaml", json.dumps(GOOD))  # JSON is YAML
    line = one_error_line(invoke(runner, "deploy", str(path)))
    assert "not running" in line and "`datapunk up`" in line


def test_a_platform_that_died_is_named(runner: CliRunner, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on now
        probe.bind(("127.0.0.1", 0))
        gcs = f"127.0.0.1:{probe.getsockname()[1]}"
    settings = load_settings()
    PlatformState(gcs, "http://d", "http://g", True, None, 0.0).save(settings.state_path)
    line = one_error_line(invoke(runner, "ls"))
    assert gcs in line and "not answering" in line and "`datapunk up`" in line


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("name: orders\nsource: {kind: queue}\n", "time_column: Field required"),
        (json.dumps({**GOOD, "key_by": ["nope"]}), "unknown columns ['nope']"),
        ("name: [unclosed\n", "not YAML"),
        ("- just\n- a list\n", "expected a mapping"),
    ],
)
def test_bad_topology_is_one_line_before_connecting(
    runner: CliRunner, tmp_path: Path, text: str, says: str
) -> None:
    path = write(tmp_path / "bad.yaml", text)
    line = one_error_line(invoke(runner, "deploy", str(path)))
    assert str(path) in line and "is invalid" in line and says in line


def test_missing_topology_file(runner: CliRunner, tmp_path: Path) -> None:
    line = one_error_line(invoke(runner, "deploy", str(tmp_path / "none.yaml")))
    assert "the file does not exist" in line


# --- output, over a stand-in for the platform ---------------------------------------------


class FakeControl:
    """What the commands call on ``StreamControl``; records deploys."""

    deployed: list[tuple[str, bool, str | None]] = []

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    async def deploy(
        self, topology: Any, *, fresh: bool = False, created_by: str | None = None
    ) -> dict[str, Any]:
        self.deployed.append((topology.name, fresh, created_by))
        return LIVE

    async def ls(self) -> list[dict[str, Any]]:
        return [{"name": "orders", "state": "running", "live": LIVE, "status": "running"}]

    async def status(self, name: str) -> dict[str, Any]:
        queue = {"ready": 9, "unacked": 4, "dead": 1, "max_ready": 100_000}
        return {"name": name, "state": "running", "live": LIVE, "queue": queue}

    async def stop(self, name: str) -> dict[str, Any]:
        return {"name": name, "state": "stopped"}

    async def tail(
        self, name: str, after: int = 0, outputs: list[str] | None = None, timeout_s: float = 0.0
    ) -> dict[str, Any]:
        entries = [{**ENTRY, "seq": n} for n in range(1, 5)]
        return {"cursor": 4, "missed": 0, "entries": entries}

    async def close(self) -> None:
        return None


@pytest.fixture
def platform(monkeypatch: pytest.MonkeyPatch) -> type[FakeControl]:
    monkeypatch.setattr(cli_stream, "join_platform", lambda settings: None)
    monkeypatch.setattr(actors.stream.control, "StreamControl", FakeControl)
    FakeControl.deployed = []
    return FakeControl


def ok(runner: CliRunner, *args: str) -> str:
    result = invoke(runner, *args)
    assert result.exit_code == 0, result.output
    output: str = result.stdout
    return output


def test_deploy_prints_status(
    runner: CliRunner, tmp_path: Path, platform: type[FakeControl]
) -> None:
    path = write(tmp_path / "orders.yaml", json.dumps(GOOD))
    out = ok(runner, "deploy", str(path), "--fresh")
    assert platform.deployed == [("orders", True, "cli")]
    assert "stream orders" in out and "running" in out


def test_ls_and_status_tables_and_json(runner: CliRunner, platform: type[FakeControl]) -> None:
    listed = ok(runner, "ls")
    for text in ("orders", "running", "1,500", "250.0", "1.5"):
        assert text in listed
    status = ok(runner, "status", "orders")
    for text in ("per_10s", "low_then_high", "6.5", "in-cluster queue", "100,000"):
        assert text in status
    assert json.loads(ok(runner, "status", "orders", "--json"))["queue"]["unacked"] == 4
    assert json.loads(ok(runner, "ls", "--json"))[0]["live"]["epoch"] == 12


def test_stop_and_tail(runner: CliRunner, platform: type[FakeControl]) -> None:
    assert "orders is stopped" in ok(runner, "stop", "orders")
    lines = ok(runner, "tail", "orders", "--limit", "2", "--json").splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [3, 4]
    table = ok(runner, "tail", "orders", "-o", "per_10s", "--limit", "1")
    assert "per_10s · epoch 12 · seq 4" in table and "total" in table
