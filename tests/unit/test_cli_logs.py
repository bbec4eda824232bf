"""`datapunk logs` over a fake Ray session log folder: worker files as Ray writes them
(its own header lines, tracebacks, other libraries' text) with our JSON lines mixed in,
written by the real ``JsonFormatter``."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.cli_logs import LogTail, parse_line, session_log_dir
from cluster.logging import JsonFormatter, bind_request_id, reset_request_id
from cluster.settings import load_settings


def json_line(service: str, message: str, ts: str, request_id: str | None = None) -> str:
    """A line exactly as ``configure_logging``'s formatter writes it, at time ``ts``."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(service))
    logger = logging.getLogger(f"tests.unit.cli_logs.{service}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    token = bind_request_id(request_id)
    try:
        logger.warning(message, extra={"table": "orders"} if service == "lake" else {})
    finally:
        reset_request_id(token)
    record = json.loads(stream.getvalue())
    record["ts"] = ts  # fixed times, so the merge order is known
    return json.dumps(record) + "\n"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "worker-aa-01000000-100.err").write_text(
        ":job_id:01000000\n:actor_name:LakeActor\n"
        + json_line("lake", "commit done", "2026-11-26T10:00:02.000Z", "req-lake-1")
        + "Traceback (most recent call last):\n  File x\nValueError: not ours\n"
        + json_line("lake", "scan started", "2026-11-26T10:00:04.000Z")
    )
    (logs / "worker-bb-01000000-200.err").write_text(
        ":actor_name:ServeReplica:gateway:Gateway\n"
        + json_line("gateway", "request served", "2026-11-26T10:00:01.000Z", "req-gw-1")
        + '{"not": "a datapunk record"}\n'
        + json_line("gateway", "request refused", "2026-11-26T10:00:03.000Z", "req-gw-2")
    )
    (logs / "raylet.out").write_text(json_line("raylet", "never read", "2026-11-26T10:00:00Z"))
    return logs


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    return CliRunner()


def run(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, ["logs", *args], catch_exceptions=False)


def test_parse_line_keeps_only_datapunk_records() -> None:
    line = json_line("forge", "trial ended", "2026-11-26T10:00:00.000Z", "r1")
    record = parse_line(line)
    assert record is not None
    assert (record["service"], record["message"], record["request_id"]) == (
        "forge",
        "trial ended",
        "r1",
    )
    for other in (":job_id:01", "plain text", "{broken json", '{"ts": 1}', "[1, 2]"):
        assert parse_line(other) is None


def test_all_services_are_merged_by_time(runner: CliRunner, folder: Path) -> None:
    result = run(runner, "--dir", str(folder))
    assert result.exit_code == 0, result.output
    messages = [m for m in ("served", "commit", "refused", "scan") if m in result.stdout]
    assert messages == ["served", "commit", "refused", "scan"]
    order = [result.stdout.index(word) for word in messages]
    assert order == sorted(order)
    assert "req-gw-1" in result.stdout and "table=orders" in result.stdout
    assert "not ours" not in result.stdout and "never read" not in result.stdout


def test_one_service_and_last_n_lines(runner: CliRunner, folder: Path) -> None:
    result = run(runner, "gateway", "--lines", "1", "--dir", str(folder))
    assert result.exit_code == 0, result.output
    assert "request refused" in result.stdout
    assert "request served" not in result.stdout
    assert "lake" not in result.stdout


def test_list_counts_lines_per_service(runner: CliRunner, folder: Path) -> None:
    result = run(runner, "--list", "--dir", str(folder))
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if "│" in line}
    assert set(rows) - {"service"} == {"gateway", "lake"}
    assert " 2 " in rows["gateway"] and " 2 " in rows["lake"]


def test_tail_returns_only_complete_new_lines(folder: Path) -> None:
    tail = LogTail(folder, service="lake")
    assert [r["message"] for r in tail.poll()] == ["commit done", "scan started"]
    assert tail.poll() == []
    path = folder / "worker-aa-01000000-100.err"
    later = json_line("lake", "compaction", "2026-11-26T10:00:09.000Z")
    with path.open("a") as handle:  # half a line: still being written
        handle.write(later[:20])
    assert tail.poll() == []
    with path.open("a") as handle:
        handle.write(later[20:])
    assert [r["message"] for r in tail.poll()] == ["compaction"]
    # A worker started later: a new file, read from its first line.
    (folder / "worker-cc-02000000-300.err").write_text(
        json_line("lake", "new actor", "2026-11-26T10:00:10.000Z")
        + json_line("stream", "other service", "2026-11-26T10:00:10.000Z")
    )
    assert [r["message"] for r in tail.poll()] == ["new actor"]


def test_follow_prints_lines_appended_while_following(
    runner: CliRunner, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    appended = json_line("gateway", "arrived later", "2026-11-26T10:01:00.000Z")

    def sleep(_: float) -> None:  # the follow loop's wait: a worker writes meanwhile
        with (folder / "worker-bb-01000000-200.err").open("a") as handle:
            handle.write(appended)

    monkeypatch.setattr("cluster.cli_logs.time.sleep", sleep)
    result = run(
        runner, "gateway", "--follow", "--lines", "0", "--dir", str(folder), "--max-polls", "1"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("arrived later") == 1
    assert "request served" not in result.stdout  # --lines 0: no history


def test_default_folder_is_the_heads_session_logs(
    runner: CliRunner, folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPUNK_RAY__PORT", "6391")
    monkeypatch.setattr("cluster.ray_runtime.tempfile.gettempdir", lambda: str(tmp_path))
    expected = tmp_path / "datapunk-6391" / "session_latest" / "logs"
    assert session_log_dir(load_settings()) == expected
    # No platform started yet: one error line naming the folder and the fix.
    result = run(runner)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert str(expected) in result.stderr.replace("\n", "")
    assert "datapunk up" in result.stderr
    # Ray's layout: session_latest is a link to the newest session folder.
    session = tmp_path / "datapunk-6391" / "session_2026-11-26_10-00-00_000000_1"
    session.mkdir(parents=True)
    folder.rename(session / "logs")
    (tmp_path / "datapunk-6391" / "session_latest").symlink_to(session)
    result = run(runner, "lake")
    assert result.exit_code == 0, result.output
    assert "commit done" in result.stdout and "scan started" in result.stdout
