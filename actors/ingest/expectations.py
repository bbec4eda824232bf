"""Data quality: expectations over one batch split it into passed and quarantined rows.

``evaluate`` checks every rule, vectorised (``actors/ingest/dq_rules.py``), then acts:

* ``warn``: count and report; the rows stay in ``passed``;
* ``quarantine``: the rows go to ``quarantined`` (``actors/ingest/quarantine.py``
  columns); a row breaking several rules is quarantined once, with every rule label in
  ``_dq_rule`` and every reason in ``_dq_reason``;
* ``fail``: after all rules are checked, ``ExpectationFailedError`` names the first
  failing rule, its count and up to 3 examples (and how many other rules failed).

Table rules (``row_count``, ``freshness``) judge the batch and can only warn or fail.
Invariant: ``passed.num_rows + quarantined.num_rows == table.num_rows``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.ingest.dq_rules import columns_of, reason, table_problem, violations
from actors.ingest.pipeline_errors import ExpectationFailedError
from actors.ingest.quarantine import check_source_ref, quarantine_rows
from actors.ingest.spec import ROW_RULES, Action, Expectation

MAX_EXAMPLES = 3
_EXAMPLE_CHARS = 60


@dataclass(frozen=True)
class RuleResult:
    """One rule's verdict: rows that violated it (row rules) or 1/0 (table rules)."""

    label: str
    rule: str
    action: Action
    violations: int
    detail: str  # "3 of 100 rows: amount outside [0, 1000]; examples: ..." or ""


@dataclass(frozen=True)
class ExpectationOutcome:
    """The batch split by the rules, with what each rule found."""

    passed: pa.Table
    quarantined: pa.Table
    passed_row_ids: pa.Int64Array  # passed row i is input row passed_row_ids[i]
    warnings: list[str]
    failures: list[str]
    results: tuple[RuleResult, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Violations per rule label (rows, or 1 for a violated table rule)."""
        return {result.label: result.violations for result in self.results}


@dataclass
class _Quarantine:
    """Rows to quarantine so far, and each quarantining rule's mask, label and reason.

    The ``_dq_rule`` / ``_dq_reason`` texts are built at the end for the quarantined rows
    only: building them for every row costs string work per row of every batch.
    """

    any: pa.Array
    hits: list[tuple[pa.Array, str, str]] = field(default_factory=list)


def evaluate(
    table: pa.Table,
    expectations: Sequence[Expectation],
    *,
    now: datetime,
    run_id: str,
    source_ref: pa.Array | pa.ChunkedArray | None = None,
    raise_on_fail: bool = True,
) -> ExpectationOutcome:
    """Check ``expectations`` on ``table``; split it into passed and quarantined rows.

    ``now`` judges freshness (naive means UTC); ``source_ref`` holds, per row, where it
    came from (``file:row`` or a message id) for ``_dq_source``. With ``raise_on_fail``
    (the default) a violated ``fail`` rule raises ``ExpectationFailedError``; without,
    its message is only listed in ``failures``.
    """
    check_source_ref(table, source_ref)
    rows = table.num_rows
    quarantine = _Quarantine(pa.array(np.zeros(rows, dtype=bool)))
    results = [_check(table, rule, now, source_ref, quarantine) for rule in expectations]
    warnings = [_message(r) for r in results if r.violations and r.action == "warn"]
    failures = [_message(r) for r in results if r.violations and r.action == "fail"]
    if failures and raise_on_fail:
        first = next(r for r in results if r.violations and r.action == "fail")
        raise ExpectationFailedError(
            rule=first.label, detail=first.detail, count=first.violations, failures=failures
        )
    bad = pc.indices_nonzero(quarantine.any)
    good = pc.indices_nonzero(pc.invert(quarantine.any))
    passed = table.take(good) if len(bad) else table  # no copy when every row passes
    rules, reasons = _labels(quarantine.hits, bad)
    quarantined = quarantine_rows(
        table.take(bad),
        pa.array(np.arange(len(bad), dtype=np.int64)),
        rules=rules,
        reasons=reasons,
        run_id=run_id,
        source_ref=None if source_ref is None else source_ref.take(bad),
    )
    return ExpectationOutcome(passed, quarantined, good, warnings, failures, tuple(results))


def _labels(hits: list[tuple[pa.Array, str, str]], bad: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``_dq_rule`` and ``_dq_reason`` of the rows ``bad``: every rule each broke."""
    rules = reasons = _nulls(len(bad))
    for mask, label, why in hits:
        hit = pc.take(mask, bad)
        rules = _append(rules, hit, label, ", ")
        reasons = _append(reasons, hit, why, "; ")
    return rules, reasons


def _check(
    table: pa.Table,
    rule: Expectation,
    now: datetime,
    source_ref: pa.Array | pa.ChunkedArray | None,
    quarantine: _Quarantine,
) -> RuleResult:
    if not isinstance(rule, ROW_RULES):
        problem = table_problem(table, rule, now)
        return RuleResult(
            rule.label, rule.rule, rule.action, int(problem is not None), problem or ""
        )
    mask = violations(table, rule)
    count = int(pc.sum(mask).as_py() or 0)
    if count and rule.action == "quarantine":
        quarantine.hits.append((mask, rule.label, reason(rule)))
        quarantine.any = pc.or_(quarantine.any, mask)
    detail = ""
    if count:
        examples = _examples(table, rule, mask, source_ref)
        detail = f"{count} of {table.num_rows} rows: {reason(rule)}; examples: {examples}"
    return RuleResult(rule.label, rule.rule, rule.action, count, detail)


def _append(texts: pa.Array, mask: pa.Array, text: str, separator: str) -> pa.Array:
    """``texts`` with ``text`` joined on where ``mask`` is true.

    Built step by step: pyarrow 26's ``binary_join_element_wise(null_handling="skip")``
    drops rows whose inputs are all null, so it cannot join a sparse set of labels.
    """
    joined = pc.binary_join_element_wise(texts, pa.scalar(text), separator)
    appended = pc.if_else(pc.is_null(texts), pa.scalar(text), joined)
    return pc.if_else(mask, appended, texts)


def _examples(
    table: pa.Table,
    rule: Expectation,
    mask: pa.Array,
    source_ref: pa.Array | pa.ChunkedArray | None,
) -> str:
    rows = pc.indices_nonzero(mask).slice(0, MAX_EXAMPLES).to_pylist()
    columns = columns_of(rule) or table.column_names
    sample = table.select(columns).take(rows).to_pylist()
    refs = source_ref.take(rows).to_pylist() if source_ref is not None else rows
    shown = []
    for ref, values in zip(refs, sample, strict=True):
        where = str(ref) if source_ref is not None else f"row {ref}"
        shown.append(f"{where} ({_short(values)})")
    return ", ".join(shown)


def _short(values: dict[str, Any]) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in values.items())
    return text if len(text) <= _EXAMPLE_CHARS else text[: _EXAMPLE_CHARS - 1] + "…"


def _message(result: RuleResult) -> str:
    return f"expectation {result.label!r} ({result.action}): {result.detail}"


def _nulls(rows: int) -> pa.Array:
    return pa.nulls(rows, pa.string())
