"""Unit tests run without Ray: any attempt to start or join a cluster fails loudly."""

from __future__ import annotations

from typing import Any, NoReturn

import pytest


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise RuntimeError("unit tests must not use Ray; move this test to tests/ray")

    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return
    monkeypatch.setattr(ray, "init", _refuse)
