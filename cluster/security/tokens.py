"""Signed access and refresh tokens for human users (``pyjwt``, HS256).

An access token is short-lived (minutes) and verified without the database: its
signature, expiry and type, then (by the caller) whether its session was revoked.
A refresh token is long-lived, single use, and only good at the refresh endpoint,
where the session's current refresh ``jti`` decides whether it is fresh or a reuse.

The signing key comes from settings (``auth.signing_key``) or from a 0600 file under
the data directory, created on first use. Every gateway replica must use the same
key: on a multi-node cluster set it in settings (``DATAPUNK_AUTH__SIGNING_KEY``) or
put the data directory on shared storage.

Time is injected: pyjwt's own expiry checks read the system clock, so they are off
and this module checks ``exp`` against ``now()``.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import jwt

from cluster.errors import ConfigError, DatapunkError
from cluster.security.auth_errors import TokenError
from cluster.security.rbac import Role, parse_role
from cluster.settings import Settings

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32  # RFC 7518 section 3.2: an HS256 key at least as long as the hash
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
TokenKind = Literal["access", "refresh"]


def looks_like_jwt(value: str) -> bool:
    """Three dot-separated base64url parts: a JWT rather than a ``dp_`` API key."""
    return bool(_JWT_SHAPE.match(value))


def new_token_id() -> str:
    """A random ``jti`` (128 bits)."""
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says: who, which session, which token, how long.

    ``username`` and ``role`` are only in access tokens (None in refresh tokens).
    """

    kind: TokenKind
    subject: str
    session_id: str
    token_id: str
    issued_at: datetime
    expires_at: datetime
    username: str | None = None
    role: Role | None = None


