"""Canaries on SQLite (no Ray): the shared contract, the value checks as plain
functions; migration 0005 up and down is in the contract."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from actors.forge.canary import check_percent, check_sticky_key
from cluster.errors import InvalidInputError
from cluster.settings import Settings
from tests.contracts.canaries import CanaryContract


class TestCanariesOnSqlite(CanaryContract):
    @pytest.fixture
    def db_settings(self, data_dir: Path) -> Settings:
        return Settings(data_dir=data_dir)


# ---- value checks ---------------------------------------------------------------------


@pytest.mark.parametrize(("given", "kept"), [(20, 20.0), (0.5, 0.5), (99.99, 99.99)])
def test_percents_inside_the_open_range_pass(given: float, kept: float) -> None:
    assert check_percent(given) == kept and isinstance(check_percent(given), float)


@pytest.mark.parametrize("given", [0, 100, 0.0, -0.1, 150, math.nan, -math.inf, None, "5", False])
def test_percents_outside_are_refused_with_the_fix(given: Any) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_percent(given)
    assert caught.value.fields["field"] == "percent"
    assert "strictly between 0 and 100" in caught.value.message
    assert repr(given) in caught.value.message


@pytest.mark.parametrize("given", ["X-User", "x-session-id", "A" * 64, "7"])
def test_header_names_pass(given: str) -> None:
    assert check_sticky_key(given) == given


def test_no_sticky_key_is_none() -> None:
    assert check_sticky_key(None) is None


@pytest.mark.parametrize("given", ["", "X User", "X_User", "A" * 65, "Ünïcode", "X:1", b"X"])
def test_bad_header_names_are_refused_with_the_fix(given: Any) -> None:
    with pytest.raises(InvalidInputError, match=r"request header name .* e\.g\. X-User"):
        check_sticky_key(given)
