"""API keys: generation, SHA-256 digests and the ``KeyStore`` on the platform database.

A token is ``dp_`` plus 256 random bits. Only its SHA-256 digest is stored: a leaked
table grants nothing, and a fast hash suffices because the token itself has full
entropy (argon2 is for human passwords, whose entropy is low; per request it would
cost milliseconds). Lookup is by digest through a unique index.

Rotation (``KeyStore.rotate``) issues a successor and shortens the old key's
``expires_at`` to the end of the overlap; the two rows point at each other
(``replaced_by``/``replaces``) so a refusal can say which key to use instead.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cluster.db.models import ApiKey
from cluster.db.store import PlatformStore
from cluster.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PlatformStateError,
)
from cluster.security.grant_store import load_grants
from cluster.security.principal import Principal
from cluster.security.rbac import ALLOWED_ROLES, Role, parse_role

TOKEN_PREFIX = "dp_"  # noqa: S105 - a marker, not a secret
PREFIX_LENGTH = 10  # characters of the token kept for display: "dp_" + 7
MAX_NAME_LENGTH = 100
# "rotating": replaced, still working until its overlap ends; "rotated": past that.
KeyStatus = Literal["active", "rotating", "rotated", "expired", "revoked"]
WORKING_STATUSES = ("active", "rotating")
# Called inside the rotation's transaction with (session, old key id, new key id), so
# what hangs off a key elsewhere (scoped grants) moves to its successor atomically.
RotationHook = Callable[[AsyncSession, str, str], Awaitable[None]]


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
    replaced_by: str | None = None
    replaces: str | None = None
    rotated_at: datetime | None = None

    def status(self, now: datetime) -> KeyStatus:
        """``revoked`` wins; a rotated key is ``rotating`` until its overlap ends, then
        ``rotated``; otherwise ``expired`` past its expiry, else ``active``."""
        if self.revoked_at is not None:
            return "revoked"
        ended = self.expires_at is not None and self.expires_at <= now
        if self.replaced_by is not None:
            return "rotated" if ended else "rotating"
        return "expired" if ended else "active"


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
        replaced_by=row.replaced_by,
        replaces=row.replaces,
        rotated_at=row.rotated_at,
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
    ``on_rotate`` hooks run inside each rotation's transaction (see ``RotationHook``).
    """

    table_name = ApiKey.__tablename__

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        now: Callable[[], datetime],
        on_rotate: Sequence[RotationHook] = (),
    ) -> None:
        super().__init__(session_factory, now)
        self._on_rotate = tuple(on_rotate)

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

    async def rotate(
        self, key_id: str, *, overlap: timedelta, actor: str | None
    ) -> tuple[ApiKeyRecord, str]:
        """Issue a successor of ``key_id``; return its record and plaintext token (once).

        The successor has the same name and role (and lifetime, counted from now); the
        old key keeps working until ``now + overlap`` (never past its own expiry), so
        clients can switch without downtime, then authentication refuses it saying it
        was rotated. A revoked, expired or already rotated key cannot be rotated.
        """
        if overlap < timedelta(0):
            raise InvalidInputError(
                field="overlap", value=str(overlap), allowed="a duration >= 0 (0 = at once)"
            )
        now = self._now()
        token, token_digest = generate_api_key()
        async with self._session() as session, session.begin():
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFoundError(
                    kind="API key", name=key_id, fix="list keys with `datapunk keys ls --all`"
                )
            _check_rotatable(_record(row), now)
            lifetime = None if row.expires_at is None else row.expires_at - row.created_at
            successor = ApiKey(
                id=_new_key_id(),
                name=row.name,
                role=row.role,
                digest=token_digest,
                prefix=token[:PREFIX_LENGTH],
                created_at=now,
                expires_at=None if lifetime is None else now + lifetime,
                revoked_at=None,
                created_by=actor,
                replaces=row.id,
            )
            end = now + overlap
            old_end = end if row.expires_at is None else min(row.expires_at, end)
            # Conditional on "not rotated, not revoked": of two concurrent rotations of
            # one key exactly one succeeds, on SQLite as on PostgreSQL.
            changed = await session.execute(
                update(ApiKey)
                .where(
                    ApiKey.id == row.id,
                    ApiKey.replaced_by.is_(None),
                    ApiKey.revoked_at.is_(None),
                )
                .values(replaced_by=successor.id, rotated_at=now, expires_at=old_end)
                .execution_options(synchronize_session=False)
            )
            if cast("CursorResult[Any]", changed).rowcount != 1:
                raise PlatformStateError(
                    f"API key {key_id} was rotated or revoked meanwhile; "
                    "see `datapunk keys ls --all`",
                    key_id=key_id,
                )
            session.add(successor)
            for hook in self._on_rotate:
                await hook(session, row.id, successor.id)
        return _record(successor), token

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
            # Scoped grants travel with the principal (and the auth cache keeps them).
            grants = () if row is None else await load_grants(session, row.id)
        if row is None:
            raise AuthenticationError(
                "unknown API key: no such key exists (mistyped, or from another installation); "
                f"create one with `datapunk keys create --role ROLE` (ROLE: {ALLOWED_ROLES})",
                reason="unknown",
            )
        record = _record(row)
        status = record.status(self._now())
        if status not in WORKING_STATUSES:
            raise _inactive(record, status)
        return Principal(
            key_id=record.id,
            name=record.name,
            role=record.role,
            expires_at=record.expires_at,
            grants=grants,
        )


def _stamp(when: datetime | None) -> str:
    return when.isoformat(timespec="seconds") if when else "?"


def _check_rotatable(record: ApiKeyRecord, now: datetime) -> None:
    status = record.status(now)
    if status == "rotating":
        raise PlatformStateError(
            f"API key {record.id} was already rotated at {_stamp(record.rotated_at)} "
            f"(replaced by {record.replaced_by}); rotate {record.replaced_by} instead",
            key_id=record.id,
        )
    if status != "active":
        raise PlatformStateError(
            f"API key {record.id} is {status} and cannot be rotated; create a new key with "
            f"`datapunk keys create --role {record.role.value}`",
            key_id=record.id,
        )


def _inactive(record: ApiKeyRecord, status: KeyStatus) -> AuthenticationError:
    if status == "rotated":
        return AuthenticationError(
            f"API key {record.id} ({record.name!r}) was rotated at {_stamp(record.rotated_at)} "
            f"and stopped working at {_stamp(record.expires_at)}, when its overlap ended; "
            f"use its replacement {record.replaced_by}",
            reason="rotated",
            key_id=record.id,
        )
    when = record.revoked_at if status == "revoked" else record.expires_at
    verb = "was revoked" if status == "revoked" else "expired"
    return AuthenticationError(
        f"API key {record.id} ({record.name!r}) {verb} at {_stamp(when)}; "
        f"ask an admin for a new key (`datapunk keys create --role {record.role.value}`)",
        reason=status,
        key_id=record.id,
    )
