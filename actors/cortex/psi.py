"""Population stability index (PSI): how far served features drifted from training.

For one feature, the training values (``expected``) fix the bins; both samples are
counted into them and compared as fractions::

    PSI = sum over bins i of (a_i - e_i) * ln(a_i / e_i)

where ``e_i`` and ``a_i`` are the fractions of the expected and actual values in bin
``i``. Every term is >= 0 ((a - e) and ln(a / e) share their sign), so PSI is 0 for
identical binned distributions and grows with the shift. It is not symmetric: the
bins come from ``expected`` only.

Bins:

* **continuous** (more distinct training values than ``bins``): inner edges are the
  training quantiles at 1/bins, ..., (bins-1)/bins, deduplicated; the first and last
  bins are open-ended, so served values outside the training range land in them. A
  value equal to an edge belongs to the bin above it.
* **discrete** (at most ``bins`` distinct training values, a constant column
  included): one bin per training value, plus one for every value training never
  had. Quantile edges cannot tell such values apart (a constant column has one edge,
  so a shift to either side would vanish into one bin); exact values can.

An empty bin gets the fraction ``EPSILON`` instead of 0, so ln stays finite; the
fractions are not renormalised (each term is still >= 0). Inputs must be NaN-free;
``drift_report`` drops nulls and NaN per feature before calling ``psi``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cluster.errors import DatapunkError, InvalidInputError, NotFoundError

__all__ = [
    "DRIFT",
    "EPSILON",
    "MODERATE",
    "REPORT_SCHEMA",
    "STABLE",
    "NoServedRowsError",
    "bin_fractions",
    "drift_report",
    "drift_status",
    "psi",
]

EPSILON = 1e-4
# Conventional PSI bands: < 0.1 no meaningful shift, < 0.25 moderate, beyond that drift.
STABLE_BELOW = 0.1
MODERATE_BELOW = 0.25
STABLE, MODERATE, DRIFT = "stable", "moderate", "drift"

REPORT_SCHEMA = pa.schema(
    [
        pa.field("feature", pa.string(), nullable=False),
        pa.field("psi", pa.float64(), nullable=False),
        pa.field("training_rows", pa.int64(), nullable=False),
        pa.field("served_rows", pa.int64(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
    ]
)


class NoServedRowsError(NotFoundError):
    """The prediction log holds no rows of the version (in the window) to compare."""

    code = "no_served_rows"

    def __init__(
        self, *, table: str, model: str, version: int, since: str | None, reason: str
    ) -> None:
        window = f" since {since}" if since else ""
        DatapunkError.__init__(
            self,
            f"prediction log {table!r} {reason} for model {model!r} version {version}{window}; "
            f"fix: serve that version with cortex.log_predictions on "
            f"(POST /api/v1/models/{model}/predict), or pick a --version or --since that "
            "has predictions",
            table=table,
            model=model,
            version=version,
            since=since,
        )


def _checked(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise InvalidInputError(field=name, value="0 values", allowed="at least one value")
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise InvalidInputError(
            field=name,
            value=f"{bad} NaN or infinite value(s)",
            allowed="finite numbers; drop nulls and NaN first (drift_report does)",
        )
    return array


def bin_fractions(
    expected: np.ndarray, actual: np.ndarray, bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The fractions of ``expected`` and ``actual`` per bin (bins from ``expected``),
    before smoothing; each sums to 1. See the module docstring for the bins."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 2:
        raise InvalidInputError(field="bins", value=bins, allowed="an integer of 2 or more")
    e = _checked("expected", expected)
    a = _checked("actual", actual)
    values = np.unique(e)
    if values.size <= bins:
        e_idx, a_idx, count = _discrete_bins(values, e), _discrete_bins(values, a), values.size + 1
    else:
        inner = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        e_idx = np.searchsorted(inner, e, side="right")
        a_idx = np.searchsorted(inner, a, side="right")
        count = inner.size + 1
    e_frac = np.bincount(e_idx, minlength=count) / e.size
    a_frac = np.bincount(a_idx, minlength=count) / a.size
    return e_frac, a_frac


def _discrete_bins(values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of each ``x`` in the sorted training ``values``; ``len(values)`` if absent."""
    idx = np.searchsorted(values, x)
    found = idx < values.size
    found[found] = values[idx[found]] == x[found]
    return np.where(found, idx, values.size)


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """The PSI of ``actual`` against ``expected`` (see the module docstring)."""
    e_frac, a_frac = bin_fractions(expected, actual, bins)
    e_s = np.maximum(e_frac, EPSILON)
    a_s = np.maximum(a_frac, EPSILON)
    return float(np.sum((a_s - e_s) * np.log(a_s / e_s)))


def drift_status(value: float) -> str:
    """``stable`` below 0.1, ``moderate`` below 0.25, else ``drift``."""
    if value < STABLE_BELOW:
        return STABLE
    if value < MODERATE_BELOW:
        return MODERATE
    return DRIFT


def _column_values(table: pa.Table, feature: str, role: str) -> np.ndarray:
    column = table.column(feature)
    if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
        raise InvalidInputError(
            field=f"{role} column {feature!r}",
            value=str(column.type),
            allowed="a numeric column (integer or floating point)",
        )
    values = pc.drop_null(column).to_numpy().astype(np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        raise InvalidInputError(
            field=f"{role} column {feature!r}",
            value=f"no values among {table.num_rows} row(s) (all null or NaN)",
            allowed="at least one value to compare",
        )
    return values


def drift_report(
    training: pa.Table, served: pa.Table, features: Sequence[str], *, bins: int = 10
) -> pa.Table:
    """One row per feature: ``feature``, ``psi``, ``training_rows``, ``served_rows``
    (the non-null, non-NaN values compared) and ``status`` (``drift_status``)."""
    for role, table in (("training", training), ("served", served)):
        missing = [f for f in features if f not in table.column_names]
        if missing:
            raise InvalidInputError(
                field=f"{role} columns",
                value=missing,
                allowed=f"every feature of the signature; the {role} table has "
                f"{', '.join(table.column_names) or 'no columns'}",
            )
    rows: dict[str, list[object]] = {name: [] for name in REPORT_SCHEMA.names}
    for feature in features:
        expected = _column_values(training, feature, "training")
        actual = _column_values(served, feature, "served")
        value = psi(expected, actual, bins)
        rows["feature"].append(feature)
        rows["psi"].append(value)
        rows["training_rows"].append(int(expected.size))
        rows["served_rows"].append(int(actual.size))
        rows["status"].append(drift_status(value))
    return pa.table(rows, schema=REPORT_SCHEMA)
