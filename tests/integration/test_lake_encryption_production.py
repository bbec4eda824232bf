"""Encryption at rest in production mode: data keys in PostgreSQL (through the Lake's
synchronous engine), the catalog there too, scan results cached in Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pytest
import redis

from actors.lake.encryption import SENSITIVE_PROPERTY
from actors.lake.service import LakeService
from cluster.db.migrate import upgrade
from cluster.security.data_keys import DataKeyStore, rotate_master, sync_db_url, sync_engine
from cluster.security.keyring import LocalKeyFile
from cluster.settings import load_settings
from tests.unit.test_lake_encryption import ROWS, SECRETS, assert_no_plaintext, data_files

pytestmark = pytest.mark.integration


async def test_encrypted_columns_on_postgres_and_redis(
    tmp_path: Path, postgres_url: str, redis_url: str
) -> None:
    settings = load_settings(data_dir=tmp_path, database_url=postgres_url, redis_url=redis_url)
    assert sync_db_url(settings).startswith("postgresql+psycopg2://")
    await upgrade(settings)
    lake = LakeService.from_settings(settings)
    schema = pa.schema(
        [("id", pa.int64()), ("email", pa.string()), ("ssn", pa.string()), ("city", pa.string())]
    )
    await lake.create_table("people", schema=schema, properties={SENSITIVE_PROPERTY: "email,ssn"})
    await lake.append("people", pa.Table.from_pylist(ROWS, schema=schema))
    assert_no_plaintext(data_files(settings, "default.people"), SECRETS)
    clear = (await lake.scan("people", decrypt=True)).sort_by("id").to_pylist()
    assert clear == ROWS
    masked = await lake.scan("people")
    assert set(masked.column("ssn").to_pylist()) == {"****", None}
    raw = redis.Redis.from_url(redis_url)
    try:
        values = [raw.get(key) for key in raw.scan_iter("datapunk:lake:*")]
    finally:
        raw.close()
    assert values, "the scan was not cached in Redis"
    for value in values:
        for secret in SECRETS:
            assert secret.encode() not in (value or b"")

    provider = LocalKeyFile(settings.key_dir)
    old = provider.current_key_id()
    engine = sync_engine(settings)
    try:
        report = await asyncio.to_thread(
            rotate_master, DataKeyStore(engine), provider, remove_old=True
        )
    finally:
        engine.dispose()
    assert (report.rewrapped, report.removed) == (2, [old])
    fresh = LakeService.from_settings(settings)
    assert (await fresh.scan("people", decrypt=True)).sort_by("id").to_pylist() == ROWS
