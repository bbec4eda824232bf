"""The model half of ``make demo``: a dataset into the Lake, a Forge training with Tune,
promotion through the gate, and a prediction from Cortex through the gateway.

Each step uses the path a user would: ``jobs.datasets`` writes the table, the training
runs like ``datapunk train`` (``actors.forge.runner.run_training`` in this process,
joined to the platform's Ray cluster, with the same per-trial progress bars), the alias
moves through ``PUT /api/v1/models/{name}/aliases/production`` with a holdout (so the
gate compares the new version with the one serving), and the prediction is a
``POST /api/v1/models/{name}/predict`` with a ``service`` key.

A second ``make demo`` reuses the table (same snapshot), trains a fresh run (a new
model version) and lets the gate decide whether it replaces the one in production.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.table import Table

from actors.forge.spec import TrainSpec, load_train_spec
from actors.lake.service import LakeService
from actors.lake.specs import parse_table_name
from cluster.console import console, key_value_table
from cluster.db.engine import create_engine, session_factory
from cluster.security.keys import KeyStore
from cluster.settings import Settings
from jobs.datasets import LABEL, dataset_table, write_dataset

REPO = Path(__file__).resolve().parent.parent
BASE_SPEC = REPO / "configs" / "training" / "diabetes.yaml"
DATASET, TABLE = "diabetes", "forge_demo.diabetes"
MODEL = "diabetes-demo"
ALIAS = "production"
# A smaller search than configs/training/diabetes.yaml so the demo trains in a couple of
# minutes on two cores: 2 trials (a batch-size grid), few epochs, both at once on half a
# CPU each. With the gateway and Cortex holding a CPU between them, one trial at a time
# on a whole CPU left the second trial pending for minutes on a 2-core machine; the time
# budget bounds the worst case (Tune stops, the best finished trial is registered).
DEMO_OVERRIDES: dict[str, Any] = {
    "name": MODEL,
    "description": "make demo: the diabetes MLP with a small search.",
    "epochs": 8,
    "tune": {
        "search_space": {
            "optimizer.lr": {"loguniform": [0.002, 0.02]},
            "batch_size": {"grid": [16, 64]},
        },
        "scheduler": {"type": "asha", "grace_period": 3, "reduction_factor": 2},
        "num_samples": 1,
        "max_concurrent_trials": 2,
    },
    "scaling": {"num_workers": 1, "use_gpu": "auto", "cpus_per_worker": 0.5},
    "stop": {"metric_threshold": None, "time_budget_s": 240},
    "checkpoint": {"every_epochs": 4, "num_to_keep": 1},
    "registry": {"model_name": MODEL, "tags": {"dataset": "sklearn-diabetes", "by": "make demo"}},
}


def demo_spec() -> TrainSpec:
    """``configs/training/diabetes.yaml`` with the demo's smaller search, validated."""
    data = yaml.safe_load(BASE_SPEC.read_text(encoding="utf-8"))
    data.update(DEMO_OVERRIDES)
    return load_train_spec(data)


async def ingest(settings: Settings) -> dict[str, Any]:
    """Load the dataset into ``TABLE`` with ``jobs.datasets``; an existing table is kept
    as it is (a rerun trains on the same snapshot). Returns table, rows, snapshot, new."""
    lake = LakeService.from_settings(settings)
    parsed = parse_table_name(TABLE)
    created = False
    if parsed.full not in await _tables(lake, parsed.namespace):
        await write_dataset(settings, DATASET, TABLE)
        created = True
    described = await lake.describe(parsed.full)
    return {
        "table": parsed.full,
        "snapshot_id": described["current_snapshot_id"],
        "rows": dataset_table(DATASET).num_rows,
        "created": created,
    }


async def _tables(lake: LakeService, namespace: str) -> list[str]:
    # A first run has no namespace yet: no tables, rather than an error.
    if namespace not in await lake.list_namespaces():
        return []
    return list(await lake.list_tables(namespace))


def train(settings: Settings, spec: TrainSpec) -> dict[str, Any]:
    """Run the spec like ``datapunk train --fresh`` does: join the platform's cluster,
    one progress bar per trial; a new run (and model version) on every demo."""
    from actors.forge.runner import run_training
    from jobs.train import TrialProgress, connect, outcome_table, trials_table

    connect(settings)
    with TrialProgress(spec, console) as progress:
        record = run_training(settings, spec, progress, "make demo", fresh=True)
    console.print(trials_table(record))
    console.print(outcome_table(record))
    return record


