"""Human passwords: the policy a new one must meet and argon2id hashing.

argon2id (``argon2-cffi``) because people choose low-entropy passwords: a stolen
table must cost an attacker memory and time per guess. Hashing runs in a worker
thread (argon2-cffi releases the GIL), so a sign-in never stalls the event loop.
When the configured parameters change, a hash made with the old ones is replaced at
the next successful sign-in (``needs_rehash``), the only moment the plaintext exists.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from cluster.errors import InvalidInputError
from cluster.security.auth_errors import WeakPasswordError
from cluster.settings import Settings

MIN_PASSWORD_LENGTH = 12
# A cap keeps hashing cost bounded (argon2 reads every byte); a passphrase fits easily.
MAX_PASSWORD_LENGTH = 1024
USERNAME_RULE = "1 to 100 characters: lower-case letters, digits, '.', '_', '@', '-'"
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,99}$")


def normalize_username(value: str) -> str:
    """``value`` trimmed and lower-cased ("Alice" and "alice" are one account)."""
    cleaned = value.strip().lower()
    if not _USERNAME.match(cleaned):
        raise InvalidInputError(field="username", value=value, allowed=USERNAME_RULE)
    return cleaned


def check_password(username: str, password: str) -> None:
    """Raise ``WeakPasswordError`` naming the broken rule; never echoes the password."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(
            reason=f"it has {len(password)} characters, at least {MIN_PASSWORD_LENGTH} are "
            "needed (a few unrelated words make a long one easy to remember)"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise WeakPasswordError(reason=f"it is longer than {MAX_PASSWORD_LENGTH} characters")
    if password.strip().casefold() == username.strip().casefold():
        raise WeakPasswordError(reason="it must not be the username")
    if not password.strip():
        raise WeakPasswordError(reason="it must not be only whitespace")


@dataclass(frozen=True, slots=True)
class HashParameters:
    """argon2id cost parameters (defaults: RFC 9106's second recommended option)."""

    time_cost: int = 3
    memory_kib: int = 65_536
    parallelism: int = 4

    @classmethod
    def from_settings(cls, settings: Settings) -> HashParameters:
        auth = settings.auth
        return cls(auth.argon2_time_cost, auth.argon2_memory_kib, auth.argon2_parallelism)


class Passwords:
    """Hash and verify passwords with one set of argon2id parameters."""

    def __init__(self, parameters: HashParameters | None = None) -> None:
        p = parameters or HashParameters()
        self._hasher = PasswordHasher(
            time_cost=p.time_cost, memory_cost=p.memory_kib, parallelism=p.parallelism
        )
        self._decoy: str | None = None

    async def hash(self, password: str) -> str:
        """The encoded argon2id hash (``$argon2id$v=19$m=...``) of ``password``."""
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, encoded: str, password: str) -> bool:
        """Whether ``password`` matches ``encoded``; a corrupt hash is a mismatch."""
        return await asyncio.to_thread(self._verify, encoded, password)

    def _verify(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, encoded: str) -> bool:
        """Whether ``encoded`` was made with other parameters than this hasher's."""
        try:
            return self._hasher.check_needs_rehash(encoded)
        except InvalidHashError:
            return True

    async def waste_time(self, password: str) -> None:
        """Spend what a real verification costs, for a username that does not exist,
        so response times do not tell which usernames are taken."""
        if self._decoy is None:
            self._decoy = await self.hash("decoy password, never matches")
        await self.verify(self._decoy, password)
