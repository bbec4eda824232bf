"""The audit log on the platform database: serialised appends, queries, verification.

**One linear chain across replicas.** An append first bumps the head row
(``UPDATE audit_head SET seq = seq + n ... RETURNING seq, hash``). On PostgreSQL that
``UPDATE`` takes the head's row lock until the transaction ends, so concurrent appenders
(other tasks, other gateway replicas, the CLI) queue behind it and each reads the head the
previous one committed; on SQLite it takes the database's write lock at once (a plain
``SELECT`` first would start a read transaction whose later upgrade can fail with
"database is locked"). The entries' ``seq`` is the primary key, so even a bug could
not store two entries at one place in the chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cluster.db.models import AuditEntry, AuditHead
from cluster.db.store import PlatformStore, upsert_insert
from cluster.errors import InvalidInputError
from cluster.security.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditRecord,
    ChainReport,
    ChainVerifier,
    Outcome,
    chain,
)

HEAD_ID = 1
VERIFY_PAGE = 1_000
MAX_LIST = 10_000
OUTCOMES = ("ok", "denied", "error")
_DRAFT_FIELDS = (
    "at",
    "method",
    "route",
    "status",
    "outcome",
    "request_id",
    "actor",
    "actor_kind",
    "actor_name",
    "role",
    "permission",
    "target",
    "client",
)


def _row(record: AuditRecord) -> dict[str, Any]:
    fields = {name: getattr(record.draft, name) for name in _DRAFT_FIELDS}
    return {**fields, "seq": record.seq, "prev_hash": record.prev_hash, "hash": record.hash}


def _record(row: AuditEntry) -> AuditRecord:
    fields = {name: getattr(row, name) for name in _DRAFT_FIELDS}
    fields["outcome"] = cast(Outcome, row.outcome)
    return AuditRecord(row.seq, row.prev_hash, row.hash, AuditDraft(**fields))


class AuditStore(PlatformStore):
    """Append to, list and verify the hash-chained ``audit_log``."""

    table_name = AuditEntry.__tablename__

    async def _claim(self, session: AsyncSession, count: int) -> tuple[int, str]:
        """Lock the head, move its ``seq`` on by ``count``; the (seq, hash) before."""
        bump = (
            update(AuditHead)
            .where(AuditHead.id == HEAD_ID)
            .values(seq=AuditHead.seq + count)
            .returning(AuditHead.seq, AuditHead.hash)
        )
        head = (await session.execute(bump)).one_or_none()
        if head is None:  # tables made without the migration's seed row
            seed = upsert_insert(session)(AuditHead).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH)
            await session.execute(seed.on_conflict_do_nothing())
            head = (await session.execute(bump)).one()
        return int(head.seq) - count, str(head.hash)

    async def append(self, drafts: Sequence[AuditDraft]) -> list[AuditRecord]:
        """Chain ``drafts`` after the head and store them, in one transaction."""
        if not drafts:
            return []
        async with self._session() as session, session.begin():
            last_seq, last_hash = await self._claim(session, len(drafts))
            records = chain(drafts, last_seq, last_hash)
            await session.execute(insert(AuditEntry), [_row(r) for r in records])
            await session.execute(
                update(AuditHead).where(AuditHead.id == HEAD_ID).values(hash=records[-1].hash)
            )
        return records

    async def head(self) -> tuple[int, str]:
        """The last ``seq`` and ``hash`` (0 and the genesis hash when empty)."""
        async with self._session() as session:
            row = (
                await session.execute(
                    select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == HEAD_ID)
                )
            ).one_or_none()
        return (0, GENESIS_HASH) if row is None else (int(row.seq), str(row.hash))

    async def list(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        who: str | None = None,
        outcome: str | None = None,
        after_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = True,
    ) -> list[AuditRecord]:
        """Entries filtered by time, actor (id or name) and outcome; newest first by default."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidInputError(field="limit", value=limit, allowed=f"1 to {MAX_LIST}")
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidInputError(field="result", value=outcome, allowed=", ".join(OUTCOMES))
        query = select(AuditEntry)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        if until is not None:
            query = query.where(AuditEntry.at < until)
        if who:
            query = query.where(or_(AuditEntry.actor == who, AuditEntry.actor_name == who))
        if outcome is not None:
            query = query.where(AuditEntry.outcome == outcome)
        if after_seq is not None:
            query = query.where(AuditEntry.seq > after_seq)
        order = AuditEntry.seq.desc() if newest_first else AuditEntry.seq.asc()
        async with self._session() as session:
            rows = (await session.execute(query.order_by(order).limit(limit))).scalars().all()
        return [_record(row) for row in rows]

    async def verify(self, page: int = VERIFY_PAGE) -> ChainReport:
        """Walk the chain up to the head read at the start; the first break, if any.

        Entries appended while it runs (past that head) are left for the next run.
        """
        head_seq, head_hash = await self.head()
        verifier = ChainVerifier()
        last = 0
        while not verifier.broken:
            query = (
                select(AuditEntry)
                .where(AuditEntry.seq > last, AuditEntry.seq <= head_seq)
                .order_by(AuditEntry.seq)
                .limit(page)
            )
            async with self._session() as session:
                rows = (await session.execute(query)).scalars().all()
            if not rows:
                break
            for row in rows:
                if not verifier.feed(_record(row)):
                    break
            last = rows[-1].seq
        return verifier.finish(head_seq, head_hash)
