"""Time-based one-time passwords (RFC 6238, via ``pyotp``) and recovery codes.

Pure functions: the caller passes the time and the last accepted step, and stores
what comes back. A code is accepted for the current 30-second step and one step on
either side (clock drift between phone and server), and only when its step is newer
than the last one accepted for the account: a code seen once, by an attacker
looking over a shoulder or a proxy log, cannot be used again within its window
(RFC 6238 section 5.2).

Recovery codes carry 80 random bits each, so a SHA-256 digest (looked up by value)
is enough to store them: argon2 is for low-entropy secrets people choose.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import pyotp

STEP_S = 30
DIGITS = 6
WINDOW_STEPS = 1
RECOVERY_CODE_COUNT = 10
_RECOVERY_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # base32: no 0/1/8/9 to misread
_RECOVERY_GROUPS = 4
_RECOVERY_GROUP_LENGTH = 4  # 16 base32 characters = 80 bits


@dataclass(frozen=True, slots=True)
class Enrollment:
    """What a user needs to set up an authenticator app, shown once.

    ``secret`` is the base32 TOTP seed (the server keeps it; the app gets it through
    ``provisioning_uri``, usually as a QR code); ``recovery_codes`` are plaintext,
    their digests are what is stored.
    """

    secret: str
    provisioning_uri: str
    recovery_codes: tuple[str, ...]

    def __repr__(self) -> str:  # never print the seed or the codes by accident
        return f"Enrollment(provisioning_uri=..., recovery_codes=<{len(self.recovery_codes)}>)"


def new_secret() -> str:
    """A fresh 160-bit base32 TOTP seed."""
    return pyotp.random_base32()


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://totp/...`` URI authenticator apps read (from a QR code)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).provisioning_uri(
        name=account, issuer_name=issuer
    )


def step_at(now: datetime) -> int:
    """The TOTP time step (counter) ``now`` falls in."""
    return int(now.timestamp()) // STEP_S


def code_at(secret: str, now: datetime) -> str:
    """The code an authenticator app shows at ``now`` (for tests and tooling)."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S).generate_otp(step_at(now))


def matching_step(
    secret: str, code: str, now: datetime, last_step: int | None, window: int = WINDOW_STEPS
) -> int | None:
    """The step within ``±window`` of ``now`` whose code is ``code``, if newer than
    ``last_step``; None otherwise (wrong code, or one already used: a replay).

    The caller must record the returned step as the new ``last_step`` atomically.
    """
    cleaned = code.replace(" ", "").strip()
    if len(cleaned) != DIGITS or not cleaned.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=STEP_S)
    current = step_at(now)
    for step in range(current - window, current + window + 1):
        if last_step is not None and step <= last_step:
            continue
        # Constant-time comparison: the check must not leak how many digits matched.
        if hmac.compare_digest(totp.generate_otp(step), cleaned):
            return step
    return None


def new_recovery_codes(count: int = RECOVERY_CODE_COUNT) -> tuple[str, ...]:
    """``count`` codes like ``k3vd-q7xa-mm2p-a6zr``, 80 random bits each."""
    return tuple(_recovery_code() for _ in range(count))


def _recovery_code() -> str:
    groups = (
        "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(_RECOVERY_GROUP_LENGTH))
        for _ in range(_RECOVERY_GROUPS)
    )
    return "-".join(groups)


def normalize_recovery_code(code: str) -> str:
    """A typed code as stored: lower case, without dashes or spaces."""
    return code.replace("-", "").replace(" ", "").strip().lower()


def recovery_digest(code: str) -> str:
    """The SHA-256 hex digest a recovery code is stored (and looked up) under."""
    return hashlib.sha256(normalize_recovery_code(code).encode("utf-8")).hexdigest()


def enroll(account: str, issuer: str) -> Enrollment:
    """A new seed, its provisioning URI and a fresh set of recovery codes."""
    secret = new_secret()
    return Enrollment(
        secret=secret,
        provisioning_uri=provisioning_uri(secret, account, issuer),
        recovery_codes=new_recovery_codes(),
    )
