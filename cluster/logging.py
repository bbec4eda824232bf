"""Structured JSON logging with the request id of the call being served.

Library code only calls ``logging.getLogger(__name__)``; entry points (CLI, jobs,
Serve app builders, actor constructors) call ``configure_logging`` once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
import traceback
import uuid
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "datapunk_request_id", default=None
)
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Make ``request_id`` current for this task; return the token to reset it."""
    return _request_id.set(request_id)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, extras."""

    def __init__(self, service: str = "datapunk") -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or _request_id.get(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and key not in body and not key.startswith("_"):
                body[key] = value if isinstance(value, str | int | float | bool) else repr(value)
        if record.exc_info:
            body["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(body, default=str)


def configure_logging(level: str = "INFO", service: str = "datapunk") -> None:
    """Send JSON lines to stderr for the ``cluster``/``actors``/``serve_apps``/``jobs`` loggers."""
    # sys.__stderr__, not sys.stderr: Serve replaces sys.stderr in replicas with a
    # stream into its own logger, which would swallow or re-wrap our JSON lines. The
    # original fd 2 is the worker's .err file in Ray's session log folder.
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    for name in ("cluster", "actors", "serve_apps", "jobs"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
