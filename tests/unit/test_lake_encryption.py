"""Encryption at rest of sensitive Lake columns: the cell crypto, the local key files, the
Lake's write and read paths, the gateway's masking and master-key rotation (no Ray)."""

from __future__ import annotations

import asyncio
import decimal
import json
import os
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from actors.lake.encryption import ENCRYPTED_PREFIX, SENSITIVE_PROPERTY
from actors.lake.result_cache import ResultCache
from actors.lake.service import LakeService
from cluster.cache import MemoryCache
from cluster.cli import app as cli_app
from cluster.db.migrate import upgrade
from cluster.errors import InvalidInputError, NotFoundError
from cluster.security.data_keys import DataKeyStore, rotate_master, sync_engine
from cluster.security.envelope import (
    CellDecryptionError,
    column_aad,
    decrypt_array,
    encrypt_array,
    mask_array,
    new_data_key,
)
from cluster.security.keyring import KeyFileError, LocalKeyFile, UnwrapError
from cluster.security.rbac import Role
from cluster.settings import Settings
from serve_apps.gateway.asgi import GatewayDeps, create_app
from tests.clock import FakeClock
from tests.unit.gateway_support import authenticator, client, error_of, key_store

PEOPLE = "default.people"
SECRETS = ["alice@example.com", "bob@example.org", "123-45-6789", "987-65-4321"]
ROWS: list[dict[str, Any]] = [
    {"id": 1, "email": "alice@example.com", "ssn": "123-45-6789", "city": "Oslo"},
    {"id": 2, "email": "bob@example.org", "ssn": "987-65-4321", "city": "Lima"},
    {"id": 3, "email": None, "ssn": None, "city": "Rome"},
]
CREATE = {
    "name": "people",
    "columns": [
        {"name": "id", "type": "long"},
        {"name": "email", "type": "string"},
        {"name": "ssn", "type": "string"},
        {"name": "city", "type": "string"},
    ],
    "properties": {SENSITIVE_PROPERTY: "email,ssn"},
}


def data_files(settings: Settings, table: str) -> list[Path]:
    namespace, name = table.split(".")
    folder = settings.data_path / "lake" / "warehouse" / namespace / name / "data"
    return sorted(folder.rglob("*.parquet"))


def assert_no_plaintext(files: list[Path], secrets: list[str]) -> None:
    assert files, "the table has no data files"
    for path in files:
        raw = path.read_bytes()
        for secret in secrets:
            assert secret.encode() not in raw, f"{secret!r} in {path.name}"


# --- the cell crypto ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arrow_type", "values"),
    [
        (pa.string(), ["alice", None, "zürich ✓", ""]),
        (pa.large_string(), ["x", None]),
        (pa.binary(), [b"\x00\xff", None, b""]),
        (pa.int64(), [2**63 - 1, None, -(2**63)]),
        (pa.int32(), [7, None]),
        (pa.float64(), [0.1, -0.0, 1e-300, None]),
        (pa.bool_(), [True, False, None]),
        (pa.decimal128(10, 2), [decimal.Decimal("12.30"), None]),
        (pa.date32(), [date(2024, 2, 29), None]),
        (pa.timestamp("us", tz="UTC"), [datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC), None]),
    ],
)
def test_cells_round_trip_in_their_own_type(arrow_type: pa.DataType, values: list[Any]) -> None:
    key, aad = new_data_key(), column_aad("ns.t", "c", "dk_1")
    plain = pa.array(values, type=arrow_type)
    sealed = encrypt_array(plain, key, aad)
    assert sealed.type == pa.binary()
    assert sealed.null_count == plain.null_count
    opened = decrypt_array(sealed, key, aad, arrow_type, table="ns.t", column="c")
    assert opened.equals(plain)


def test_equal_values_seal_differently_and_carry_nonce_and_tag() -> None:
    key, aad = new_data_key(), column_aad("ns.t", "c", "dk_1")
    sealed = encrypt_array(pa.array(["same", "same"]), key, aad).to_pylist()
    assert sealed[0] != sealed[1]
    assert len(sealed[0]) == 12 + len("same") + 16


