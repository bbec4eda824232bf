"""Turn a low-level network failure into the short reason a person can act on.

Client libraries wrap the socket error they hit in their own exception types
(``redis.ConnectionError``, ``aiormq.AMQPConnectionError``, ``requests.ConnectionError``),
sometimes as ``__cause__``, sometimes only in the message text. Every adapter wants the
same one-line answer ('connection refused', 'timed out', 'host name not found'), so the
digging lives here once.
"""

from __future__ import annotations

import socket

CONNECTION_REFUSED = "connection refused"
TIMED_OUT = "timed out"
HOST_NOT_FOUND = "host name not found"

# Matched against messages when the original OSError was flattened into text
# (requests/urllib3 do this), lowest common denominator across platforms.
_TEXT_MARKERS: tuple[tuple[str, str], ...] = (
    ("connection refused", CONNECTION_REFUSED),
    ("errno 111", CONNECTION_REFUSED),
    ("connect call failed", CONNECTION_REFUSED),
    ("name or service not known", HOST_NOT_FOUND),
    ("nodename nor servname", HOST_NOT_FOUND),
    ("temporary failure in name resolution", HOST_NOT_FOUND),
    ("getaddrinfo failed", HOST_NOT_FOUND),
    ("timed out", TIMED_OUT),
    ("timeout", TIMED_OUT),
)
_MAX_CHAIN = 16  # exception chains are short; the bound only guards against cycles


def describe_network_error(exc: BaseException) -> str | None:
    """The network reason behind ``exc`` (or its causes), or None when it is not one.

    Exception types are checked before message text, and the whole chain before
    text, so a refused connection that a library reports as a 'timeout' while
    retrying is still called refused.
    """
    chain = _chain(exc)
    for item in chain:
        if isinstance(item, ConnectionRefusedError):
            return CONNECTION_REFUSED
        if isinstance(item, socket.gaierror):
            return HOST_NOT_FOUND
    for item in chain:
        if isinstance(item, TimeoutError):  # asyncio.TimeoutError is this class on 3.11+
            return TIMED_OUT
    for item in chain:
        text = str(item).lower()
        for marker, reason in _TEXT_MARKERS:
            if marker in text:
                return reason
    return None


def first_line(exc: BaseException, limit: int = 160) -> str:
    """``exc`` as one short line: its message, else its class name."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_CHAIN:
        item = todo.pop(0)
        if any(item is s for s in seen):
            continue
        seen.append(item)
        # Some libraries keep the root cause only in args (urllib3's MaxRetryError.reason).
        todo.extend(a for a in item.args if isinstance(a, BaseException))
        reason = getattr(item, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
        for linked in (item.__cause__, item.__context__):
            if linked is not None:
                todo.append(linked)
    return seen
