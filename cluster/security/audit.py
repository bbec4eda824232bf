"""The audit log's core: entries, their hash chain, its verification, the write queue.

Every mutating call and every denied call through the gateway becomes an entry: who
(key or user id, name, role), what (method, route template, permission), the target
object, the result (status, outcome), the request id, the time and the client address.
Never a token, a body or a query string (a WebSocket's ``?api_key=`` lives there).

**The chain.** Entry ``n`` stores ``hash = sha256(prev_hash || canonical_json(entry))``
where ``prev_hash`` is entry ``n-1``'s hash (64 zeros before the first) and the JSON
holds every other field, ``seq`` included, with sorted keys and no spaces. Changing a
field breaks that entry's hash; deleting or reordering rows breaks ``seq`` continuity or
the ``prev_hash`` link; cutting rows off the end disagrees with the head row. Someone who
can rewrite the whole table *and* the head can forge a consistent chain: export the head
hash elsewhere (``datapunk audit verify --json``) to anchor it.

**Off the request's critical path.** The gateway audits a call after its response has
been sent, through ``AuditQueue``: a bounded in-memory queue drained in batches by one
task. Auditing before the response (or inside the mutation's transaction) would put a
serialised database write, the chain's lock, on every mutating request of every replica;
instead an entry can be lost only if the process dies with entries queued (at shutdown
the queue is drained). A full queue blocks the submitter briefly (``block_s``), then
counts the entry as dropped and logs an error: never a silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

logger = logging.getLogger(__name__)

GENESIS_HASH = "0" * 64
Outcome = Literal["ok", "denied", "error"]
DENIED_STATUSES = frozenset({401, 403, 429})
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Column widths of ``audit_log``: values are cut to fit *before* hashing, so the hash
# covers exactly what the database keeps.
_LIMITS = {
    "request_id": 128,
    "actor": 100,
    "actor_kind": 16,
    "actor_name": 100,
    "role": 32,
    "method": 16,
    "route": 300,
    "permission": 64,
    "target": 2000,
    "outcome": 16,
    "client": 64,
}


def outcome_of(status: int, denied: bool = False) -> Outcome:
    """``denied`` for 401/403/429 (or a hidden object's 404), ``error`` for other 4xx/5xx."""
    if denied or status in DENIED_STATUSES:
        return "denied"
    return "error" if status >= 400 else "ok"


def should_audit(method: str, status: int, denied: bool = False, read_only: bool = False) -> bool:
    """Mutating calls always; any other call only when it was denied. ``read_only`` marks
    a POST that changes nothing (a prediction, a query with its body): audited only when
    denied, so the hottest routes do not serialise on the audit chain."""
    mutating = method.upper() in MUTATING_METHODS and not read_only
    return mutating or outcome_of(status, denied) == "denied"


def _clean(value: str | None, limit: int) -> str | None:
    """Printable text cut to ``limit`` (control characters would not survive every DB)."""
    if value is None:
        return None
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text[:limit]


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError(f"naive audit time {at.isoformat()}; pass an aware UTC time")
    return at.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class AuditDraft:
    """An entry before it has a place in the chain."""

    at: datetime
    method: str
    route: str
    status: int
    outcome: Outcome
    request_id: str | None = None
    actor: str | None = None
    actor_kind: str | None = None
    actor_name: str | None = None
    role: str | None = None
    permission: str | None = None
    target: str | None = None
    client: str | None = None

    def cleaned(self) -> AuditDraft:
        """This draft with every text field fitted to its column, time in UTC."""
        changes: dict[str, Any] = {"at": _utc(self.at), "status": int(self.status)}
        for name, limit in _LIMITS.items():
            changes[name] = _clean(getattr(self, name), limit)
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """A chained entry, as stored."""

    seq: int
    prev_hash: str
    hash: str
    draft: AuditDraft

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, time as ISO 8601."""
        body = hashed_fields(self.seq, self.draft)
        return {**body, "prev_hash": self.prev_hash, "hash": self.hash}


def hashed_fields(seq: int, draft: AuditDraft) -> dict[str, Any]:
    """What the hash covers: every field but the hashes, time at microsecond precision."""
    body = asdict(draft)
    body["at"] = _utc(draft.at).isoformat(timespec="microseconds")
    body["seq"] = seq
    return body


def canonical_json(fields: Mapping[str, Any]) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte string per entry, on every machine."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def entry_hash(prev_hash: str, seq: int, draft: AuditDraft) -> str:
    """``sha256(prev_hash || canonical_json(entry))`` as hex."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(canonical_json(hashed_fields(seq, draft)))
    return digest.hexdigest()


def chain(drafts: Iterable[AuditDraft], last_seq: int, last_hash: str) -> list[AuditRecord]:
    """``drafts`` chained after the entry (``last_seq``, ``last_hash``)."""
    records = []
    prev, seq = last_hash, last_seq
    for draft in drafts:
        seq += 1
        fitted = draft.cleaned()
        digest = entry_hash(prev, seq, fitted)
        records.append(AuditRecord(seq, prev, digest, fitted))
        prev = digest
    return records


# --- verification ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking the chain: ok, or the first broken entry and why."""

    ok: bool
    checked: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "checked": self.checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "broken_seq": self.broken_seq,
            "problem": self.problem,
        }


