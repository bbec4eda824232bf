"""Scoped grants: the pure decisions, their storage, and keys that carry them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from actors.lake.specs import parse_table_name
from cluster.cli import app as cli_app
from cluster.db.engine import create_engine, session_factory
from cluster.db.models import KeyGrant
from cluster.errors import (
    AuthenticationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
)
from cluster.security import grants
from cluster.security.grant_store import GrantStore, copy_key_grants
from cluster.security.grants import (
    ANY_SCOPE,
    Grant,
    HiddenObjectError,
    ObjectAccessDeniedError,
    Scope,
    ScopeKind,
    allowed,
    make_grant,
    parse_scope,
    require_on,
    require_somewhere,
)
from cluster.security.keys import KeyStore
from cluster.security.principal import Principal
from cluster.security.rbac import Permission, Role
from cluster.settings import Settings
from tests.clock import FakeClock
from tests.unit.gateway_support import key_store

READ = Permission.LAKE_TABLE_READ
WRITE = Permission.LAKE_TABLE_WRITE


def principal(role: Role, *pairs: tuple[str, str]) -> Principal:
    return Principal(
        key_id="key_000000000001",
        name="test",
        role=role,
        grants=tuple(make_grant(p, s) for p, s in pairs),
    )


# --- scopes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("*", ScopeKind.ANY, ""),
        ("table:sales.orders", ScopeKind.TABLE, "sales.orders"),
        ("table:orders", ScopeKind.TABLE, "default.orders"),
        (" TABLE:sales.orders ", ScopeKind.TABLE, "sales.orders"),
        ("namespace:sales", ScopeKind.NAMESPACE, "sales"),
        ("model:churn-v2", ScopeKind.MODEL, "churn-v2"),
        ("stream:orders.live", ScopeKind.STREAM, "orders.live"),
    ],
)
def test_scopes_parse_and_print_back(text: str, kind: ScopeKind, name: str) -> None:
    scope = parse_scope(text)
    assert scope == Scope(kind, name)
    assert parse_scope(str(scope)) == scope


@pytest.mark.parametrize(
    "text",
    ["", "table", "table:", "tables:x", "table:a.b.c", "table:1abc", "namespace:a.b", "model:a b"],
)
def test_bad_scopes_name_the_forms(text: str) -> None:
    with pytest.raises(InvalidInputError, match=r"table:NAMESPACE\.TABLE"):
        parse_scope(text)


@pytest.mark.parametrize("name", ["orders", "sales.orders", "_x.y_2"])
def test_table_names_normalise_as_lake_reads_them(name: str) -> None:
    assert grants.table(name).name == parse_table_name(name).full


def test_a_grant_scope_must_fit_its_permission() -> None:
    assert make_grant("lake.table:read", "namespace:sales").scope.kind is ScopeKind.NAMESPACE
    assert make_grant("model:train", "table:forge.x").scope.name == "forge.x"
    assert make_grant("keys:manage", "*").scope is ANY_SCOPE
    with pytest.raises(InvalidInputError, match="model:NAME"):
        make_grant("model:read", "table:sales.orders")
    with pytest.raises(InvalidInputError, match="acts on no single object"):
        make_grant("audit:read", "table:sales.orders")
    with pytest.raises(InvalidInputError, match="permission"):
        make_grant("lake.tables:read", "*")


# --- decisions -------------------------------------------------------------------------


def test_no_grants_means_the_role_everywhere() -> None:
    analyst = principal(Role.ANALYST)
    assert allowed(analyst, READ, grants.table("any.table"))
    assert allowed(analyst, "platform:read", None)
    assert not allowed(analyst, WRITE, grants.table("any.table"))  # the role still rules


def test_a_table_grant_reaches_that_table_only() -> None:
    key = principal(Role.ANALYST, (READ, "table:sales.a"))
    assert allowed(key, READ, grants.table("sales.a"))
    assert not allowed(key, READ, grants.table("sales.b"))
    assert not allowed(key, READ, grants.namespace("sales"))
    assert not allowed(key, READ, None)  # an action on no object needs '*'
    assert not allowed(key, "model:read", grants.model("m"))


def test_a_namespace_grant_reaches_its_tables() -> None:
    key = principal(Role.ENGINEER, (WRITE, "namespace:sales"))
    assert allowed(key, WRITE, grants.table("sales.anything"))
    assert allowed(key, WRITE, grants.namespace("sales"))
    assert not allowed(key, WRITE, grants.table("salesx.a"))
    assert not allowed(key, READ, grants.table("sales.anything"))  # another permission


def test_grants_never_add_to_the_role() -> None:
    service = principal(Role.SERVICE, (WRITE, "*"))
    # The grant's permission is the role's: fine; read is not the role's at all.
    assert allowed(service, WRITE, grants.table("x.y"))
    key = Principal("key_1", "k", Role.ANALYST, grants=(Grant(WRITE, ANY_SCOPE),))
    assert not allowed(key, WRITE, grants.table("x.y"))


def test_star_reaches_objects_and_object_less_actions() -> None:
    key = principal(Role.ADMIN, ("keys:manage", "*"), (READ, "*"))
    assert allowed(key, "keys:manage", None)
    assert allowed(key, READ, grants.table("a.b"))
    assert not allowed(key, "audit:read", None)


def test_hidden_objects_are_404_visible_ones_403() -> None:
    key = principal(Role.ENGINEER, (READ, "table:sales.a"))
    with pytest.raises(HiddenObjectError) as hidden:
        require_on(key, READ, grants.table("sales.b"))
    assert hidden.value.http_status == 404
    assert hidden.value.code == "not_found"
    # Existence is never consulted: a missing table gets the same answer, word for word.
    with pytest.raises(HiddenObjectError) as missing:
        require_on(key, READ, grants.table("sales.never_created"))
    assert missing.value.message.replace("never_created", "b") == hidden.value.message
    with pytest.raises(ObjectAccessDeniedError) as denied:
        require_on(key, WRITE, grants.table("sales.a"))
    assert denied.value.http_status == 403
    assert "'lake.table:write' on table:sales.a" in denied.value.message
    assert "datapunk grants add" in denied.value.message


def test_a_role_without_the_permission_is_the_plain_role_403() -> None:
    key = principal(Role.ANALYST, (READ, "table:sales.a"))
    with pytest.raises(PermissionDeniedError, match="role 'analyst' lacks"):
        require_on(key, WRITE, grants.table("sales.b"))


def test_a_table_grant_makes_its_namespace_visible_not_usable() -> None:
    key = principal(Role.ENGINEER, (READ, "table:sales.a"))
    with pytest.raises(ObjectAccessDeniedError):
        require_on(key, WRITE, grants.namespace("sales"))
    with pytest.raises(HiddenObjectError):
        require_on(key, WRITE, grants.namespace("hr"))
    assert grants.allowed_within(key, READ, "sales")
    assert not grants.allowed_within(key, READ, "hr")
    assert not grants.allowed_within(key, WRITE, "sales")


def test_require_somewhere_needs_a_grant_naming_the_permission() -> None:
    key = principal(Role.ENGINEER, (READ, "table:sales.a"))
    require_somewhere(key, READ)
    with pytest.raises(ObjectAccessDeniedError, match="on any object"):
        require_somewhere(key, "stream:read")
    with pytest.raises(ObjectAccessDeniedError):
        require_somewhere(key, "platform:read")  # object-less: needs '*'
    require_somewhere(principal(Role.ENGINEER), "stream:read")  # unrestricted
    require_somewhere(principal(Role.ENGINEER, ("platform:read", "*")), "platform:read")


def test_visible_filters_listings() -> None:
    key = principal(Role.ANALYST, ("model:read", "model:a"), ("model:read", "model:c"))
    names = ["a", "b", "c"]
    assert grants.visible(key, "model:read", names, grants.model) == ["a", "c"]
    assert grants.visible(principal(Role.ANALYST), "model:read", names, grants.model) == names


# --- storage ---------------------------------------------------------------------------


@dataclass
class Stores:
    keys: KeyStore
    grants: GrantStore
    sessions: async_sessionmaker[AsyncSession]


@pytest.fixture
async def stores(data_dir: Path) -> AsyncIterator[Stores]:
    settings = Settings(data_dir=data_dir)
    clock = FakeClock()
    async with key_store(settings, clock):
        engine = create_engine(settings)
        try:
            sessions = session_factory(engine)
            yield Stores(
                KeyStore(sessions, clock.now, on_rotate=(copy_key_grants,)),
                GrantStore(sessions, clock.now),
                sessions,
            )
        finally:
            await engine.dispose()


async def test_a_key_authenticates_with_its_grants(stores: Stores) -> None:
    token, record = await stores.keys.create(Role.ANALYST)
    assert (await stores.keys.authenticate(token)).grants == ()
    await stores.grants.add(record.id, "lake.table:read", "table:sales.a", created_by="admin")
    await stores.grants.add(record.id, "model:read", "model:churn")
    await stores.grants.add(record.id, "model:read", "model:churn")  # again: no change
    found = await stores.keys.authenticate(token)
    assert [str(g) for g in found.grants] == [
        "lake.table:read on table:sales.a",
        "model:read on model:churn",
    ]
    listed = await stores.grants.list(record.id)
    assert [r.as_dict()["scope"] for r in listed] == ["table:sales.a", "model:churn"]
    assert listed[0].created_by == "admin"


async def test_grants_must_be_within_the_role(stores: Stores) -> None:
    _, record = await stores.keys.create(Role.ANALYST)
    with pytest.raises(InvalidInputError, match="grants narrow a role"):
        await stores.grants.add(record.id, "lake.table:write", "table:sales.a")
    with pytest.raises(InvalidInputError):
        await stores.grants.replace(record.id, [make_grant("lake.table:write", "*")])
    assert await stores.grants.list(record.id) == []


async def test_unknown_keys_and_grants_are_404(stores: Stores) -> None:
    with pytest.raises(NotFoundError, match="API key 'key_nope'"):
        await stores.grants.list("key_nope")
    _, record = await stores.keys.create(Role.ANALYST)
    with pytest.raises(NotFoundError, match="grant"):
        await stores.grants.remove(record.id, "lake.table:read", "table:a.b")


async def test_replace_and_remove(stores: Stores) -> None:
    _, record = await stores.keys.create(Role.ENGINEER)
    wanted = [make_grant(WRITE, "namespace:sales"), make_grant("stream:read", "stream:s")]
    replaced = await stores.grants.replace(record.id, wanted)
    assert {r.grant for r in replaced} == set(wanted)
    removed = await stores.grants.remove(record.id, "stream:read", "stream:s")
    assert removed.grant == wanted[1]
    assert [r.grant for r in await stores.grants.list(record.id)] == [wanted[0]]
    assert await stores.grants.replace(record.id, []) == []


async def test_a_stored_grant_that_no_longer_parses_fails_closed(stores: Stores) -> None:
    token, record = await stores.keys.create(Role.ANALYST)
    async with stores.sessions() as session, session.begin():
        session.add(
            KeyGrant(
                key_id=record.id,
                permission="lake.table:read",
                scope="table:bad..name",
                created_at=FakeClock().now(),
            )
        )
    with pytest.raises(AuthenticationError, match="no longer valid"):
        await stores.keys.authenticate(token)


async def test_rotation_copies_grants_to_the_successor(stores: Stores) -> None:
    old_token, record = await stores.keys.create(Role.ANALYST)
    await stores.grants.add(record.id, READ, "table:sales.a")
    successor, new_token = await stores.keys.rotate(
        record.id, overlap=timedelta(hours=1), actor="t"
    )
    both = [await stores.keys.authenticate(t) for t in (old_token, new_token)]
    assert [p.grants for p in both] == [(make_grant(READ, "table:sales.a"),)] * 2
    assert both[1].key_id == successor.id


# --- CLI ---------------------------------------------------------------------------------


def test_cli_roles_and_grants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(tmp_path / "state"))
    runner = CliRunner()
    roles = runner.invoke(cli_app, ["roles", "--json"])
    assert roles.exit_code == 0, roles.output
    assert "audit:read" not in roles.stdout.split('"engineer"')[1].split("]")[0]
    created = runner.invoke(cli_app, ["keys", "create", "--role", "analyst", "--json"])
    key_id = created.stdout.split('"id": "')[1].split('"')[0]
    added = runner.invoke(cli_app, ["grants", "add", key_id, "lake.table:read", "table:s.a"])
    assert added.exit_code == 0, added.output
    assert "table:s.a" in added.stdout
    listed = runner.invoke(cli_app, ["grants", "ls", key_id, "--json"])
    assert '"scope": "table:s.a"' in listed.stdout
    bad = runner.invoke(cli_app, ["grants", "add", key_id, "lake.table:write", "*"])
    assert bad.exit_code == 2
    assert "grants narrow a role" in " ".join(bad.output.split())
    removed = runner.invoke(cli_app, ["grants", "rm", key_id, "lake.table:read", "table:s.a"])
    assert removed.exit_code == 0, removed.output
    assert "no grants left" in " ".join(removed.output.split())
    audit = runner.invoke(cli_app, ["audit", "ls", "--json"])
    assert audit.exit_code == 0, audit.output
    assert [e["route"] for e in json.loads(audit.stdout)] == [
        "datapunk grants rm",
        "datapunk grants add",
    ]
