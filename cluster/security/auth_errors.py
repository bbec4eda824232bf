"""Typed errors of human sign-in: locked accounts, missing second factor, weak passwords.

They live beside the accounts code rather than in ``cluster/errors.py`` because only
the identity modules raise them; each is still a ``DatapunkError`` the gateway maps to
a status and the one error body. No message ever contains a password, a one-time code
or a token: error text ends up in logs and responses.
"""

from __future__ import annotations

from datetime import datetime

from cluster.errors import AuthenticationError, DatapunkError


def _stamp(when: datetime) -> str:
    return when.isoformat(timespec="seconds")


class InvalidCredentialsError(AuthenticationError):
    """Wrong username, password, one-time code or recovery code (never says which part)."""

    def __init__(self, message: str = "", **fields: object) -> None:
        super().__init__(
            message
            or "invalid username or password; after repeated failures the account is locked "
            "for a while",
            **fields,
        )


class MfaRequiredError(AuthenticationError):
    """The password was right, but the account needs a second factor too."""

    code = "mfa_required"

    def __init__(self, *, username: str) -> None:
        super().__init__(
            f"user {username!r} has multi-factor authentication on: send 'otp' (the 6-digit "
            "code of the authenticator app) or 'recovery_code' with the password",
            username=username,
        )


class AccountLockedError(DatapunkError):
    """Too many failed sign-ins: the account refuses every attempt until ``until``."""

    code = "account_locked"
    http_status = 423

    def __init__(self, *, username: str, until: datetime) -> None:
        super().__init__(
            f"account {username!r} is locked after repeated failed sign-ins until "
            f"{_stamp(until)}; wait until then or ask an admin to run "
            f"`datapunk users unlock {username}`",
            username=username,
            until=_stamp(until),
        )


class AccountDisabledError(AuthenticationError):
    """The account exists but an admin disabled it."""

    def __init__(self, *, username: str) -> None:
        super().__init__(
            f"account {username!r} is disabled; ask an admin to re-enable it or create a new one",
            username=username,
            reason="disabled",
        )


class WeakPasswordError(DatapunkError):
    """A new password breaks the policy; the message says which rule, never the password."""

    code = "invalid_input"
    http_status = 422

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"password refused: {reason}", reason=reason)


class TokenError(AuthenticationError):
    """An access or refresh token that is malformed, forged, expired or revoked."""

    def __init__(self, message: str, *, reason: str, **fields: object) -> None:
        super().__init__(message, reason=reason, **fields)
