"""Service cores and their shared shell, exercised as plain classes (no Ray)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from actors.base import ServiceCore
from actors.cortex.core import CortexCore
from actors.forge.core import ForgeCore
from actors.lake.core import LakeCore
from actors.shell import ServiceActorShell
from actors.stream.core import StreamCore
from cluster.errors import ConfigError
from cluster.logging import bind_request_id, current_request_id, reset_request_id
from cluster.pools import POOL_ACTORS, _actor_class
from cluster.settings import Settings, export_settings

CORES: dict[str, type[ServiceCore]] = {
    "lake": LakeCore,
    "stream": StreamCore,
    "cortex": CortexCore,
    "forge": ForgeCore,
}


class Clock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.value = start

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir)


@pytest.mark.parametrize(("service", "core_cls"), CORES.items())
def test_health_names_the_service_and_measures_uptime(
    settings: Settings, service: str, core_cls: type[ServiceCore]
) -> None:
    clock = Clock()
    core = core_cls(settings, index=3, now=clock)
    assert core.health() == {
        "service": service,
        "index": 3,
        "status": "ok",
        "pid": os.getpid(),
        "uptime_s": 0.0,
    }
    clock.value += 12.34567
    assert core.health()["uptime_s"] == 12.346


def test_started_at_is_read_once_from_the_injected_clock(settings: Settings) -> None:
    clock = Clock(start=50.0)
    core = ServiceCore(settings, index=0, now=clock)
    clock.value = 80.0
    assert core.started_at == 50.0
    assert core.health()["uptime_s"] == 30.0


@pytest.mark.parametrize("service", sorted(POOL_ACTORS))
def test_each_pool_actor_wraps_its_services_core(service: str) -> None:
    """The Ray class of a pool (not started here) runs the core of the same service."""
    assert _actor_class(service).core_cls is CORES[service]


class RecordingCore(ServiceCore):
    """Records the request id that was current while health() ran."""

    service = "recording"
    seen: list[str | None] = []

    def health(self) -> dict[str, Any]:
        RecordingCore.seen.append(current_request_id())
        return {**super().health(), "request_id": current_request_id()}


class RecordingShell(ServiceActorShell):
    core_cls = RecordingCore


@pytest.fixture
def shell(settings: Settings) -> RecordingShell:
    RecordingCore.seen = []
    return RecordingShell(export_settings(settings), index=2)


def test_shell_builds_the_core_from_exported_settings(
    shell: RecordingShell, settings: Settings
) -> None:
    assert isinstance(shell.core, RecordingCore)
    assert shell.core.index == 2
    assert shell.core.settings.data_path == settings.data_path


def test_ping_binds_the_request_id_while_the_core_runs(shell: RecordingShell) -> None:
    reply = shell.ping("req-42")
    assert reply["request_id"] == "req-42"
    assert (reply["service"], reply["index"], reply["status"]) == ("recording", 2, "ok")
    assert current_request_id() is None  # reset afterwards


def test_ping_restores_the_callers_request_id(shell: RecordingShell) -> None:
    token = bind_request_id("outer")
    try:
        shell.ping("inner")
        shell.ping()
        assert current_request_id() == "outer"
    finally:
        reset_request_id(token)
    assert RecordingCore.seen == ["inner", None]


def test_ping_resets_the_request_id_when_the_core_fails(settings: Settings) -> None:
    class Failing(ServiceCore):
        def health(self) -> dict[str, Any]:
            raise RuntimeError("core broke")

    class FailingShell(ServiceActorShell):
        core_cls = Failing

    shell = FailingShell(export_settings(settings), index=0)
    with pytest.raises(RuntimeError, match="core broke"):
        shell.ping("req-err")
    assert current_request_id() is None


def test_shell_refuses_bad_exported_settings(settings: Settings) -> None:
    values = export_settings(settings)
    values["pools"] = {"lake": -1}
    with pytest.raises(ConfigError, match=r"pools\.lake"):
        RecordingShell(values, index=0)
