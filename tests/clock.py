"""A clock tests move by hand: wall time (aware UTC) and a monotonic reading together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


class FakeClock:
    """``now()`` for ``KeyStore``, ``monotonic()`` for caches; ``advance`` moves both."""

    def __init__(self, start: datetime = START) -> None:
        self._wall = start
        self._mono = 1_000.0

    def now(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds
