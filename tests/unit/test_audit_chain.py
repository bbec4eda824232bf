"""The hash-chained audit log: the chain itself, the store on SQLite, the write queue, the
gateway's middleware, ``GET /api/v1/audit`` and ``datapunk audit``."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from cluster.cli import app as cli_app
from cluster.db.engine import create_engine, session_factory
from cluster.security.audit import (
    GENESIS_HASH,
    AuditDraft,
    AuditQueue,
    AuditRecord,
    canonical_json,
    chain,
    entry_hash,
    outcome_of,
    should_audit,
    verify_records,
)
from cluster.security.audit_store import AuditStore
from cluster.security.grant_store import GrantStore
from cluster.security.keys import KeyStore
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from tests.clock import FakeClock
from tests.contracts.audit_store import AuditStoreContract, draft
from tests.unit.gateway_support import authenticator, client, error_of, key_store

# --- the chain, pure -------------------------------------------------------------------


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_hash_is_sha256_of_prev_and_canonical_entry() -> None:
    import hashlib

    clock = FakeClock()
    one = draft(1, clock)
    fields = {
        **{k: getattr(one, k) for k in one.__dataclass_fields__},
        "at": one.at.isoformat(timespec="microseconds"),
        "seq": 1,
    }
    expected = hashlib.sha256(GENESIS_HASH.encode() + canonical_json(fields)).hexdigest()
    assert entry_hash(GENESIS_HASH, 1, one) == expected
    assert chain([one], 0, GENESIS_HASH)[0].hash == expected


def test_every_field_is_covered_by_the_hash() -> None:
    clock = FakeClock()
    one = draft(1, clock).cleaned()
    base = entry_hash(GENESIS_HASH, 1, one)
    changes: dict[str, Any] = {
        "status": 201,
        "actor": "key_x",
        "target": "table:a.b",
        "client": "1.2.3.4",
        "request_id": "other",
        "at": one.at.replace(microsecond=1),
    }
    for name, value in changes.items():
        assert entry_hash(GENESIS_HASH, 1, replace(one, **{name: value})) != base, name
    assert entry_hash(GENESIS_HASH, 2, one) != base  # its place in the chain too


def _records(count: int) -> list[AuditRecord]:
    clock = FakeClock()
    return chain([draft(n, clock) for n in range(count)], 0, GENESIS_HASH)


def test_verify_accepts_a_whole_chain_and_names_each_kind_of_break() -> None:
    records = _records(5)
    head = (5, records[-1].hash)
    assert verify_records(records, *head).ok
    changed = [*records[:2], replace(records[2], draft=replace(records[2].draft, status=500))]
    assert verify_records([*changed, *records[3:]], *head).broken_seq == 3
    assert verify_records([*records[:1], *records[2:]], *head).broken_seq == 2
    swapped = [records[0], replace(records[2], seq=2), replace(records[1], seq=3), *records[3:]]
    assert verify_records(swapped, *head).broken_seq == 2
    assert verify_records(records[:3], *head).broken_seq == 4


@pytest.mark.parametrize(
    ("method", "status", "denied", "audited", "outcome"),
    [
        ("GET", 200, False, False, "ok"),
        ("GET", 404, False, False, "error"),
        ("GET", 404, True, True, "denied"),  # a hidden object
        ("GET", 401, False, True, "denied"),
        ("GET", 403, False, True, "denied"),
        ("GET", 429, False, True, "denied"),
        ("POST", 201, False, True, "ok"),
        ("DELETE", 500, False, True, "error"),
        ("PATCH", 422, False, True, "error"),
    ],
)
def test_what_is_audited(
    method: str, status: int, denied: bool, audited: bool, outcome: str
) -> None:
    assert should_audit(method, status, denied) is audited
    assert outcome_of(status, denied) == outcome


def test_read_only_posts_are_audited_only_when_denied() -> None:
    # A prediction or a query is a POST that changes nothing: auditing each would put the
    # chain's lock on the hottest routes.
    assert not should_audit("POST", 200, read_only=True)
    assert should_audit("POST", 403, read_only=True)
    assert should_audit("POST", 401, read_only=True)

    from serve_apps.gateway.audit_middleware import READ_ONLY_KEY
    from serve_apps.gateway.routes_lake import lake_router
    from serve_apps.gateway.routes_predict import predict_router

    marked = {
        route.path
        for router in (lake_router(None, Path(".")), predict_router(None))  # type: ignore[arg-type]
        for route in router.routes
        if (getattr(route, "openapi_extra", None) or {}).get(READ_ONLY_KEY)
    }
    assert marked == {"/lake/tables/{name}/query", "/lake/sql", "/models/{name}/predict"}


# --- the store on SQLite ---------------------------------------------------------------


class TestAuditStoreOnSqlite(AuditStoreContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)


# --- the queue -------------------------------------------------------------------------


@dataclass
class SlowSink:
    """A sink that waits for ``gate`` and can fail its first ``failures`` batches."""

    gate: asyncio.Event
    failures: int = 0
    batches: list[list[AuditDraft]] | None = None

    async def append(self, drafts: Sequence[AuditDraft]) -> Sequence[AuditRecord]:
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("database down")
        if self.batches is None:
            self.batches = []
        self.batches.append(list(drafts))
        return []


async def test_queue_overflow_blocks_briefly_then_counts_and_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    sink = SlowSink(asyncio.Event())
    queue = AuditQueue(sink, max_pending=3, block_s=0.01, batch_size=1)
    caplog.set_level(logging.ERROR, logger="cluster.security.audit")
    results = [await queue.submit(draft(n, clock)) for n in range(6)]
    # Three fill the queue; the fourth waits until the drain task takes one (and blocks
    # in the sink); the last two find it full for block_s and are dropped.
    assert results == [True, True, True, True, False, False]
    assert queue.dropped == 2
    assert "audit queue full" in caplog.text
    sink.gate.set()
    await queue.flush()
    assert queue.written == results.count(True)
    assert queue.pending == 0
    await queue.close()


async def test_queue_retries_a_failing_sink_without_losing_the_batch() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    gate.set()
    sink = SlowSink(gate, failures=2)
    queue = AuditQueue(sink, retry_s=0.01, max_retry_s=0.02)
    for n in range(4):
        assert await queue.submit(draft(n, clock))
    await asyncio.wait_for(queue.flush(), 5)
    assert queue.failures == 2
    assert [len(b) for b in sink.batches or []] in ([4], [1, 3])
    assert queue.written == 4
    await queue.close()


# --- through the gateway ---------------------------------------------------------------


@dataclass
class Audited:
    http: httpx.AsyncClient
    keys: dict[Role, str]
    key_ids: dict[Role, str]
    queue: AuditQueue
    store: AuditStore

    def headers(self, role: Role) -> dict[str, str]:
        return {"X-API-Key": self.keys[role]}

    async def entries(self) -> list[AuditRecord]:
        await self.queue.flush()
        return await self.store.list(newest_first=False)


@pytest.fixture
async def audited(data_dir: Path) -> AsyncIterator[Audited]:
    settings = Settings(data_dir=data_dir)
    clock = FakeClock()
    async with key_store(settings, clock) as keys:
        engine = create_engine(settings)
        try:
            created = {role: await keys.create(role) for role in Role}
            sessions = session_factory(engine)
            store = AuditStore(sessions, clock.now)
            queue = AuditQueue(store)
            deps = GatewayDeps(
                authenticator=authenticator(keys, clock),
                key_store=keys,
                grant_store=GrantStore(sessions, clock.now),
                audit=queue,
                audit_store=store,
            )
            async with client(create_app(deps)) as http:
                yield Audited(
                    http,
                    {r: token for r, (token, _) in created.items()},
                    {r: record.id for r, (_, record) in created.items()},
                    queue,
                    store,
                )
            await queue.close()
        finally:
            await engine.dispose()


async def test_denied_calls_are_audited_reads_are_not(audited: Audited) -> None:
    http = audited.http
    assert (await http.get("/api/v1/whoami")).status_code == 401
    assert (await http.get("/api/v1/whoami", headers={"X-API-Key": "dp_bogus"})).status_code == 401
    assert (
        await http.get("/api/v1/keys", headers=audited.headers(Role.ANALYST))
    ).status_code == 403
    ok = await http.get("/api/v1/whoami", headers=audited.headers(Role.ANALYST))
    assert ok.status_code == 200
    entries = await audited.entries()
    assert [(e.draft.status, e.draft.outcome) for e in entries] == [
        (401, "denied"),
        (401, "denied"),
        (403, "denied"),
    ]
    anonymous, _, analyst = (e.draft for e in entries)
    assert (anonymous.actor, anonymous.route, anonymous.method) == (
        None,
        "/api/v1/whoami",
        "GET",
    )
    assert anonymous.client == "127.0.0.1"
    assert anonymous.request_id and len(anonymous.request_id) == 32
    assert analyst.actor == audited.key_ids[Role.ANALYST]
    assert (analyst.role, analyst.permission) == ("analyst", "keys:manage")
    report = await audited.store.verify()
    assert (report.ok, report.checked) == (True, 3)


async def test_mutating_calls_are_audited_with_who_what_and_target(audited: Audited) -> None:
    admin = audited.headers(Role.ADMIN)
    target = audited.key_ids[Role.SERVICE]
    reply = await audited.http.put(
        f"/api/v1/keys/{target}/grants",
        json={"grants": [{"permission": "lake.table:write", "scope": "table:sales.a"}]},
        headers={**admin, "X-Request-ID": "req-grant-1"},
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["restricted"] is True
    [entry] = await audited.entries()
    assert entry.draft.request_id == "req-grant-1"
    assert (entry.draft.method, entry.draft.route) == ("PUT", "/api/v1/keys/{key_id}/grants")
    assert entry.draft.actor == audited.key_ids[Role.ADMIN]
    assert (entry.draft.permission, entry.draft.target) == ("keys:manage", f"key_id={target}")
    assert (entry.draft.status, entry.draft.outcome) == (200, "ok")


async def test_a_secret_never_reaches_the_audit_log(audited: Audited) -> None:
    token = audited.keys[Role.ANALYST]
    await audited.http.post("/api/v1/keys", json={"role": "admin"}, headers={"X-API-Key": token})
    created = await audited.http.post(
        "/api/v1/keys", json={"role": "analyst"}, headers=audited.headers(Role.ADMIN)
    )
    new_token = created.json()["key"]
    dumped = json.dumps([e.as_dict() for e in await audited.entries()])
    assert token not in dumped
    assert new_token not in dumped


async def test_get_audit_needs_audit_read_and_lists_entries(audited: Audited) -> None:
    http = audited.http
    denied = await http.get("/api/v1/audit", headers=audited.headers(Role.ENGINEER))
    assert denied.status_code == 403
    assert "audit:read" in error_of(denied)["message"]
    await audited.queue.flush()
    reply = await http.get(
        "/api/v1/audit", params={"result": "denied"}, headers=audited.headers(Role.ADMIN)
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert [e["route"] for e in body["entries"]] == ["/api/v1/audit"]
    assert body["entries"][0]["role"] == "engineer"
    assert body["head_seq"] == 1
    verified = await http.get("/api/v1/audit/verify", headers=audited.headers(Role.ADMIN))
    assert verified.json()["ok"] is True


async def test_audit_counters_on_metrics(audited: Audited) -> None:
    await audited.http.get("/api/v1/whoami")
    await audited.queue.flush()
    text_ = (await audited.http.get("/metrics")).text
    assert "datapunk_audit_written_total 1.0" in text_
    assert "datapunk_audit_dropped_total 0.0" in text_


# --- datapunk audit --------------------------------------------------------------------


def test_cli_audit_ls_and_verify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    settings = Settings(data_dir=tmp_path / "state")
    clock = FakeClock()

    async def seed() -> None:
        async with key_store(settings, clock):
            engine = create_engine(settings)
            try:
                store = AuditStore(session_factory(engine), clock.now)
                await store.append([draft(n, clock) for n in range(3)])
                await store.append([draft(9, clock, status=403, outcome="denied", actor="key_z")])
            finally:
                await engine.dispose()

    async def tamper() -> None:
        engine = create_engine(settings)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE audit_log SET status = 299 WHERE seq = 2"))
        finally:
            await engine.dispose()

    asyncio.run(seed())
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["audit", "ls", "--result", "denied", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [e["seq"] for e in json.loads(listed.stdout)] == [4]
    table = runner.invoke(cli_app, ["audit", "ls", "--since", "3650d", "--who", "key_z"])
    assert table.exit_code == 0, table.output
    assert "denied" in table.stdout and "key_z" in table.stdout
    bad_since = runner.invoke(cli_app, ["audit", "ls", "--since", "yesterday"])
    assert bad_since.exit_code == 2
    intact = runner.invoke(cli_app, ["audit", "verify"])
    assert intact.exit_code == 0, intact.output
    assert "intact" in intact.stdout and "4 entries" in intact.stdout
    asyncio.run(tamper())
    broken = runner.invoke(cli_app, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "broken at entry 2" in " ".join(broken.output.split())
    as_json = runner.invoke(cli_app, ["audit", "verify", "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["broken_seq"] == 2


def test_the_app_writes_queued_entries_at_shutdown(data_dir: Path) -> None:
    """In the app's own event loop (as Serve runs it, lifespan included), every queued
    entry is written by the time the app has shut down."""
    from fastapi.testclient import TestClient

    settings = Settings(data_dir=data_dir)
    clock = FakeClock()

    async def service_key() -> str:
        async with key_store(settings, clock) as keys:
            token, _ = await keys.create(Role.SERVICE)
            return token

    async def stored() -> list[AuditRecord]:
        engine = create_engine(settings)
        try:
            return await AuditStore(session_factory(engine), clock.now).list()
        finally:
            await engine.dispose()

    token = asyncio.run(service_key())
    engine = create_engine(settings)  # first used inside the app's own event loop
    sessions = session_factory(engine)
    keys = KeyStore(sessions, clock.now)
    queue = AuditQueue(AuditStore(sessions, clock.now), batch_size=1)
    app = create_app(GatewayDeps(authenticator=authenticator(keys, clock), audit=queue))
    with TestClient(app) as http:
        for _ in range(3):
            assert (
                http.get("/api/v1/platform/status", headers={"X-API-Key": token}).status_code == 403
            )
    assert queue.pending == 0
    assert [e.draft.status for e in asyncio.run(stored())] == [403, 403, 403]
