"""Cortex as a user meets it: a registered model answers through the gateway with a key,
and `ray job submit --working-dir . -- python -m jobs.score` scores a Lake table with it.

The model is registered directly (a tiny network, no training: Forge's own tests train);
what is proven here is the path from the registry to a client and to a Lake table.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import httpx

from tests.e2e.conftest import BIN, Platform, run

REPO = Path(__file__).resolve().parents[2]
MODEL = "e2e_tiny"
SOURCE, OUTPUT = "e2e_cortex.features", "e2e_cortex.scored"

SETUP = f"""
import asyncio, json, sys
sys.path.insert(0, {str(REPO)!r})
from cluster.settings import load_settings
from tests.unit.test_cortex_scoring import (
    FEATURES, direct, register_tiny_model, source_rows, tiny_model, write_table,
)

settings = load_settings()
rows = source_rows(40)
snapshot = asyncio.run(write_table(settings, "{SOURCE}", rows))
asyncio.run(register_tiny_model(settings, "{MODEL}", "regression", table="{SOURCE}",
                                snapshot_id=snapshot))
artifact, _, _ = tiny_model("regression")
print(json.dumps({{
    "features": rows.select(FEATURES).to_pylist(),
    "expected": [float(v) for v in direct(artifact, rows)],
}}))
"""

READ_OUTPUT = f"""
import asyncio, json, sys
sys.path.insert(0, {str(REPO)!r})
from actors.lake.service import LakeService
from cluster.settings import load_settings

table = asyncio.run(LakeService.from_settings(load_settings()).scan("{OUTPUT}"))
print(json.dumps(table.select(["id", "prediction", "model", "version"]).to_pylist()))
"""


def _python(platform: Platform, code: str) -> object:
    done = run([str(BIN / "python"), "-c", textwrap.dedent(code)], platform.env, 180)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _key(platform: Platform, role: str) -> str:
    created = platform.datapunk("keys", "create", "--role", role, "--json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["key"])


def test_a_registered_model_predicts_through_the_gateway_and_scores_a_table(
    platform: Platform,
) -> None:
    setup = _python(platform, SETUP)
    assert isinstance(setup, dict)
    features, expected = setup["features"], setup["expected"]
    headers = {"Authorization": f"Bearer {_key(platform, 'service')}"}
    url = f"{platform.gateway}/api/v1/models/{MODEL}/predict"
    with httpx.Client(timeout=60) as api:
        answer = api.post(url, json={"instances": features[:5]}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["model"], body["version"], body["alias"]) == (MODEL, 1, "production")
        got = [p["prediction"] for p in body["predictions"]]
        assert all(
            math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
            for a, b in zip(got, expected[:5], strict=True)
        )
        bad = api.post(url, json={"instances": [{"x1": "high"}]}, headers=headers)
        assert bad.status_code == 422
        assert {p["field"] for p in bad.json()["error"]["problems"]} == {"x1", "x2"}

    job = run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "-m",
            "jobs.score",
            MODEL,
            "--alias",
            "production",
            "--table",
            SOURCE,
            "--output",
            OUTPUT,
            "--actors",
            "1",
        ],
        platform.ray_env(),
        300,
    )
    assert job.returncode == 0, job.stdout + job.stderr
    scored = _python(platform, READ_OUTPUT)
    assert isinstance(scored, list) and len(scored) == len(expected)
    for row in scored:
        assert (row["model"], row["version"]) == (MODEL, 1)
        assert math.isclose(row["prediction"], expected[row["id"]], rel_tol=1e-6, abs_tol=1e-6)
