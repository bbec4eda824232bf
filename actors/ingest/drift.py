"""Schema drift: columns in the data that the sink table does not have yet.

``check_drift`` compares the schema that reaches the sink (after the transforms, so a
``select`` that drops a new source column means no drift) with the table's, and decides
by the pipeline's policy (``PipelineSpec.drift_policy``):

* ``add_columns`` -> ``evolve``: the runner appends with evolution on, adding them;
* ``fail`` -> ``SchemaDriftError`` naming the columns; nothing is written;
* ``quarantine`` -> ``quarantine``: every row of the batch goes to the quarantine
  table (``quarantine_drift``) with a reason naming the columns.

Only new columns are drift here; type changes are the Lake's to judge (its write plan
widens what Iceberg can widen and refuses the rest, naming the column).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pyarrow as pa

from actors.ingest.pipeline_errors import SchemaDriftError, listed
from actors.ingest.quarantine import DRIFT_RULE, quarantine_all
from actors.ingest.spec import DriftPolicy


@dataclass(frozen=True)
class DriftDecision:
    """New columns and what to do about them."""

    new_columns: tuple[str, ...]
    action: Literal["none", "evolve", "quarantine"]
    reason: str  # "" when action is none

    @property
    def drifted(self) -> bool:
        return bool(self.new_columns)


def check_drift(
    incoming: pa.Schema,
    table_schema: pa.Schema | None,
    policy: DriftPolicy,
    *,
    table: str = "the sink table",
) -> DriftDecision:
    """Decide what columns of ``incoming`` missing from ``table_schema`` do.

    ``table_schema`` None means the table does not exist yet: it is created from the
    data, so nothing drifts. Raises ``SchemaDriftError`` under policy ``fail``.
    """
    if table_schema is None:
        return DriftDecision((), "none", "")
    known = set(table_schema.names)
    new = tuple(name for name in incoming.names if name not in known)
    if not new:
        return DriftDecision((), "none", "")
    reason = f"new columns {listed(new)} are not in table {table}"
    if policy == "add_columns":
        return DriftDecision(new, "evolve", reason)
    if policy == "quarantine":
        return DriftDecision(new, "quarantine", f"{reason} (on_drift: quarantine)")
    raise SchemaDriftError(table=table, columns=list(new))


def quarantine_drift(
    batch: pa.Table,
    decision: DriftDecision,
    *,
    run_id: str,
    source_ref: pa.Array | pa.ChunkedArray | None = None,
) -> pa.Table:
    """Every row of ``batch`` as quarantine rows, ``_dq_rule`` = ``schema_drift``."""
    return quarantine_all(
        batch, rule=DRIFT_RULE, reason=decision.reason, run_id=run_id, source_ref=source_ref
    )
