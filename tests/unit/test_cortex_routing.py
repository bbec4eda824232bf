"""Routing requests to versions: aliases, canary splits, sticky callers, warm-up sets."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.cortex.routing import (
    Canary,
    Route,
    bucket,
    pick,
    routed_versions,
    routes_from_registry,
    versions_to_warm,
)
from cluster.errors import InvalidInputError

PLAIN = Route(name="churn", alias="production", version=3)
CANARY = Route(
    name="churn",
    alias="production",
    version=3,
    canary=Canary(version=4, percent=10.0, sticky_key="x-user-id"),
)


def test_without_a_canary_every_request_goes_to_the_alias() -> None:
    assert pick(PLAIN, key=None, draw=0.0) == (3, False)
    assert pick(PLAIN, key="user-1", draw=0.99) == (3, False)


def test_draws_below_the_percent_go_to_the_canary() -> None:
    assert pick(CANARY, key=None, draw=0.0) == (4, True)
    assert pick(CANARY, key=None, draw=0.0999) == (4, True)
    assert pick(CANARY, key=None, draw=0.1) == (3, False)
    assert pick(CANARY, key=None, draw=0.999) == (3, False)


def test_the_percent_split_holds_over_many_draws() -> None:
    rng = random.Random(20261126)
    draws = 40_000
    canary = sum(pick(CANARY, key=None, draw=rng.random())[1] for _ in range(draws))
    # 10% of 40 000 = 4 000, standard deviation 60: six of them either way.
    assert abs(canary - 4_000) < 360


def test_sticky_keys_split_by_the_percent_too() -> None:
    keys = [f"user-{i}" for i in range(40_000)]
    canary = sum(pick(CANARY, key=k, draw=0.0)[1] for k in keys)
    assert abs(canary - 4_000) < 360


def test_a_sticky_key_always_lands_on_the_same_side_whatever_the_draw() -> None:
    rng = random.Random(7)
    for i in range(200):
        key = f"user-{i}"
        sides = {pick(CANARY, key=key, draw=rng.random()) for _ in range(20)}
        assert len(sides) == 1
        expected_canary = bucket("churn", "production", key) < 10.0
        assert sides == {(4, True) if expected_canary else (3, False)}


def test_a_bigger_canary_keeps_the_callers_it_already_had() -> None:
    # Raising the percent widens the canary's bucket range: nobody flips back.
    wider = Route("churn", "production", 3, Canary(version=4, percent=30.0))
    keys = [f"user-{i}" for i in range(2_000)]
    for key in keys:
        if pick(CANARY, key=key, draw=0.5)[1]:
            assert pick(wider, key=key, draw=0.5)[1]


@given(name=st.text(min_size=1), alias=st.text(min_size=1), key=st.text())
def test_buckets_are_in_range_and_deterministic(name: str, alias: str, key: str) -> None:
    value = bucket(name, alias, key)
    assert 0.0 <= value < 100.0
    assert bucket(name, alias, key) == value


def test_buckets_differ_per_alias() -> None:
    # One caller is not pinned to the canary of every alias at once.
    keys = [f"user-{i}" for i in range(1_000)]
    same = sum(
        (bucket("churn", "production", k) < 10) == (bucket("churn", "staging", k) < 10)
        for k in keys
    )
    assert same < 1_000


@pytest.mark.parametrize("percent", [0, 0.0, 100, 150.0, -1, True])
def test_canary_percent_must_be_strictly_between_0_and_100(percent: float) -> None:
    with pytest.raises(InvalidInputError, match="canary percent"):
        Canary(version=2, percent=percent)


def test_versions_must_be_positive_integers() -> None:
    with pytest.raises(InvalidInputError, match="version"):
        Route(name="churn", alias="production", version=0)
    with pytest.raises(InvalidInputError, match="canary version"):
        Canary(version=True, percent=5.0)
    with pytest.raises(InvalidInputError, match="sticky_key"):
        Canary(version=2, percent=5.0, sticky_key=" ")


# ---- building the table and warming versions ------------------------------------------------


ALIASES = [
    {"name": "churn", "alias": "production", "version": 3},
    {"name": "churn", "alias": "staging", "version": 5},
    {"name": "price", "alias": "production", "version": 1},
]


def test_routes_from_registry_rows() -> None:
    canaries = [
        {
            "name": "churn",
            "alias": "production",
            "version": 4,
            "percent": 10,
            "sticky_key": "x-user-id",
        },
        # no such alias: nothing to split, left out
        {"name": "price", "alias": "staging", "version": 2, "percent": 50, "sticky_key": None},
        # the alias's own version: changes nothing, left out
        {"name": "churn", "alias": "staging", "version": 5, "percent": 50, "sticky_key": None},
    ]
    table = routes_from_registry(ALIASES, canaries)
    assert set(table) == {("churn", "production"), ("churn", "staging"), ("price", "production")}
    assert table[("churn", "production")] == CANARY
    assert table[("churn", "staging")] == Route("churn", "staging", 5)
    assert table[("price", "production")].canary is None
    assert routed_versions(table) == {("churn", 3), ("churn", 4), ("churn", 5), ("price", 1)}


def test_a_bad_canary_row_is_refused_with_its_value() -> None:
    canaries = [
        {"name": "churn", "alias": "production", "version": 4, "percent": 100, "sticky_key": None}
    ]
    with pytest.raises(InvalidInputError, match="100"):
        routes_from_registry(ALIASES, canaries)


def test_versions_to_warm_are_the_new_targets_only() -> None:
    old = routes_from_registry(ALIASES, [])
    promoted = [{**ALIASES[0], "version": 6}, *ALIASES[1:]]
    canary = [
        {"name": "price", "alias": "production", "version": 2, "percent": 5, "sticky_key": None}
    ]
    new = routes_from_registry(promoted, canary)
    assert versions_to_warm(old, new) == [("churn", 6), ("price", 2)]
    assert versions_to_warm(new, new) == []
    assert versions_to_warm({}, old) == [("churn", 3), ("churn", 5), ("price", 1)]
    # A version the old table served only as a canary is already warm.
    assert versions_to_warm(
        routes_from_registry(
            ALIASES,
            [
                {
                    "name": "churn",
                    "alias": "production",
                    "version": 6,
                    "percent": 5,
                    "sticky_key": None,
                }
            ],
        ),
        new,
    ) == [("price", 2)]
    # Dropping routes warms nothing.
    assert versions_to_warm(old, {}) == []