def test_a_ciphertext_moved_to_another_column_does_not_open() -> None:
    key = new_data_key()
    sealed = encrypt_array(pa.array(["alice"]), key, column_aad("ns.t", "email", "dk_1"))
    with pytest.raises(CellDecryptionError, match=r"ns\.t\.ssn"):
        decrypt_array(
            sealed, key, column_aad("ns.t", "ssn", "dk_1"), pa.string(), table="ns.t", column="ssn"
        )
    tampered = pa.array([bytes([sealed[0].as_py()[0] ^ 1]) + sealed[0].as_py()[1:]])
    with pytest.raises(CellDecryptionError):
        decrypt_array(
            tampered, key, column_aad("ns.t", "email", "dk_1"), pa.string(), table="t", column="c"
        )


def test_masks_are_stars_for_text_and_null_otherwise() -> None:
    sealed = pa.array([b"x", None], type=pa.binary())
    assert mask_array(sealed, pa.large_string()).to_pylist() == ["****", None]
    assert mask_array(sealed, pa.int64()).to_pylist() == [None, None]


# --- master key files ---------------------------------------------------------------------


def test_the_first_master_key_is_a_0600_file_in_a_0700_folder(tmp_path: Path) -> None:
    provider = LocalKeyFile(tmp_path / "keys")
    key_id = provider.current_key_id()
    path = provider.path_of(key_id)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_bytes()) == 32
    assert provider.current_key_id() == key_id  # created once
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    provider = LocalKeyFile(tmp_path / "keys")
    key_id, wrapped = provider.wrap(b"k" * 32, b"ctx")
    provider.path_of(key_id).chmod(0o644)
    fresh = LocalKeyFile(tmp_path / "keys")
    with pytest.raises(KeyFileError, match="mode 0644") as caught:
        fresh.unwrap(key_id, wrapped, b"ctx")
    assert "chmod 600" in caught.value.message
    with pytest.raises(KeyFileError):
        fresh.verify()


def test_a_wrapped_key_opens_only_in_its_context(tmp_path: Path) -> None:
    provider = LocalKeyFile(tmp_path / "keys")
    key_id, wrapped = provider.wrap(b"k" * 32, b"ns.t|email|dk_1")
    assert provider.unwrap(key_id, wrapped, b"ns.t|email|dk_1") == b"k" * 32
    with pytest.raises(UnwrapError):
        provider.unwrap(key_id, wrapped, b"ns.t|ssn|dk_1")


def test_rotate_and_retire_master_keys(tmp_path: Path) -> None:
    provider = LocalKeyFile(tmp_path / "keys")
    first = provider.current_key_id()
    second = provider.rotate()
    assert provider.key_ids() == [first, second]
    assert provider.current_key_id() == second
    with pytest.raises(Exception, match="current"):
        provider.retire(second)
    provider.retire(first)
    assert provider.key_ids() == [second]
    with pytest.raises(NotFoundError, match=first):
        provider.unwrap(first, b"\x00" * 40, b"ctx")


# --- the Lake, in process ------------------------------------------------------------------


@pytest.fixture
async def settings(data_dir: Path) -> Settings:
    settings = Settings(data_dir=data_dir)
    await upgrade(settings)
    return settings


async def _people(lake: LakeService) -> None:
    schema = pa.schema(
        [("id", pa.int64()), ("email", pa.string()), ("ssn", pa.string()), ("city", pa.string())]
    )
    await lake.create_table(PEOPLE, schema=schema, properties={SENSITIVE_PROPERTY: "email,ssn"})
    await lake.append(PEOPLE, pa.Table.from_pylist(ROWS, schema=schema))