def promote(base: str, token: str, record: dict[str, Any]) -> dict[str, Any]:
    """Move ``production`` to the run's model version through the gate: both versions
    are scored on the training table's pinned snapshot and the better one serves."""
    version = int(record["model_version"])
    body = {
        "version": version,
        "reason": f"make demo: run {record['run_id']}",
        "holdout": {"table": record["lake_table"], "snapshot_id": record["snapshot_id"]},
    }
    with httpx.Client(base_url=base, timeout=120) as client:
        reply = client.put(
            f"/api/v1/models/{MODEL}/aliases/{ALIAS}",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
        )
    if reply.status_code == 409:  # the gate refused: the incumbent keeps serving
        decision: dict[str, Any] = reply.json()["decision"]
        return decision
    reply.raise_for_status()
    moved: dict[str, Any] = reply.json()
    return moved


def decision_table(decision: dict[str, Any]) -> Table:
    """The gate's decision as a person reads it."""

    def score(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, int | float) else "-"

    outcome = "[green]promoted[/]" if decision["promoted"] else "[yellow]kept the incumbent[/]"
    rows = {
        "decision": outcome,
        "candidate": f"v{decision['candidate_version']} ({score(decision['candidate_score'])})",
        "incumbent": (
            f"v{decision['incumbent_version']} ({score(decision['incumbent_score'])})"
            if decision.get("incumbent_version") is not None
            else "none yet"
        ),
        "metric": f"{decision.get('metric')} ({decision.get('mode')})",
        "why": str(decision.get("why", "-")),
    }
    return key_value_table(f"promotion of {MODEL} to {ALIAS!r} (gate)", rows, ("", ""))


async def create_service_key(settings: Settings) -> str:
    """A ``service`` key: what an application calling the model would hold."""
    engine = create_engine(settings)
    try:
        store = KeyStore(session_factory(engine), now=lambda: datetime.now(UTC))
        token, _record = await store.create(
            role="service", name="demo service", expires_in=None, created_by="make demo"
        )
        return token
    finally:
        await engine.dispose()


def predict(
    base: str, service_key: str, version: int, rows: int = 3
) -> tuple[Table, dict[str, Any]]:
    """Ask the ``production`` model for ``rows`` predictions through the gateway.

    The gateway's alias routes are a cache refreshed in the background, so a version
    promoted a moment ago may need a few seconds to be routable (404, or the previous
    holder still answering): retry briefly until ``version`` answers.
    """
    data = dataset_table(DATASET).slice(0, rows)
    instances = data.drop_columns([LABEL]).to_pylist()
    url = f"/api/v1/models/{MODEL}/predict"
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base, timeout=120) as client:
        while True:
            reply = client.post(
                url,
                params={"alias": ALIAS},
                json={"instances": instances},
                headers={"Authorization": f"Bearer {service_key}"},
            )
            fresh = reply.status_code == 200 and reply.json().get("version") == version
            if time.monotonic() > deadline or fresh or reply.status_code not in (200, 404, 503):
                break
            time.sleep(2)
    reply.raise_for_status()
    body: dict[str, Any] = reply.json()
    table = Table(
        title=f"POST {url}?alias={ALIAS} (service key) -> {body['model']} v{body['version']}",
        header_style="bold",
    )
    for column in ("bmi", "bp", "s5", "prediction", "actual"):
        table.add_column(column)
    actual = data.column(LABEL).to_pylist()
    for instance, answer, truth in zip(instances, body["predictions"], actual, strict=True):
        table.add_row(
            f"{instance['bmi']:.3f}",
            f"{instance['bp']:.3f}",
            f"{instance['s5']:.3f}",
            f"{answer['prediction']:.1f}",
            f"{truth:.1f}",
        )
    table.caption = f"request id {body.get('request_id', '-')}"
    return table, body


def ingest_now(settings: Settings) -> dict[str, Any]:
    """``ingest`` from synchronous code."""
    return asyncio.run(ingest(settings))