class TokenSigner:
    """Issues and verifies HS256 tokens with one key, on an injected clock."""

    def __init__(
        self,
        key: bytes,
        now: Callable[[], datetime],
        *,
        access_ttl: timedelta = timedelta(minutes=15),
        refresh_ttl: timedelta = timedelta(days=7),
        issuer: str = "datapunk",
    ) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise ConfigError(
                key="auth.signing_key",
                value=f"<{len(key)} bytes>",
                allowed=f"at least {MIN_KEY_BYTES} bytes of random data",
            )
        self._key = key
        self._now = now
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        self._issuer = issuer

    def issue_access(
        self, *, subject: str, username: str, role: Role, session_id: str
    ) -> tuple[str, TokenClaims]:
        """A signed access token for ``subject`` in session ``session_id``, and its claims."""
        claims = self._claims("access", subject, session_id, self.access_ttl, username, role)
        return self._sign(claims), claims

    def issue_refresh(self, *, subject: str, session_id: str) -> tuple[str, TokenClaims]:
        """A signed refresh token for ``subject`` in session ``session_id``, and its claims."""
        claims = self._claims("refresh", subject, session_id, self.refresh_ttl, None, None)
        return self._sign(claims), claims

    def verify(self, token: str, kind: TokenKind) -> TokenClaims:
        """The claims of ``token`` if it is a genuine, unexpired token of ``kind``.

        Raises ``TokenError`` saying why not; the token is never part of the message.
        """
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],  # pinned: no "none", no algorithm confusion
                issuer=self._issuer,
                options={
                    "require": ["exp", "iat", "sub", "jti", "sid", "typ", "iss"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise TokenError(
                f"invalid token ({type(exc).__name__}): not a token this installation "
                "signed; log in again at POST /api/v1/auth/login",
                reason="invalid",
            ) from None
        claims = _parse(payload)
        if claims.kind != kind:
            hint = (
                "send refresh tokens only to POST /api/v1/auth/refresh"
                if claims.kind == "refresh"
                else "the refresh endpoint takes the refresh token, not the access token"
            )
            raise TokenError(
                f"a {claims.kind} token was sent where a {kind} token is expected; {hint}",
                reason="wrong_type",
            )
        if claims.expires_at <= self._now():
            raise TokenError(
                f"{kind} token expired at {claims.expires_at.isoformat(timespec='seconds')}; "
                + (
                    "get a new one at POST /api/v1/auth/refresh"
                    if kind == "access"
                    else "log in again at POST /api/v1/auth/login"
                ),
                reason="expired",
            )
        return claims

    def _claims(
        self,
        kind: TokenKind,
        subject: str,
        session_id: str,
        ttl: timedelta,
        username: str | None,
        role: Role | None,
    ) -> TokenClaims:
        # Whole seconds: JWT times are integers, and the claims returned must equal
        # what a later verify reads back.
        issued = self._now().astimezone(UTC).replace(microsecond=0)
        return TokenClaims(
            kind=kind,
            subject=subject,
            session_id=session_id,
            token_id=new_token_id(),
            issued_at=issued,
            expires_at=issued + ttl,
            username=username,
            role=role,
        )

    def _sign(self, claims: TokenClaims) -> str:
        payload: dict[str, Any] = {
            "iss": self._issuer,
            "sub": claims.subject,
            "sid": claims.session_id,
            "jti": claims.token_id,
            "typ": claims.kind,
            "iat": int(claims.issued_at.timestamp()),
            "exp": int(claims.expires_at.timestamp()),
        }
        if claims.username is not None and claims.role is not None:
            payload["name"] = claims.username
            payload["role"] = claims.role.value
        return jwt.encode(payload, self._key, algorithm=ALGORITHM)


def _parse(payload: dict[str, Any]) -> TokenClaims:
    try:
        kind = payload["typ"]
        if kind not in ("access", "refresh"):
            raise ValueError(f"unknown token type {kind!r}")
        role = parse_role(payload["role"]) if kind == "access" else None
        return TokenClaims(
            kind=kind,
            subject=str(payload["sub"]),
            session_id=str(payload["sid"]),
            token_id=str(payload["jti"]),
            issued_at=datetime.fromtimestamp(int(payload["iat"]), UTC),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            username=str(payload["name"]) if kind == "access" else None,
            role=role,
        )
    except (KeyError, TypeError, ValueError, OverflowError, DatapunkError) as exc:
        # Signed with our key yet unreadable: a token from an incompatible version.
        raise TokenError(
            f"token claims are not what this version issues ({type(exc).__name__}); "
            "log in again at POST /api/v1/auth/login",
            reason="invalid",
        ) from None


# ---- the signing key -------------------------------------------------------------------


def load_or_create_key(path: Path) -> bytes:
    """The signing key in ``path``, created (64 random bytes, mode 0600) if missing.

    Creation writes a private temporary file and hard-links it into place, so two
    processes starting at once agree on one key and none reads a half-written file.
    A key file others can read is refused: it would let them mint tokens.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(64) + "\n")
            # Another process may have won the race: then its key is the one to use.
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            key="auth.signing_key_file",
            value=str(path),
            allowed=f"a path Datapunk can create and write ({exc.strerror})",
        ) from None
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(
            key="auth.signing_key_file",
            value=str(path),
            allowed=f"a file only its owner can read (mode is {mode:o}); run `chmod 600 {path}`",
        )
    key = path.read_text(encoding="utf-8").strip().encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            key="auth.signing_key_file",
            value=str(path),
            allowed=f"at least {MIN_KEY_BYTES} characters of key material; delete the file "
            "to have a new key created (every session then has to log in again)",
        )
    return key


def signer_from_settings(settings: Settings, now: Callable[[], datetime]) -> TokenSigner:
    """The signer the settings describe: ``auth.signing_key``, else the key file."""
    auth = settings.auth
    secret = auth.signing_key
    key = (
        secret.get_secret_value().encode("utf-8")
        if secret is not None
        else load_or_create_key(settings.signing_key_path)
    )
    return TokenSigner(
        key,
        now,
        access_ttl=timedelta(seconds=auth.access_token_ttl_s),
        refresh_ttl=timedelta(seconds=auth.refresh_token_ttl_s),
    )
