"""Write a small real dataset that scikit-learn ships into a Lake table.

``python -m jobs.datasets diabetes|breast_cancer TABLE [--replace]``: the table gets one
column per feature (names in snake_case) and ``target``, in one snapshot. The Forge
example (``configs/training/diabetes.yaml``) and the training tests start from these.
Runs in-process against the settings' Lake; no Ray needed.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

import pyarrow as pa

from actors.lake.service import LakeService
from actors.lake.specs import DEFAULT_NAMESPACE, parse_table_name
from cluster.console import console, key_value_table
from cluster.errors import DatapunkError, InvalidInputError, PlatformStateError
from cluster.logging import configure_logging
from cluster.settings import Settings, load_settings

DATASETS = ("diabetes", "breast_cancer")
LABEL = "target"


def column_name(name: str) -> str:
    """A scikit-learn feature name as a Lake column: ``mean radius`` -> ``mean_radius``."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def dataset_table(dataset: str) -> pa.Table:
    """The scikit-learn dataset as Arrow: float64 features, ``target`` (float64 for
    diabetes' disease progression, int64 class ids for breast_cancer)."""
    try:
        from sklearn import datasets as sk
    except ImportError:
        raise PlatformStateError(
            "the example datasets come from scikit-learn, which is not installed; "
            "install it (pip install scikit-learn, or `make setup` for the dev tools)"
        ) from None

    loaders = {"diabetes": sk.load_diabetes, "breast_cancer": sk.load_breast_cancer}
    if dataset not in loaders:
        raise InvalidInputError(field="dataset", value=dataset, allowed=" or ".join(DATASETS))
    bunch: Any = loaders[dataset]()
    columns = {
        column_name(name): pa.array(bunch.data[:, i], pa.float64())
        for i, name in enumerate(bunch.feature_names)
    }
    target_type = pa.int64() if dataset == "breast_cancer" else pa.float64()
    columns[LABEL] = pa.array(bunch.target, target_type)
    return pa.table(columns)


def feature_columns(dataset: str) -> list[str]:
    """The feature column names ``dataset_table`` writes, in order."""
    return [c for c in dataset_table(dataset).column_names if c != LABEL]


async def write_dataset(
    settings: Settings, dataset: str, table: str, *, replace: bool = False
) -> dict[str, Any]:
    """Create ``table`` holding ``dataset`` (its namespace too); with ``replace`` an
    existing table's rows are overwritten in a new snapshot. Returns the commit."""
    data = dataset_table(dataset)
    lake = LakeService.from_settings(settings)
    parsed = parse_table_name(table)
    if parsed.namespace != DEFAULT_NAMESPACE:
        await lake.create_namespace(parsed.namespace, exist_ok=True)
    if replace and parsed.full in await lake.list_tables(parsed.namespace):
        return await lake.overwrite(parsed.full, data)
    await lake.create_table(parsed.full, data=data)
    described = await lake.describe(parsed.full)
    return {"table": parsed.full, "snapshot_id": described["current_snapshot_id"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.datasets", description=__doc__)
    parser.add_argument("dataset", choices=DATASETS)
    parser.add_argument("table", help="Lake table to create, e.g. forge_demo.diabetes")
    parser.add_argument("--replace", action="store_true", help="Overwrite an existing table.")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    try:
        result = asyncio.run(
            write_dataset(load_settings(), args.dataset, args.table, replace=args.replace)
        )
    except DatapunkError as exc:
        console.print(f"[red]error:[/] {exc.message}", highlight=False)
        return 2
    rows = dataset_table(args.dataset).num_rows
    console.print(
        key_value_table(
            f"{args.dataset} -> {args.table}",
            {"rows": str(rows), "snapshot": str(result.get("snapshot_id"))},
            ("", ""),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