class ChainVerifier:
    """Feed stored entries in ``seq`` order; it stops at the first one that does not fit."""

    def __init__(self) -> None:
        self.checked = 0
        self._seq = 0
        self._hash = GENESIS_HASH
        self.broken_seq: int | None = None
        self.problem: str | None = None

    @property
    def broken(self) -> bool:
        return self.broken_seq is not None

    def _fail(self, seq: int, problem: str) -> bool:
        self.broken_seq, self.problem = seq, problem
        return False

    def feed(self, record: AuditRecord) -> bool:
        """Check the next stored entry; False (and remember why) at the first break."""
        if self.broken:
            return False
        expected = self._seq + 1
        if record.seq != expected:
            return self._fail(
                expected,
                f"entry {expected} is missing: the next stored entry is {record.seq} "
                "(rows deleted or renumbered)",
            )
        if record.prev_hash != self._hash:
            return self._fail(
                record.seq,
                f"entry {record.seq} does not link to entry {self._seq} "
                "(rows deleted, inserted or reordered)",
            )
        if entry_hash(record.prev_hash, record.seq, record.draft) != record.hash:
            return self._fail(
                record.seq, f"entry {record.seq} was changed: its hash does not match its fields"
            )
        self.checked += 1
        self._seq, self._hash = record.seq, record.hash
        return True

    def finish(self, head_seq: int, head_hash: str) -> ChainReport:
        """The report, after checking the last entry against the head row."""
        if not self.broken and (head_seq, head_hash) != (self._seq, self._hash):
            if head_seq > self._seq:
                self._fail(self._seq + 1, f"entries {self._seq + 1}..{head_seq} are missing")
            else:
                self._fail(head_seq, f"the chain's head ({head_seq}) does not match its last entry")
        return ChainReport(
            ok=not self.broken,
            checked=self.checked,
            head_seq=head_seq,
            head_hash=head_hash,
            broken_seq=self.broken_seq,
            problem=self.problem,
        )


def verify_records(records: Iterable[AuditRecord], head_seq: int, head_hash: str) -> ChainReport:
    """Walk ``records`` (in ``seq`` order) and compare the end with the head."""
    verifier = ChainVerifier()
    for record in records:
        if not verifier.feed(record):
            break
    return verifier.finish(head_seq, head_hash)


# --- the write queue -------------------------------------------------------------------


class AuditSink(Protocol):
    """Where batches go: ``AuditStore.append``."""

    async def append(self, drafts: Sequence[AuditDraft]) -> Sequence[AuditRecord]: ...


class AuditQueue:
    """A bounded queue of drafts, drained in batches into a sink by one background task.

    ``submit`` never raises: when the queue is full it waits up to ``block_s``, then
    counts the draft in ``dropped`` and logs an error. A failing sink is retried with
    backoff (the batch is kept); the queue fills meanwhile and overflow is counted.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        max_pending: int = 10_000,
        block_s: float = 0.25,
        batch_size: int = 500,
        retry_s: float = 0.5,
        max_retry_s: float = 5.0,
    ) -> None:
        if max_pending < 1 or batch_size < 1 or block_s < 0:
            raise ValueError(f"need max_pending, batch_size >= 1 and block_s >= 0: {block_s}")
        self._sink = sink
        self._max_pending = max_pending
        self._block_s = block_s
        self._batch_size = batch_size
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._queue: asyncio.Queue[AuditDraft] | None = None
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return 0 if self._queue is None else self._queue.qsize()

    def _started(self) -> asyncio.Queue[AuditDraft]:
        # Created on first use, inside the loop that serves requests.
        if self._queue is None:
            self._queue = asyncio.Queue(self._max_pending)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(self._queue))
        return self._queue

    async def submit(self, draft: AuditDraft) -> bool:
        """Queue ``draft``; False when it had to be dropped (counted and logged)."""
        queue = self._started()
        try:
            queue.put_nowait(draft)
            return True
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(queue.put(draft), self._block_s)
            return True
        except TimeoutError:
            self.dropped += 1
            logger.error(
                "audit queue full (%d entries pending): dropped the entry for %s %s (%d); "
                "%d dropped so far; is the platform database reachable?",
                queue.qsize(),
                draft.method,
                draft.route,
                draft.status,
                self.dropped,
            )
            return False

    async def flush(self) -> None:
        """Wait until everything submitted so far is written."""
        if self._queue is not None:
            self._started()
            await self._queue.join()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued (within ``timeout_s``), then stop the task."""
        if self._queue is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flush(), timeout_s)
            if self.pending:
                logger.error("audit queue closed with %d entries unwritten", self.pending)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _drain(self, queue: asyncio.Queue[AuditDraft]) -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < self._batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            await self._write(batch)
            for _ in batch:
                queue.task_done()

    async def _write(self, batch: list[AuditDraft]) -> None:
        delay = self._retry_s
        while True:
            try:
                await self._sink.append(batch)
            except Exception:
                self.failures += 1
                logger.exception(
                    "writing %d audit entries failed; retrying in %.1f s", len(batch), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
            else:
                self.written += len(batch)
                return
