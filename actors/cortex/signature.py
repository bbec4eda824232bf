"""A prediction request checked against a model version's signature, as an Arrow table.

The registry records a version's ``signature``: ``{"inputs": [{"name", "type"}, ...],
"output": {...}, "task": ...}`` with Arrow type strings (``PinnedData.signature``).
A request names every input and nothing else, each value a finite number (a boolean
input also takes true/false). JSON bodies come as rows (``{"instances": [{...}]}``) or
columns (``{"columns": {"age": [...]}}``); Arrow bodies as an IPC *stream*.

Every problem of a request is collected (up to ``MAX_PROBLEMS``) before one
``SignatureViolationError`` is raised, so a client sees all of them in one 422. The
checks run per column (type sets and numpy masks), not per cell, so a body of thousands
of rows costs a few list passes; the per-cell path runs only to name the bad cells.

Integer inputs accept any finite number: the network sees float32 either way, and a
fractional value for an integer column is the caller's modelling choice, not a crash.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from actors.cortex.errors import ModelNotServableError, SignatureViolationError
from cluster.errors import InvalidInputError

__all__ = [
    "ARROW_STREAM_MEDIA_TYPE",
    "MAX_PROBLEMS",
    "MAX_ROWS_DEFAULT",
    "Input",
    "feature_matrix",
    "input_names",
    "parse_arrow_body",
    "parse_json_body",
    "signature_inputs",
]

MAX_ROWS_DEFAULT = 10_000
MAX_PROBLEMS = 100
ARROW_STREAM_MEDIA_TYPE = "application/vnd.apache.arrow.stream"

_NUMERIC_PREFIXES = ("int", "uint", "float", "double", "halffloat", "decimal")
_MISSING = object()  # a row without the field: reported once as missing, not per value
_FAST_NUMBER = frozenset({int, float})
_FAST_BOOL = frozenset({bool})


@dataclass(frozen=True)
class Input:
    """One input of a signature: its name and whether it is a boolean column."""

    name: str
    boolean: bool


def signature_inputs(signature: Any, *, model: str, version: int) -> list[Input]:
    """The signature's inputs in order; ``ModelNotServableError`` if Cortex cannot feed them."""
    fix = "register the version again from a Forge run, whose signature lists numeric inputs"
    raw = signature.get("inputs") if isinstance(signature, dict) else None
    if not isinstance(raw, list) or not raw:
        raise ModelNotServableError(
            model=model, version=version, reason="its signature lists no inputs", fix=fix
        )
    inputs: list[Input] = []
    for entry in raw:
        name = entry.get("name") if isinstance(entry, dict) else None
        kind = str(entry.get("type", "")) if isinstance(entry, dict) else ""
        if not isinstance(name, str) or not name:
            reason = f"its signature has an input without a name: {entry!r}"
            raise ModelNotServableError(model=model, version=version, reason=reason, fix=fix)
        if kind != "bool" and not kind.startswith(_NUMERIC_PREFIXES):
            reason = f"input {name!r} has type {kind!r}, not a number or boolean"
            raise ModelNotServableError(model=model, version=version, reason=reason, fix=fix)
        inputs.append(Input(name, kind == "bool"))
    names = [i.name for i in inputs]
    if len(set(names)) != len(names):
        reason = f"its signature names an input twice: {names}"
        raise ModelNotServableError(model=model, version=version, reason=reason, fix=fix)
    return inputs


def input_names(signature: dict[str, Any]) -> list[str]:
    """The signature's input names in order (no checks beyond their presence)."""
    return [str(entry["name"]) for entry in signature.get("inputs") or []]


class _Problems:
    """Problems found so far, capped: past the cap only the fact of more is kept."""

    def __init__(self, limit: int = MAX_PROBLEMS) -> None:
        self.items: list[dict[str, Any]] = []
        self.limit = limit
        self.overflow = False

    @property
    def full(self) -> bool:
        return len(self.items) >= self.limit

    def add(self, problem: str, *, field: str | None = None, row: int | None = None) -> None:
        if self.full:
            self.overflow = True
            return
        self.items.append({"field": field, "row": row, "problem": problem})

    def raise_any(self, model: str, version: int, inputs: list[Input]) -> None:
        if not self.items:
            return
        items = list(self.items)
        if self.overflow:
            items.append(
                {
                    "field": None,
                    "row": None,
                    "problem": f"more problems not listed (first {len(self.items)} shown)",
                }
            )
        raise SignatureViolationError(
            model=model, version=version, problems=items, inputs=[i.name for i in inputs]
        )


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _cell_problem(value: Any, boolean: bool) -> tuple[float | None, str | None]:
    """(the value as a float, None) or (None, what is wrong with it)."""
    if value is None:
        return None, "is null"
    if isinstance(value, bool | np.bool_):
        if boolean:
            return float(value), None
        return None, f"{_show(value)} is a boolean, not a number"
    if not isinstance(value, int | float | np.integer | np.floating):
        return None, f"{_show(value)} is not a number"
    try:
        number = float(value)
    except OverflowError:
        return None, f"{_show(value)} is too large for a float"
    if not math.isfinite(number):
        return None, f"{_show(value)} is not a finite number"
    if boolean and number not in (0.0, 1.0):
        return None, f"{_show(value)} is not a boolean (true/false or 0/1)"
    return number, None


