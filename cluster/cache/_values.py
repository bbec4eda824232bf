"""Argument rules both cache implementations share, so they cannot drift apart."""

from __future__ import annotations

import math
import re

from cluster.errors import InvalidInputError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Redis accepts exactly this for INCRBY (no sign '+', no leading zeros, no spaces),
# and the memory implementation must refuse what Redis refuses.
_REDIS_INTEGER = re.compile(rb"0|-?[1-9][0-9]{0,18}")


def check_ttl(ttl_s: float | None) -> None:
    """Refuse ttls that Redis would refuse or silently turn into 'never'."""
    if ttl_s is None:
        return
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise InvalidInputError(
            field="ttl_s", value=ttl_s, allowed="a number of seconds, or None for no expiry"
        )
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise InvalidInputError(
            field="ttl_s",
            value=ttl_s,
            allowed="a positive, finite number of seconds, or None for no expiry",
        )


def ttl_ms(ttl_s: float) -> int:
    """Milliseconds for Redis PX/PEXPIRE; at least 1 so a tiny ttl still expires."""
    return max(1, round(ttl_s * 1000))


def as_bytes(value: bytes | bytearray | memoryview) -> bytes:
    """A private bytes copy of ``value``; str and numbers are refused, not encoded."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise TypeError(
        f"cache values are bytes, got {type(value).__name__}; encode first "
        "(str: .encode(), numbers: str(n).encode() or use incr)"
    )


def check_amount(amount: int) -> None:
    """``incr`` amounts are 64-bit ints, as Redis INCRBY requires."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidInputError(field="amount", value=amount, allowed="an int")
    if not INT64_MIN <= amount <= INT64_MAX:
        raise InvalidInputError(field="amount", value=amount, allowed="a 64-bit signed int")


def parse_counter(key: str, raw: bytes) -> int:
    """The integer stored at ``key``, with Redis's strictness."""
    if _REDIS_INTEGER.fullmatch(raw):
        number = int(raw)
        if INT64_MIN <= number <= INT64_MAX:
            return number
    raise not_a_counter(key)


def not_a_counter(key: str) -> InvalidInputError:
    return InvalidInputError(
        field=f"cache key {key!r}",
        value="<non-integer value>",
        allowed="a decimal 64-bit integer for incr; delete the key or use another one",
    )


def counter_overflow(key: str, amount: int) -> InvalidInputError:
    return InvalidInputError(
        field=f"incr amount for {key!r}",
        value=amount,
        allowed="a change that keeps the counter within 64-bit signed range",
    )
