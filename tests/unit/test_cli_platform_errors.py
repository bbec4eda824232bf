"""`datapunk up/down/status` fail with one line and exit 2, before any Ray process starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import psutil
import pytest
from typer.testing import CliRunner

from cluster import platform
from cluster.cli import app
from cluster.platform_state import PlatformState

UNREACHABLE_PG = "postgresql+asyncpg://nobody@127.0.0.1:1/x"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"


def free_port() -> int:
    """A port nothing listens on now (the OS's pick), clear of a developer's platform."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Env:
    """This test's data dir and ports, as ``DATAPUNK_*`` variables."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.ray_port = free_port()
        self.values = {
            "DATAPUNK_DATA_DIR": str(data_dir),
            "DATAPUNK_RAY__PORT": str(self.ray_port),
            "DATAPUNK_RAY__DASHBOARD_PORT": str(free_port()),
            "DATAPUNK_GATEWAY__PORT": str(free_port()),
        }

    @property
    def state_file(self) -> Path:
        return self.data_dir / "platform.json"

    def assert_no_ray_started(self) -> None:
        assert not self.state_file.exists()
        ray_temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"datapunk-{self.ray_port}"
        assert not ray_temp.exists()
        # `ray start --port=P`, gcs_server `--gcs_server_port=P`, raylet `--gcs-address=H:P`
        ours = (f"={self.ray_port}", f":{self.ray_port}")
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if any("ray" in arg for arg in args):
                assert not any(arg.endswith(ours) for arg in args), args


@pytest.fixture
def env(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.chdir(tmp_path)  # no configs/datapunk.yaml here
    result = Env(data_dir)
    for name, value in result.values.items():
        monkeypatch.setenv(name, value)
    return result


@pytest.fixture
def runner(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    def refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise AssertionError("preflight should have failed before the Ray head starts")

    monkeypatch.setattr(platform, "start_head", refuse)
    yield CliRunner()
    env.assert_no_ray_started()


def invoke(runner: CliRunner, *args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def one_error_line(result: Any) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout.strip() == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    line: str = lines[0]
    return line


@pytest.mark.parametrize(
    ("value", "allowed"), [("abc", "valid integer"), ("70000", "less than or equal to 65535")]
)
def test_bad_setting_is_one_line_naming_key_and_value(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch, value: str, allowed: str
) -> None:
    monkeypatch.setenv("DATAPUNK_GATEWAY__PORT", value)
    line = one_error_line(invoke(runner, "up"))
    assert f"gateway.port (env DATAPUNK_GATEWAY__PORT)={value!r}" in line
    assert allowed in line


def test_missing_config_file_is_one_line(runner: CliRunner, tmp_path: Path) -> None:
    line = one_error_line(invoke(runner, "--config", str(tmp_path / "nope.yaml"), "up"))
    assert "nope.yaml" in line


def test_unreachable_database_fails_in_preflight(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPUNK_DATABASE_URL", UNREACHABLE_PG)
    line = one_error_line(invoke(runner, "up"))
    assert f"platform database at {UNREACHABLE_PG}" in line
    assert "connection refused" in line


def test_unreachable_redis_fails_in_preflight(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATAPUNK_REDIS_URL", UNREACHABLE_REDIS)
    line = one_error_line(invoke(runner, "up"))
    assert "Redis" in line
    assert UNREACHABLE_REDIS in line
    assert "connection refused" in line
    assert "DATAPUNK_REDIS_URL" in line
    assert line.count("unreachable") == 1 and line.count("Fix:") == 1, line


def test_status_when_nothing_runs_says_to_run_up(runner: CliRunner) -> None:
    for args in (("status",), ("status", "--json")):
        line = one_error_line(invoke(runner, *args))
        assert "not running" in line
        assert "datapunk up" in line


def test_down_when_nothing_runs_is_a_no_op(runner: CliRunner) -> None:
    result = invoke(runner, "down")
    assert result.exit_code == 0, result.output
    assert "not running" in result.stdout
    assert result.stderr == ""


def test_down_clears_a_stale_state_file(runner: CliRunner, env: Env) -> None:
    PlatformState(
        gcs_address=f"127.0.0.1:{env.ray_port}",
        dashboard_url="http://127.0.0.1:1",
        gateway_url="http://127.0.0.1:1",
        started_head=True,
        marker="no-process-carries-this-marker",
        started_at=0.0,
    ).save(env.state_file)
    result = invoke(runner, "down")
    assert result.exit_code == 0, result.output
    assert "0 Ray processes ended" in result.stdout
    assert not env.state_file.exists()
    assert "not running" in invoke(runner, "down").stdout


def test_real_datapunk_up_prints_no_traceback(env: Env, tmp_path: Path) -> None:
    """The console script itself, as a person runs it: one line, exit 2, nothing started."""
    script = Path(sys.executable).with_name("datapunk")
    assert script.is_file(), f"install the project: {script} is missing"
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("DATAPUNK_")}
    child_env.update(env.values, DATAPUNK_REDIS_URL=UNREACHABLE_REDIS)
    proc = subprocess.run(
        [str(script), "up"],
        cwd=tmp_path,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "Redis" in lines[0]
    env.assert_no_ray_started()
