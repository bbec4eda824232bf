"""Structured JSON logging with the request id of the call being served.

Library code only calls ``logging.getLogger(__name__)``; entry points (CLI, jobs,
Serve app builders, actor constructors) call ``configure_logging`` once.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import traceback
import uuid
from collections.abc import Iterable
from typing import Any

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "datapunk_request_id", default=None
)
_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


# --- secrets hygiene: what must never reach a log line, an error body or `status` ------

# Token-shaped text, whoever's it is: bearer tokens, Datapunk API keys (dp_ + 43
# characters; the 10-character display prefix stays readable), JWTs, URL passwords
# and password-like query parameters.
_TOKEN_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{16,}"), r"\1***"),
    (re.compile(r"\bdp_[A-Za-z0-9_-]{20,}"), "dp_***"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "***"),
    (re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):\S*@"), r"\1:***@"),
    (re.compile(r"(?i)([?&](?:password|pass|pwd|secret|token)=)[^&\s\"']*"), r"\1***"),
)
_MIN_SECRET_LENGTH = 4  # shorter "secrets" would blank out ordinary words
_known_secrets: set[str] = set()


def remember_secrets(values: Iterable[str]) -> None:
    """Add configured secret values (passwords, signing keys) for ``redact`` to hide."""
    _known_secrets.update(v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET_LENGTH)


def redact(text: str) -> str:
    """``text`` with every known secret value and every token-like string replaced."""
    if not isinstance(text, str) or not text:
        return text
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, "***")
    for pattern, replacement in _TOKEN_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(value: Any) -> Any:
    """``redact`` applied to every string inside dicts, lists and tuples (a JSON report)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Rewrites a record's message, string extras and exception text through ``redact``.

    Installed on the handler ``configure_logging`` sets up, so it runs for every record
    of the package loggers whatever code logged it (an exception message quoting a
    database URL, a header dumped while debugging).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # bad %-args: keep the template, drop the args
            message, record.args = str(record.msg), None
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        for key, value in list(vars(record).items()):
            if key not in _STD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        if record.exc_info and record.exc_text is None:
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)))
        return True


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
        # Again on the whole line: extras are repr()-ed above, past the filter's reach.
        return redact(json.dumps(body, default=str))


def configure_logging(level: str = "INFO", service: str = "datapunk") -> None:
    """Send JSON lines to stderr for the ``cluster``/``actors``/``serve_apps``/``jobs`` loggers."""
    # sys.__stderr__, not sys.stderr: Serve replaces sys.stderr in replicas with a
    # stream into its own logger, which would swallow or re-wrap our JSON lines. The
    # original fd 2 is the worker's .err file in Ray's session log folder.
    handler = logging.StreamHandler(sys.__stderr__ or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(RedactingFilter())
    for name in ("cluster", "actors", "serve_apps", "jobs"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
