"""Unit tests run without Ray: any attempt to start or join a cluster fails loudly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

# Entry points (the CLI, actor shells) call configure_logging, which replaces these
# loggers' handlers and stops propagation; later tests' caplog would see nothing.
_CONFIGURED_LOGGERS = ("cluster", "actors", "serve_apps", "jobs", "ray.serve")


@pytest.fixture(autouse=True)
def _forbid_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def _refuse(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise RuntimeError("unit tests must not use Ray; move this test to tests/ray")

    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a hard dependency
        return
    monkeypatch.setattr(ray, "init", _refuse)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Undo what a test's call of ``configure_logging`` did to the package loggers."""
    saved = {}
    for name in _CONFIGURED_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.level, logger.propagate)
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
