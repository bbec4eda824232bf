"""Turn a driver's connection failure into one line that names the reason and the fix.

Drivers raise very different things for the same problem (``ConnectionRefusedError``
from asyncio, ``InvalidCatalogNameError`` from asyncpg wrapped twice by SQLAlchemy,
``sqlite3.OperationalError``); this module walks the exception chain once and maps
what it finds to a ``ServiceUnavailableError`` a person can act on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from cluster.errors import PlatformStateError, ServiceUnavailableError
from cluster.settings import redact_url

SERVICE = "platform database"
_URL_KEY = "database_url (env DATAPUNK_DATABASE_URL)"
# SQLSTATE classes that mean "cannot use this server", not "this statement is wrong":
# connection exception, invalid authorization, invalid catalog, resources, shutdown.
_UNAVAILABLE_SQLSTATES = ("08", "28", "3D", "53", "57P")
_UNAVAILABLE_SQLITE = ("unable to open database file", "database is locked", "disk i/o error")
_MAX_REASON = 160


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (SQLAlchemy's ``orig``, ``__cause__``, ``__context__``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = getattr(current, "orig", None)
        wrapped = orig if isinstance(orig, BaseException) else None
        implicit = None if current.__suppress_context__ else current.__context__
        current = wrapped or current.__cause__ or implicit


def _sqlstate(exc: BaseException) -> str | None:
    for link in _chain(exc):
        state = getattr(link, "sqlstate", None) or getattr(link, "pgcode", None)
        if isinstance(state, str) and state:
            return state
    return None


def _first_line(exc: BaseException) -> str:
    """The innermost non-empty message, on one line, without SQLAlchemy's footer."""
    text = ""
    for link in _chain(exc):
        message = str(link).split("\n", 1)[0].strip()
        if message:
            text = message
    if not text:
        text = type(exc).__name__
    text = text.rstrip(".")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be used at all (as opposed to a bad query)."""
    for link in _chain(exc):
        if isinstance(link, OSError | TimeoutError):
            return True
        if isinstance(link, DBAPIError) and link.connection_invalidated:
            return True
    state = _sqlstate(exc)
    if state is not None:
        return state.startswith(_UNAVAILABLE_SQLSTATES)
    message = _first_line(exc).lower()
    return any(marker in message for marker in _UNAVAILABLE_SQLITE)


def is_missing_table(exc: BaseException) -> bool:
    """Whether ``exc`` says a table is absent: the schema was never migrated."""
    if _sqlstate(exc) == "42P01":
        return True
    message = _first_line(exc).lower()
    return "no such table" in message


def _parts(url: str) -> tuple[str, str, str, str]:
    """(host, port, user, database) of ``url``; blanks where the URL has none."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "", "", "", ""
    port = str(parsed.port or (5432 if parsed.get_backend_name() == "postgresql" else ""))
    return parsed.host or "", port, parsed.username or "", parsed.database or ""


def _reason_and_fix(exc: BaseException, url: str) -> tuple[str, str]:
    host, port, user, database = _parts(url)
    links = list(_chain(exc))
    state = _sqlstate(exc) or ""
    message = _first_line(exc)
    lowered = message.lower()
    if any(isinstance(link, socket.gaierror) for link in links):
        return f"could not resolve host {host!r}", f"correct the host name in {_URL_KEY}"
    if any(isinstance(link, ConnectionRefusedError) for link in links):
        return "connection refused", (
            f"start the database server on {host}:{port} or correct host/port in {_URL_KEY}; "
            "leave it unset to use the embedded SQLite file"
        )
    if any(isinstance(link, TimeoutError) for link in links):
        return "connection timed out", (
            f"check that {host}:{port} is reachable from this machine and the server is up"
        )
    if state == "28P01" or "password authentication failed" in lowered:
        return message, f"put the right user and password in {_URL_KEY}"
    if state == "3D000":
        return message, (
            f"create it (createdb -h {host} -p {port} -U {user or 'postgres'} {database}) "
            f"or point {_URL_KEY} at an existing database"
        )
    if state.startswith("28"):
        return message, f"create the role {user!r} on the server or fix the user in {_URL_KEY}"
    if "unable to open database file" in lowered:
        folder = Path(database).parent if database else Path(".")
        return f"unable to open {database or 'the database file'}", (
            f"make {folder} writable or set DATAPUNK_DATA_DIR to a writable directory"
        )
    return message, f"check {_URL_KEY} and that the database server is running"


def unavailable_error(url: str, exc: BaseException) -> ServiceUnavailableError:
    """A one-line ``ServiceUnavailableError`` for ``exc`` raised while using ``url``."""
    reason, fix = _reason_and_fix(exc, url)
    return ServiceUnavailableError(
        service=SERVICE, target=redact_url(url), reason=reason.replace("\n", " "), fix=fix
    )


def missing_schema_error(table: str) -> PlatformStateError:
    """The platform database has no ``table``: migrations were never applied."""
    return PlatformStateError(
        f"the platform database has no table {table!r}; run `datapunk db upgrade` first",
        table=table,
    )
