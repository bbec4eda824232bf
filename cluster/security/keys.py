"""API keys: generation, SHA-256 digests and the ``KeyStore`` on the platform database.

A token is ``dp_`` plus 256 random bits. Only its SHA-256 digest is stored: a leaked
table grants nothing, and a fast hash suffices because the token itself has full
entropy (argon2 is for human passwords, whose entropy is low; per request it would
cost milliseconds). Lookup is by digest through a unique index.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.models import ApiKey
from cluster.db.store import PlatformStore
from cluster.errors import AuthenticationError, InvalidInputError, NotFoundError
from cluster.security.principal import Principal
from cluster.security.rbac import ALLOWED_ROLES, Role, parse_role

TOKEN_PREFIX = "dp_"  # noqa: S105 - a marker, not a secret
PREFIX_LENGTH = 10  # characters of the token kept for display: "dp_" + 7
MAX_NAME_LENGTH = 100
KeyStatus = Literal["active", "expired", "revoked"]


def digest(token: str) -> str:
    """The SHA-256 hex digest under which ``token`` is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_api_key() -> tuple[str, str]:
    """A new plaintext token (``dp_`` + 256 random bits, URL-safe) and its digest."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    return token, digest(token)


def _new_key_id() -> str:
    return "key_" + secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What may be shown about a key: everything but the token and its digest."""

    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    created_by: str | None

    def status(self, now: datetime) -> KeyStatus:
        """``revoked`` wins over ``expired``; otherwise ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _record(row: ApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        prefix=row.prefix,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_by=row.created_by,
    )


def _check_name(name: str) -> str:
    cleaned = name.strip()
    if not cleaned or len(cleaned) > MAX_NAME_LENGTH or not cleaned.isprintable():
        raise InvalidInputError(
            field="name", value=name, allowed=f"1 to {MAX_NAME_LENGTH} printable characters"
        )
    return cleaned


def _check_expiry(expires_in: timedelta | None) -> None:
    if expires_in is not None and expires_in <= timedelta(0):
        raise InvalidInputError(
            field="expires_in", value=str(expires_in), allowed="a positive duration, or none"
        )


_Records = list[ApiKeyRecord]


class KeyStore(PlatformStore):
    """Create, list, revoke and authenticate API keys in the ``api_keys`` table.

    ``now`` returns the current aware UTC time; it is the only clock this class reads.
    """

    table_name = ApiKey.__tablename__

    def __init__(
        self, session_factory: async_sessionmaker[AsyncSession], now: Callable[[], datetime]
    ) -> None:
        super().__init__(session_factory, now)

    async def create(
        self,
        role: Role | str,
        name: str | None = None,
        expires_in: timedelta | None = None,
        created_by: str | None = None,
    ) -> tuple[str, ApiKeyRecord]:
        """Mint a key; return its plaintext token (shown once, never stored) and record."""
        parsed_role = parse_role(role)
        _check_expiry(expires_in)
        token, token_digest = generate_api_key()
        now = self._now()
        row = ApiKey(
            id=_new_key_id(),
            name=_check_name(name if name is not None else f"{parsed_role.value} key"),
            role=parsed_role.value,
            digest=token_digest,
            prefix=token[:PREFIX_LENGTH],
            created_at=now,
            expires_at=None if expires_in is None else now + expires_in,
            revoked_at=None,
            created_by=created_by,
        )
        async with self._session() as session, session.begin():
            session.add(row)
        return token, _record(row)

    async def list(self, include_revoked: bool = False) -> _Records:
        """Keys oldest first; revoked ones only with ``include_revoked``."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        async with self._session() as session:
            rows = (await session.scalars(query)).all()
        return [_record(row) for row in rows]

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Revoke ``key_id`` (again is a no-op); ``NotFoundError`` if there is no such key."""
        async with self._session() as session, session.begin():
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFoundError(
                    kind="API key", name=key_id, fix="list keys with `datapunk keys ls --all`"
                )
            if row.revoked_at is None:
                row.revoked_at = self._now()
        return _record(row)

    async def authenticate(self, token: str) -> Principal:
        """The caller ``token`` identifies; ``AuthenticationError`` saying why not.

        The token is never part of a message: error text ends up in logs and responses.
        """
        if not token.startswith(TOKEN_PREFIX):
            raise AuthenticationError(
                f"malformed API key: Datapunk keys start with {TOKEN_PREFIX!r}", reason="malformed"
            )
        async with self._session() as session:
            row = await session.scalar(select(ApiKey).where(ApiKey.digest == digest(token)))
        if row is None:
            raise AuthenticationError(
                "unknown API key: no such key exists (mistyped, or from another installation); "
                f"create one with `datapunk keys create --role ROLE` (ROLE: {ALLOWED_ROLES})",
                reason="unknown",
            )
        record = _record(row)
        status = record.status(self._now())
        if status != "active":
            raise _inactive(record, status)
        return Principal(
            key_id=record.id, name=record.name, role=record.role, expires_at=record.expires_at
        )


def _inactive(record: ApiKeyRecord, status: KeyStatus) -> AuthenticationError:
    when = record.revoked_at if status == "revoked" else record.expires_at
    stamp = when.isoformat(timespec="seconds") if when else "?"
    verb = "was revoked" if status == "revoked" else "expired"
    return AuthenticationError(
        f"API key {record.id} ({record.name!r}) {verb} at {stamp}; "
        f"ask an admin for a new key (`datapunk keys create --role {record.role.value}`)",
        reason=status,
        key_id=record.id,
    )