def _check_values(values: list[Any], field: Input, problems: _Problems) -> np.ndarray | None:
    """The column as float64, or None after adding a problem per bad cell."""
    kinds = set(map(type, values))
    fast = _FAST_BOOL | _FAST_NUMBER if field.boolean else _FAST_NUMBER
    if kinds <= fast:
        try:
            column = np.array(values, dtype=np.float64)
        except OverflowError:  # an int beyond float range: the per-cell path names it
            column = None
        if column is not None:
            bad = ~np.isfinite(column)
            if field.boolean:
                bad |= (column != 0.0) & (column != 1.0)
            if not bad.any():
                return column
    found_bad = False
    numbers = []
    for i, value in enumerate(values):
        if value is _MISSING:
            found_bad = True  # reported as a missing field already
            continue
        number, problem = _cell_problem(value, field.boolean)
        if problem is not None:
            found_bad = True
            problems.add(problem, field=field.name, row=i)
            if problems.overflow:
                return None  # no room left: stop scanning, the list says there is more
        else:
            numbers.append(number)
    return None if found_bad else np.array(numbers, dtype=np.float64)


def _table(inputs: list[Input], columns: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({i.name: pa.array(columns[i.name], type=pa.float64()) for i in inputs})


# --------------------------------------------------------------------- JSON bodies


def parse_json_body(
    body: Any,
    signature: dict[str, Any],
    *,
    model: str,
    version: int,
    max_rows: int = MAX_ROWS_DEFAULT,
) -> pa.Table:
    """A JSON request (rows or columns) as a float64 table of the signature's inputs, in
    signature order; every problem at once in a ``SignatureViolationError``."""
    inputs = signature_inputs(signature, model=model, version=version)
    problems = _Problems()
    columns: dict[str, np.ndarray] | None = None
    form = _body_form(body, problems)
    if form == "instances":
        columns = _from_rows(body["instances"], inputs, problems, max_rows)
    elif form == "columns":
        columns = _from_columns(body["columns"], inputs, problems, max_rows)
    problems.raise_any(model, version, inputs)
    assert columns is not None  # no problems means a form was parsed
    return _table(inputs, columns)


def _body_form(body: Any, problems: _Problems) -> str | None:
    how = 'send {"instances": [{...}, ...]} (rows) or {"columns": {"name": [...]}}'
    if not isinstance(body, dict):
        problems.add(f"the body is a JSON {_json_kind(body)}, not an object; {how}")
        return None
    forms = [key for key in ("instances", "columns") if key in body]
    for key in body:
        if key not in ("instances", "columns"):
            problems.add(f"unknown top-level key {_show(key)}; {how}", field=str(key))
    if len(forms) != 1:
        which = "both instances and columns" if forms else "neither instances nor columns"
        problems.add(f"the body has {which}; {how}")
        return None
    return forms[0]


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "number or boolean" if isinstance(value, int | float) else type(value).__name__


def _row_count_ok(count: int, max_rows: int, problems: _Problems, field: str) -> bool:
    if count == 0:
        problems.add("no rows: send at least one", field=field)
        return False
    if count > max_rows:
        problems.add(
            f"{count} rows is more than the {max_rows} one request may hold; "
            "split it into smaller requests or use a batch scoring job",
            field=field,
        )
        return False
    return True


def _from_rows(
    rows: Any, inputs: list[Input], problems: _Problems, max_rows: int
) -> dict[str, np.ndarray] | None:
    if not isinstance(rows, list):
        problems.add(f"must be an array of objects, not a {_json_kind(rows)}", field="instances")
        return None
    if not _row_count_ok(len(rows), max_rows, problems, "instances"):
        return None
    names = [i.name for i in inputs]
    known = frozenset(names)
    all_dicts = True
    for i, row in enumerate(rows):
        if type(row) is not dict:
            all_dicts = False
            problems.add(f"is a JSON {_json_kind(row)}, not an object", row=i)
        elif row.keys() != known:  # one C-level comparison for the usual, well-formed row
            _row_keys(row, i, names, known, problems)
    columns: dict[str, np.ndarray] = {}
    for field in inputs:
        name = field.name
        if all_dicts:
            values = [row.get(name, _MISSING) for row in rows]
        else:
            values = [r.get(name, _MISSING) if type(r) is dict else _MISSING for r in rows]
        column = _check_values(values, field, problems)
        if column is not None:
            columns[name] = column
    return columns


def _row_keys(
    row: dict[str, Any], index: int, names: list[str], known: frozenset[str], problems: _Problems
) -> None:
    for name in names:
        if name not in row:
            problems.add("is missing", field=name, row=index)
    for key in row:
        if key not in known:
            problems.add("is not an input of this model", field=str(key), row=index)


def _from_columns(
    given: Any, inputs: list[Input], problems: _Problems, max_rows: int
) -> dict[str, np.ndarray] | None:
    if not isinstance(given, dict):
        problems.add(f"must be an object of arrays, not a {_json_kind(given)}", field="columns")
        return None
    known = {i.name for i in inputs}
    for key in given:
        if key not in known:
            problems.add("is not an input of this model", field=str(key))
    lists: dict[str, list[Any]] = {}
    for field in inputs:
        values = given.get(field.name, _MISSING)
        if values is _MISSING:
            problems.add("is missing", field=field.name)
        elif not isinstance(values, list):
            problems.add(f"must be an array, not a {_json_kind(values)}", field=field.name)
        else:
            lists[field.name] = values
    if not lists:
        return None
    lengths = Counter(len(v) for v in lists.values())
    expected = max(lengths, key=lambda n: (lengths[n], n))  # the most common length
    for name, values in lists.items():
        if len(values) != expected:
            problems.add(f"has {len(values)} values; the other columns have {expected}", field=name)
    if not _row_count_ok(max(lengths), max_rows, problems, "columns"):
        return None
    columns: dict[str, np.ndarray] = {}
    for field in inputs:
        values = lists.get(field.name, [])
        column = _check_values(values, field, problems) if field.name in lists else None
        if column is not None:
            columns[field.name] = column
    return columns


# -------------------------------------------------------------------- Arrow bodies


def parse_arrow_body(
    data: bytes,
    signature: dict[str, Any],
    *,
    model: str,
    version: int,
    max_rows: int = MAX_ROWS_DEFAULT,
) -> pa.Table:
    """An Arrow IPC stream as a float64 table of the signature's inputs, in signature
    order; every problem at once in a ``SignatureViolationError``."""
    inputs = signature_inputs(signature, model=model, version=version)
    problems = _Problems()
    try:
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
    except (pa.ArrowException, OSError, TypeError, ValueError) as exc:
        problem = (
            f"the body is not an Arrow IPC stream ({exc}); write it with "
            f"pyarrow.ipc.new_stream and send it as {ARROW_STREAM_MEDIA_TYPE}"
        )
        raise SignatureViolationError(
            model=model,
            version=version,
            problems=[{"field": None, "row": None, "problem": problem}],
            inputs=[i.name for i in inputs],
        ) from None
    columns = _arrow_columns(table, inputs, problems, max_rows)
    problems.raise_any(model, version, inputs)
    return _table(inputs, columns)


def _arrow_columns(
    table: pa.Table, inputs: list[Input], problems: _Problems, max_rows: int
) -> dict[str, np.ndarray]:
    names = table.schema.names
    known = {i.name for i in inputs}
    for name, count in Counter(names).items():
        if count > 1:
            problems.add(f"appears {count} times; send each column once", field=name)
        if name not in known:
            problems.add("is not an input of this model", field=name)
    for field in inputs:
        if field.name not in names:
            problems.add("is missing", field=field.name)
    columns: dict[str, np.ndarray] = {}
    if problems.items or not _row_count_ok(table.num_rows, max_rows, problems, "rows"):
        return columns
    for field in inputs:
        column = _arrow_column(table.column(field.name), field, problems)
        if column is not None:
            columns[field.name] = column
    return columns


def _arrow_column(column: pa.ChunkedArray, field: Input, problems: _Problems) -> np.ndarray | None:
    kind = column.type
    boolean_ok = field.boolean and pa.types.is_boolean(kind)
    numeric = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
    if not (numeric or boolean_ok):
        wanted = "a boolean or number" if field.boolean else "a number"
        problems.add(f"has Arrow type {kind}, not {wanted}", field=field.name)
        return None
    if column.null_count:
        for row in np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False)):
            problems.add("is null", field=field.name, row=int(row))
            if problems.overflow:
                break
        return None
    values = pc.cast(column, pa.float64()).to_numpy()
    bad = ~np.isfinite(values)
    if field.boolean:
        bad |= (values != 0.0) & (values != 1.0)
    if not bad.any():
        return np.asarray(values, dtype=np.float64)
    wrong = "is not a boolean (0 or 1)" if field.boolean else "is not a finite number"
    for row in np.flatnonzero(bad):
        problems.add(f"{float(values[row])!r} {wrong}", field=field.name, row=int(row))
        if problems.overflow:
            break
    return None


# ------------------------------------------------------------------ model input


def feature_matrix(table: pa.Table, signature: dict[str, Any]) -> np.ndarray:
    """The table's inputs as float32 ``[N, F]`` in signature order: what the net takes."""
    names = input_names(signature)
    missing = [n for n in names if n not in table.schema.names]
    if missing:
        raise InvalidInputError(
            field="features",
            value=table.schema.names,
            allowed=f"a table with the signature's inputs {names} (missing {missing})",
        )
    matrix = np.empty((table.num_rows, len(names)), dtype=np.float32)
    for j, name in enumerate(names):
        # Through float64 (exact for every int below 2**53), then one rounding to float32.
        matrix[:, j] = table.column(name).to_numpy().astype(np.float64, copy=False)
    return matrix
