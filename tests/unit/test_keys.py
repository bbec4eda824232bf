"""API-key tokens and digests, and the KeyStore contract on the embedded SQLite file."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from cluster.security.keys import digest, generate_api_key
from cluster.settings import Settings
from tests.contracts.keystore import KeyStoreContract


def test_generated_key_is_dp_plus_256_random_bits() -> None:
    token, token_digest = generate_api_key()
    assert re.fullmatch(r"dp_[A-Za-z0-9_-]{43}", token)  # 32 bytes in URL-safe base64
    assert token_digest == hashlib.sha256(token.encode()).hexdigest()


def test_generated_keys_differ() -> None:
    tokens = {generate_api_key()[0] for _ in range(100)}
    assert len(tokens) == 100


def test_digest_is_sha256_hex() -> None:
    assert digest("dp_abc") == hashlib.sha256(b"dp_abc").hexdigest()
    assert len(digest("dp_abc")) == 64


class TestKeyStoreOnSqlite(KeyStoreContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)