async def test_raw_parquet_files_hold_no_plaintext(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    files = data_files(settings, PEOPLE)
    assert_no_plaintext(files, SECRETS)
    assert b"Oslo" in b"".join(p.read_bytes() for p in files)  # plain columns stay plain
    shown = await lake.scan(PEOPLE, decrypt=True)
    assert shown.sort_by("id").to_pylist() == ROWS


async def test_without_decrypt_the_columns_are_masked(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    masked = (await lake.scan(PEOPLE)).sort_by("id").to_pylist()
    assert [r["email"] for r in masked] == ["****", "****", None]
    assert [r["city"] for r in masked] == ["Oslo", "Lima", "Rome"]
    sql = await lake.sql("SELECT email, ssn FROM people WHERE id = 1")
    assert sql.to_pylist() == [{"email": "****", "ssn": "****"}]
    clear = await lake.sql("SELECT id FROM people WHERE ssn = '987-65-4321'", decrypt=True)
    assert clear.to_pylist() == [{"id": 2}]
    guess = await lake.sql("SELECT id FROM people WHERE ssn = '987-65-4321'")
    assert guess.num_rows == 0  # masked data answers no question about the plaintext


async def test_describe_shows_the_own_type_and_the_properties_keep_it(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    described = await lake.describe(PEOPLE)
    columns = {c["name"]: c for c in described["schema"]}
    assert (columns["email"]["type"], columns["email"]["encrypted"]) == ("string", True)
    assert columns["city"]["encrypted"] is False
    recorded = json.loads(described["properties"][ENCRYPTED_PREFIX + "email"])
    assert recorded["type"] == "string"
    assert recorded["arrow"] in ("string", "large_string")
    assert recorded["key_id"].startswith("dk_")


async def test_types_other_than_text_and_later_columns(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    schema = pa.schema([("id", pa.int64()), ("salary", pa.decimal128(10, 2))])
    props = {SENSITIVE_PROPERTY: "salary,born"}  # born arrives later
    await lake.create_table("staff", schema=schema, properties=props)
    first = pa.table({"id": [1], "salary": pa.array([decimal.Decimal("4200.50")], schema[1].type)})
    await lake.append("staff", first)
    later = pa.table(
        {
            "id": [2],
            "salary": pa.array([decimal.Decimal("99.99")], schema[1].type),
            "born": pa.array([date(1990, 5, 17)], pa.date32()),
        }
    )
    await lake.append("staff", later)  # evolves: born is added, encrypted, type recorded
    shown = (await lake.scan("staff", decrypt=True)).sort_by("id").to_pylist()
    assert shown == [
        {"id": 1, "salary": decimal.Decimal("4200.50"), "born": None},
        {"id": 2, "salary": decimal.Decimal("99.99"), "born": date(1990, 5, 17)},
    ]
    masked = (await lake.scan("staff")).to_pylist()
    assert {r["salary"] for r in masked} == {None}
    described = {c["name"]: c for c in (await lake.describe("staff"))["schema"]}
    assert (described["born"]["type"], described["born"]["encrypted"]) == ("date", True)
    assert_no_plaintext(data_files(settings, "default.staff"), ["4200.50", "1990-05-17"])


async def test_filters_keys_and_layouts_on_encrypted_columns_are_refused(
    settings: Settings,
) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    with pytest.raises(InvalidInputError, match="stored encrypted"):
        await lake.scan(PEOPLE, filter="email = 'alice@example.com'", decrypt=True)
    with pytest.raises(InvalidInputError, match="stored encrypted"):
        await lake.delete(PEOPLE, "ssn is null")
    rows = pa.Table.from_pylist(ROWS[:1])
    with pytest.raises(InvalidInputError, match="not encrypted"):
        await lake.upsert(PEOPLE, rows, ["email"])
    assert (await lake.scan(PEOPLE, filter="city = 'Oslo'")).num_rows == 1
    with pytest.raises(InvalidInputError, match="sensitive"):
        await lake.create_table(
            "bad",
            schema=pa.schema([("ssn", pa.string())]),
            partition_by=["bucket(4, ssn)"],
            properties={SENSITIVE_PROPERTY: "ssn"},
        )


async def test_the_result_cache_holds_only_ciphertext(settings: Settings) -> None:
    store = MemoryCache()
    lake = LakeService.from_settings(settings)
    lake.results = ResultCache(store, 600.0, 32 * 1024 * 1024)
    await _people(lake)
    await lake.scan(PEOPLE, decrypt=True)
    await lake.sql("SELECT email FROM people", decrypt=True)
    await lake.sql("SELECT email FROM people")
    cached = [entry.value for entry in store._store.values()]
    assert cached, "nothing was cached"
    for value in cached:
        for secret in SECRETS:
            assert secret.encode() not in value
    again = await lake.scan(PEOPLE, decrypt=True)  # from the cache, decrypted afresh
    assert sorted(filter(None, again.column("email").to_pylist())) == SECRETS[:2]


async def test_declaring_a_populated_column_sensitive_rewrites_it(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await lake.create_table("contacts", data=pa.Table.from_pylist(ROWS))
    report = await lake.protect_columns("contacts", ["email"])
    assert report["rewritten_columns"] == ["email"]
    assert report["rows_rewritten"] == 3
    assert report["plaintext_in_older_snapshots"] == 1
    assert "--remove-orphans" in report["fix"]
    shown: list[dict[str, Any]] = (
        (await lake.scan("contacts", decrypt=True)).sort_by("id").to_pylist()
    )
    assert [r["email"] for r in shown] == [r["email"] for r in ROWS]
    assert [r["ssn"] for r in shown] == [r["ssn"] for r in ROWS]  # not declared: plain
    await lake.maintain(
        "contacts",
        compact_files=False,
        expire_older_than_s=0,
        remove_orphans=True,
        orphan_older_than_s=0,
    )
    assert_no_plaintext(data_files(settings, "default.contacts"), SECRETS[:2])


async def test_a_loose_key_file_stops_encrypted_work(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    for path in settings.key_dir.iterdir():
        path.chmod(0o640)
    fresh = LakeService.from_settings(settings)  # a new process: nothing unwrapped yet
    with pytest.raises(KeyFileError, match="mode 0640"):
        await fresh.scan(PEOPLE, decrypt=True)


# --- master-key rotation ------------------------------------------------------------------


async def test_rotate_master_rewraps_and_the_old_key_file_can_go(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    provider = LocalKeyFile(settings.key_dir)
    old = provider.current_key_id()
    before = {p.name: p.read_bytes() for p in data_files(settings, PEOPLE)}
    engine = sync_engine(settings)
    store = DataKeyStore(engine)
    try:
        report = await asyncio.to_thread(rotate_master, store, provider)
        assert (report.rewrapped, report.resumed) == (2, False)
        assert report.master_key_id != old
        assert report.old_master_keys == [old]
        assert {row.master_key_id for row in store.all()} == {report.master_key_id}
    finally:
        engine.dispose()
    os.remove(provider.path_of(old))
    after = {p.name: p.read_bytes() for p in data_files(settings, PEOPLE)}
    assert after == before  # no data file was rewritten
    fresh = LakeService.from_settings(settings)  # unwraps under the new master only
    shown = (await fresh.scan(PEOPLE, decrypt=True)).sort_by("id").to_pylist()
    assert shown == ROWS


async def test_an_interrupted_rotation_is_finished_by_the_next_run(settings: Settings) -> None:
    lake = LakeService.from_settings(settings)
    await _people(lake)
    provider = LocalKeyFile(settings.key_dir)
    engine = sync_engine(settings)
    store = DataKeyStore(engine)
    try:
        old = provider.current_key_id()
        new = provider.rotate()  # the run that died: new master made, one key re-wrapped
        row = store.all()[0]
        plain = provider.unwrap(old, row.wrapped, _context(row))
        master, wrapped = provider.wrap(plain, _context(row))
        store.rewrap(row, master, wrapped)
        assert sorted(r.master_key_id for r in store.all()) == sorted([old, new])
        report = rotate_master(store, provider, remove_old=True)
        assert (report.master_key_id, report.rewrapped, report.resumed) == (new, 1, True)
        assert report.removed == [old]
        assert provider.key_ids() == [new]
        again = rotate_master(store, provider)  # nothing left behind: a fresh rotation
        assert (again.resumed, again.rewrapped) == (False, 2)
    finally:
        engine.dispose()
    shown = await LakeService.from_settings(settings).scan(PEOPLE, decrypt=True)
    assert sorted(filter(None, shown.column("ssn").to_pylist())) == SECRETS[2:]


def _context(row: Any) -> bytes:
    from cluster.security.data_keys import key_context

    return key_context(row.table_name, row.column_name, row.id)


def test_the_rotate_master_command(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(data_dir=data_dir)
    asyncio.run(upgrade(settings))
    asyncio.run(_people(LakeService.from_settings(settings)))
    monkeypatch.setenv("DATAPUNK_DATA_DIR", str(data_dir))
    monkeypatch.chdir(data_dir)  # no configs/datapunk.yaml here
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["keys", "rotate-master", "--json"], catch_exceptions=False)
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert (report["rewrapped"], report["resumed"]) == (2, False)
    removed = runner.invoke(cli_app, ["keys", "rotate-master", "--remove-old"])
    assert removed.exit_code == 0, removed.output
    assert "re-wrapped" in removed.stdout
    assert "removed old master key(s): mk000001, mk000002" in removed.stdout
    assert LocalKeyFile(settings.key_dir).key_ids() == ["mk000003"]


# --- through the gateway --------------------------------------------------------------------


@dataclass
class Api:
    http: httpx.AsyncClient
    keys: dict[Role, str]

    async def call(self, method: str, path: str, role: Role, **kwargs: Any) -> httpx.Response:
        headers = {"X-API-Key": self.keys[role]}
        return await self.http.request(method, "/api/v1/lake" + path, headers=headers, **kwargs)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    clock = FakeClock()
    async with key_store(settings, clock) as store:
        keys = {role: (await store.create(role))[0] for role in Role}
        deps = GatewayDeps(
            authenticator=authenticator(store, clock),
            lake=LakeService.from_settings(settings),
            spool_dir=settings.data_path / "spool",
        )
        async with client(create_app(deps)) as http:
            yield Api(http, keys)


async def test_rest_decrypts_for_engineers_and_masks_for_analysts(
    api: Api, settings: Settings
) -> None:
    assert (await api.call("POST", "/tables", Role.ENGINEER, json=CREATE)).status_code == 201
    appended = await api.call("POST", f"/tables/{PEOPLE}/append", Role.SERVICE, json={"rows": ROWS})
    assert appended.status_code == 200, appended.text
    assert_no_plaintext(data_files(settings, PEOPLE), SECRETS)
    query = {"columns": ["id", "email", "ssn"]}
    engineer = await api.call("POST", f"/tables/{PEOPLE}/query", Role.ENGINEER, json=query)
    assert sorted(engineer.json(), key=lambda r: r["id"])[0]["email"] == "alice@example.com"
    analyst = await api.call("POST", f"/tables/{PEOPLE}/query", Role.ANALYST, json=query)
    assert {r["ssn"] for r in analyst.json()} == {"****", None}
    for role, expected in ((Role.ADMIN, "123-45-6789"), (Role.ANALYST, "****")):
        sql = {"query": "SELECT ssn FROM people WHERE id = 1", "format": "csv"}
        reply = await api.call("POST", "/sql", role, json=sql)
        assert reply.text.splitlines() == ['"ssn"', f'"{expected}"'], reply.text
        for secret in SECRETS if role is Role.ANALYST else []:
            assert secret not in reply.text


async def test_rest_declares_columns_sensitive(api: Api, settings: Settings) -> None:
    create = {**CREATE, "properties": {}}
    assert (await api.call("POST", "/tables", Role.ENGINEER, json=create)).status_code == 201
    await api.call("POST", f"/tables/{PEOPLE}/append", Role.ENGINEER, json={"rows": ROWS})
    denied = await api.call(
        "POST", f"/tables/{PEOPLE}/sensitive", Role.ANALYST, json={"columns": ["ssn"]}
    )
    assert denied.status_code == 403
    done = await api.call(
        "POST", f"/tables/{PEOPLE}/sensitive", Role.ENGINEER, json={"columns": ["ssn"]}
    )
    assert done.status_code == 200, done.text
    assert done.json()["rows_rewritten"] == 3
    masked = await api.call("POST", f"/tables/{PEOPLE}/query", Role.ANALYST, json={})
    assert {r["ssn"] for r in masked.json()} == {"****", None}
    bad = await api.call(
        "POST", f"/tables/{PEOPLE}/sensitive", Role.ENGINEER, json={"columns": ["no such"]}
    )
    assert bad.status_code == 422
    assert "comma-separated column names" in error_of(bad)["message"]


async def test_a_sensitive_column_added_as_plaintext_takes_no_sealed_bytes(
    settings: Settings,
) -> None:
    lake = LakeService.from_settings(settings)
    schema = pa.schema([("id", pa.int64())])
    await lake.create_table("later", schema=schema, properties={SENSITIVE_PROPERTY: "email"})
    await lake.evolve_schema("later", add={"email": "string"})  # plaintext, by hand
    rows = pa.table({"id": [1], "email": ["alice@example.com"]})
    with pytest.raises(InvalidInputError, match=r"datapunk lake protect default\.later email"):
        await lake.append("later", rows)
    report = await lake.protect_columns("later", ["email"])  # declared; now encrypted too
    assert report["rewritten_columns"] == ["email"]
    assert (await lake.describe("later"))["schema"][1]["encrypted"] is True
    await lake.append("later", rows)
    assert (await lake.scan("later", decrypt=True)).to_pylist() == rows.to_pylist()
    assert_no_plaintext(data_files(settings, "default.later"), ["alice@example.com"])
