"""Cortex's torch-free helpers: device choice, model ids, and outputs as JSON or Arrow.

The gateway imports these on every prediction; ``actors.cortex.served`` (which imports
torch) re-exports them, so a gateway process never pays for torch.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa

from actors.cortex.errors import DeviceUnavailableError
from actors.forge.registry import NAME_PATTERN
from cluster.errors import InvalidInputError

__all__ = [
    "DEVICE_PREFERENCES",
    "model_id",
    "outputs_to_arrow",
    "outputs_to_rows",
    "parse_model_id",
    "resolve_device",
    "split_outputs",
]

DEVICE_PREFERENCES = ("auto", "cpu", "cuda")
_NAME = re.compile(NAME_PATTERN)


def resolve_device(preference: str, cuda_available: bool) -> str:
    """The torch device for ``cortex.device``: ``"cuda"`` or ``"cpu"``.

    ``cuda_available`` is passed in (``torch.cuda.is_available()`` in the replica) so the
    decision is testable on any machine.
    """
    if preference not in DEVICE_PREFERENCES:
        raise InvalidInputError(
            field="cortex.device", value=preference, allowed=" or ".join(DEVICE_PREFERENCES)
        )
    if preference == "cpu":
        return "cpu"
    if preference == "cuda" and not cuda_available:
        raise DeviceUnavailableError(device=preference, reason="this replica sees no CUDA GPU")
    return "cuda" if cuda_available else "cpu"


def model_id(name: str, version: int) -> str:
    """The key of one served version: ``"name:version"``."""
    return f"{name}:{version}"


def parse_model_id(value: str) -> tuple[str, int]:
    """``"name:version"`` back to ``(name, version)``; ``InvalidInputError`` on anything else."""
    allowed = "name:version, e.g. churn:3 (a registry model name, a version number >= 1)"
    if not isinstance(value, str):
        raise InvalidInputError(field="model id", value=value, allowed=allowed)
    name, sep, number = value.rpartition(":")
    if not sep or not _NAME.match(name) or not number.isascii() or not number.isdigit():
        raise InvalidInputError(field="model id", value=value, allowed=allowed)
    version = int(number)
    if version < 1:
        raise InvalidInputError(field="model id", value=value, allowed=allowed)
    return name, version


def _rows_of(outputs: dict[str, np.ndarray]) -> int:
    sizes = {key: len(value) for key, value in outputs.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInputError(
            field="outputs", value=sizes, allowed="arrays with the same number of rows"
        )
    return next(iter(sizes.values()), 0)


def outputs_to_rows(outputs: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """One JSON-able dict per row (python floats and ints, probabilities as lists)."""
    count = _rows_of(outputs)
    # tolist() turns numpy scalars into python ones in C, far faster than per-cell float().
    columns = {key: value.tolist() for key, value in outputs.items()}
    keys = list(columns)
    return [{key: columns[key][i] for key in keys} for i in range(count)]


def outputs_to_arrow(outputs: dict[str, np.ndarray]) -> pa.Table:
    """The outputs as an Arrow table: ``prediction`` and ``probabilities`` as list<double>."""
    _rows_of(outputs)
    columns: dict[str, pa.Array] = {}
    for key, value in outputs.items():
        columns[key] = _list_array(value) if value.ndim == 2 else pa.array(value)
    return pa.table(columns)


def _list_array(matrix: np.ndarray) -> pa.Array:
    rows, width = matrix.shape
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float64).reshape(-1))
    return pa.ListArray.from_arrays(offsets, values)


def split_outputs(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Cut one batch's outputs back into per-request parts of ``sizes`` rows, in order."""
    total = _rows_of(outputs)
    if any(size < 0 for size in sizes) or sum(sizes) != total:
        raise InvalidInputError(
            field="sizes",
            value=sizes,
            allowed=f"non-negative row counts that add up to the batch's {total} rows",
        )
    cuts = np.cumsum(np.asarray(sizes, dtype=np.int64))[:-1]
    parts = {key: np.split(value, cuts) for key, value in outputs.items()}
    return [{key: parts[key][i] for key in outputs} for i in range(len(sizes))]
