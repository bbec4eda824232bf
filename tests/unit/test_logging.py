"""JSON log lines carry the request id of the call being served."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest

from cluster.logging import (
    JsonFormatter,
    bind_request_id,
    configure_logging,
    current_request_id,
    new_request_id,
    reset_request_id,
)


class Capture:
    """A logger whose records are formatted by ``JsonFormatter`` into a buffer."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.stream = io.StringIO()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]


@pytest.fixture
def capture() -> Iterator[Capture]:
    logger = logging.getLogger("tests.unit.logging_probe")
    result = Capture(logger)
    handler = logging.StreamHandler(result.stream)
    handler.setFormatter(JsonFormatter(service="probe"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield result
    logger.removeHandler(handler)


def test_a_line_is_one_json_object_with_the_standard_fields(capture: Capture) -> None:
    capture.logger.info("hello %s", "world")
    [line] = capture.lines()
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["logger"] == "tests.unit.logging_probe"
    assert line["service"] == "probe"
    assert line["request_id"] is None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["ts"])


def test_bound_request_id_appears_and_is_reset(capture: Capture) -> None:
    token = bind_request_id("req-123")
    try:
        assert current_request_id() == "req-123"
        capture.logger.warning("inside")
    finally:
        reset_request_id(token)
    capture.logger.warning("outside")
    inside, outside = capture.lines()
    assert inside["request_id"] == "req-123"
    assert outside["request_id"] is None
    assert current_request_id() is None


def test_nested_binding_restores_the_outer_id(capture: Capture) -> None:
    outer = bind_request_id("outer")
    inner = bind_request_id("inner")
    capture.logger.info("a")
    reset_request_id(inner)
    capture.logger.info("b")
    reset_request_id(outer)
    assert [line["request_id"] for line in capture.lines()] == ["inner", "outer"]


async def test_concurrent_tasks_keep_their_own_request_id(capture: Capture) -> None:
    async def serve(request_id: str) -> None:
        token = bind_request_id(request_id)
        try:
            await asyncio.sleep(0)
            capture.logger.info("served")
        finally:
            reset_request_id(token)

    await asyncio.gather(serve("r1"), serve("r2"), serve("r3"))
    assert sorted(line["request_id"] for line in capture.lines()) == ["r1", "r2", "r3"]


def test_explicit_request_id_extra_wins(capture: Capture) -> None:
    token = bind_request_id("bound")
    try:
        capture.logger.info("x", extra={"request_id": "explicit"})
    finally:
        reset_request_id(token)
    assert capture.lines()[0]["request_id"] == "explicit"


def test_extras_are_included(capture: Capture) -> None:
    capture.logger.info(
        "request", extra={"path": "/x", "status": 404, "took": 0.5, "ok": False, "obj": {1, 2}}
    )
    [line] = capture.lines()
    assert (line["path"], line["status"], line["took"], line["ok"]) == ("/x", 404, 0.5, False)
    assert line["obj"] == repr({1, 2})  # anything else is its repr, never a crash


def test_exception_is_serialised_with_its_traceback(capture: Capture) -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        capture.logger.exception("failed")
    [line] = capture.lines()
    assert line["level"] == "ERROR"
    assert line["message"] == "failed"
    assert "Traceback" in line["exc"]
    assert "ValueError: boom" in line["exc"]


def test_new_request_ids_are_unique_hex() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_configure_logging_sends_json_for_our_packages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.__stderr__", stream)
    configure_logging("WARNING", service="svc")  # the unit conftest restores the loggers
    configure_logging("WARNING", service="svc")  # twice: still one handler
    logging.getLogger("cluster.something").warning("kept")
    logging.getLogger("actors.lake").info("below the level")
    assert len(logging.getLogger("cluster").handlers) == 1
    [line] = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert (line["message"], line["service"], line["logger"]) == (
        "kept",
        "svc",
        "cluster.something",
    )
