"""Optimistic concurrency: retry a whole table operation when its commit loses a race.

Iceberg commits are compare-and-swap on the table's metadata pointer: a writer whose base
snapshot is no longer current gets ``CommitFailedException`` and nothing of its commit is
visible. ``run_with_retries`` then waits (jittered exponential backoff, ``sleep`` and
``rng`` injected) and runs the *whole* operation again on a freshly loaded table, so an
upsert re-reads the rows it matches and no update is lost. Data files written by a lost
attempt are orphans until maintenance removes them (``lake.orphan_grace_s``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pyiceberg.exceptions import CommitFailedException

from actors.lake.errors import CommitConflictError

logger = logging.getLogger(__name__)
T = TypeVar("T")
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a lost commit is retried."""

    retries: int
    base_s: float = 0.05
    max_s: float = 2.0


@dataclass(frozen=True)
class CommitResult:
    """What a write committed.

    ``rows`` counts the rows the write added (appended, or upserted: updated + inserted);
    ``rows_deleted`` those it removed; ``attempts`` is 1 unless commits lost races.
    ``snapshot_id`` is the table's current snapshot after the write (unchanged, or
    ``None`` for an empty table, when there was nothing to commit).
    """

    table: str
    snapshot_id: int | None
    rows: int
    attempts: int
    rows_deleted: int = 0
    rows_updated: int = 0
    rows_inserted: int = 0


def backoff_s(attempt: int, policy: RetryPolicy, rng: random.Random) -> float:
    """Wait before retry number ``attempt`` (1-based): "equal jitter" exponential backoff.

    Half the capped exponential is fixed, half random, so writers that collided spread out
    without any of them retrying immediately.
    """
    cap = min(policy.max_s, policy.base_s * 2 ** (attempt - 1))
    return cap / 2 + rng.uniform(0, cap / 2)


def run_with_retries(
    table: str,
    operation: Callable[[], T],
    policy: RetryPolicy,
    *,
    sleep: Sleep,
    rng: random.Random,
) -> tuple[T, int]:
    """Run ``operation`` until its commit lands; return its result and the attempts used.

    Only ``CommitFailedException`` (the commit certainly did not land) is retried; any
    other error, including an unknown commit state, propagates at once.
    """
    attempt = 1
    while True:
        try:
            return operation(), attempt
        except CommitFailedException as exc:
            if attempt > policy.retries:
                raise CommitConflictError(
                    table=table, attempts=attempt, reason=_first_line(exc)
                ) from exc
            wait = backoff_s(attempt, policy, rng)
            logger.info(
                "commit to %s lost a race (attempt %d of %d), retrying in %.3f s",
                table,
                attempt,
                policy.retries + 1,
                wait,
            )
            sleep(wait)
            attempt += 1


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
