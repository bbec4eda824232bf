"""Prediction requests checked against a model's signature (JSON rows, columns, Arrow)."""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from actors.cortex.errors import ModelNotServableError, SignatureViolationError
from actors.cortex.signature import (
    MAX_PROBLEMS,
    feature_matrix,
    input_names,
    parse_arrow_body,
    parse_json_body,
    signature_inputs,
)

SIGNATURE: dict[str, Any] = {
    "inputs": [
        {"name": "age", "type": "double"},
        {"name": "bmi", "type": "float"},
        {"name": "visits", "type": "int64"},
        {"name": "smoker", "type": "bool"},
    ],
    "output": {"name": "target", "type": "double", "kind": "value"},
    "task": "regression",
}
NAMES = ["age", "bmi", "visits", "smoker"]


def good_row(i: int = 0) -> dict[str, Any]:
    return {"age": 30.5 + i, "bmi": 22.0, "visits": 3, "smoker": i % 2 == 0}


def parse(body: Any, **kwargs: Any) -> pa.Table:
    return parse_json_body(body, SIGNATURE, model="churn", version=3, **kwargs)


def problems_of(body: Any, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(SignatureViolationError) as caught:
        parse(body, **kwargs)
    error = caught.value
    assert error.http_status == 422 and error.code == "signature_violation"
    return error.problems


def arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


# ---- the good path ----------------------------------------------------------------


def test_rows_become_float64_columns_in_signature_order() -> None:
    # Keys in another order than the signature's: the table follows the signature.
    rows = [{"smoker": False, "visits": 2, "bmi": 20.5, "age": 41.0}, good_row(1)]
    table = parse({"instances": rows})
    assert table.schema.names == NAMES
    assert all(f.type == pa.float64() for f in table.schema)
    assert table.column("age").to_pylist() == [41.0, 31.5]
    assert table.column("visits").to_pylist() == [2.0, 3.0]
    assert table.column("smoker").to_pylist() == [0.0, 0.0]


def test_columnar_form_gives_the_same_table_as_rows() -> None:
    rows = [good_row(i) for i in range(7)]
    columns = {name: [row[name] for row in rows] for name in reversed(NAMES)}
    assert parse({"columns": columns}).equals(parse({"instances": rows}))


def test_a_boolean_input_takes_true_false_and_0_1() -> None:
    rows = [{**good_row(), "smoker": flag} for flag in (True, False, 1, 0, 1.0)]
    assert parse({"instances": rows}).column("smoker").to_pylist() == [1, 0, 1, 0, 1]


def test_a_huge_integer_that_fits_a_float_is_accepted() -> None:
    table = parse({"instances": [{**good_row(), "visits": 2**70}]})
    assert table.column("visits").to_pylist() == [float(2**70)]


def test_feature_matrix_is_float32_in_signature_order() -> None:
    table = parse({"instances": [good_row(0), good_row(1)]}).select(NAMES[::-1])
    matrix = feature_matrix(table, SIGNATURE)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 4)
    np.testing.assert_array_equal(matrix[:, 0], np.array([30.5, 31.5], dtype=np.float32))
    np.testing.assert_array_equal(matrix[:, 3], np.array([1, 0], dtype=np.float32))
    assert input_names(SIGNATURE) == NAMES


# ---- each kind of problem, with its field and row -----------------------------------


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("abc", "'abc' is not a number"),
        ("3.5", "'3.5' is not a number"),  # strings are never coerced
        (True, "True is a boolean, not a number"),
        (None, "is null"),
        (float("nan"), "nan is not a finite number"),
        (float("inf"), "inf is not a finite number"),
        ([1.0], "[1.0] is not a number"),
        (10**400, "too large for a float"),
    ],
)
def test_a_bad_value_names_its_row_and_field(value: Any, words: str) -> None:
    rows = [good_row(0), good_row(1), good_row(2), {**good_row(3), "age": value}]
    [problem] = problems_of({"instances": rows})
    assert problem["field"] == "age" and problem["row"] == 3
    assert words in problem["problem"]


def test_a_boolean_input_refuses_other_numbers() -> None:
    [problem] = problems_of({"instances": [{**good_row(), "smoker": 2}]})
    assert problem == {
        "field": "smoker",
        "row": 0,
        "problem": "2 is not a boolean (true/false or 0/1)",
    }


def test_missing_and_unknown_fields_are_reported_per_row() -> None:
    missing = good_row(0)
    del missing["bmi"]
    extra = {**good_row(1), "zip": "90210"}
    problems = problems_of({"instances": [missing, extra]})
    assert {"field": "bmi", "row": 0, "problem": "is missing"} in problems
    assert {"field": "zip", "row": 1, "problem": "is not an input of this model"} in problems
    assert len(problems) == 2  # a missing field is not reported again as a bad value


def test_a_row_that_is_not_an_object() -> None:
    problems = problems_of({"instances": [good_row(), [1, 2, 3, 4], good_row()]})
    assert problems == [{"field": None, "row": 1, "problem": "is a JSON array, not an object"}]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ([good_row()], "the body is a JSON array, not an object"),
        ({}, "neither instances nor columns"),
        ({"instances": [good_row()], "columns": {}}, "both instances and columns"),
        ({"instances": []}, "no rows"),
        ({"instances": {"age": 1}}, "must be an array of objects"),
        ({"columns": [1]}, "must be an object of arrays"),
    ],
)
def test_a_badly_shaped_body(body: Any, words: str) -> None:
    problems = problems_of(body)
    assert any(words in p["problem"] for p in problems), problems


def test_an_unknown_top_level_key_is_refused() -> None:
    problems = problems_of({"instances": [good_row()], "parameters": {}})
    assert problems[0]["field"] == "parameters"
    assert "unknown top-level key" in problems[0]["problem"]


def test_more_rows_than_allowed_is_one_problem_not_a_scan() -> None:
    problems = problems_of({"instances": [good_row()] * 11}, max_rows=10)
    assert len(problems) == 1
    assert "11 rows is more than the 10" in problems[0]["problem"]
    assert problems[0]["field"] == "instances"


def test_columns_of_unequal_length() -> None:
    columns = {"age": [1.0, 2.0, 3.0], "bmi": [1.0, 2.0], "visits": [1, 2, 3], "smoker": [0] * 3}
    problems = problems_of({"columns": columns})
    assert problems == [
        {"field": "bmi", "row": None, "problem": "has 2 values; the other columns have 3"}
    ]


def test_columnar_problems_name_field_and_row() -> None:
    columns: dict[str, Any] = {
        "age": [1.0, "x"],
        "bmi": [1.0, 2.0],
        "visits": 5,
        "extra": [1, 2],
    }
    problems = problems_of({"columns": columns})
    assert {"field": "age", "row": 1, "problem": "'x' is not a number"} in problems
    assert {
        "field": "visits",
        "row": None,
        "problem": "must be an array, not a number or boolean",
    } in problems
    assert {"field": "smoker", "row": None, "problem": "is missing"} in problems
    assert {"field": "extra", "row": None, "problem": "is not an input of this model"} in problems


def test_every_problem_lands_in_one_error_and_its_body() -> None:
    rows = [
        {**good_row(0), "age": "old"},
        {**good_row(1), "bmi": None, "visits": False},
        {"age": 1.0, "bmi": 2.0, "visits": 3, "smoker": True, "extra": 1},
    ]
    with pytest.raises(SignatureViolationError) as caught:
        parse({"instances": rows})
    error = caught.value
    expected = [
        {"field": "extra", "row": 2, "problem": "is not an input of this model"},
        {"field": "age", "row": 0, "problem": "'old' is not a number"},
        {"field": "bmi", "row": 1, "problem": "is null"},
        {"field": "visits", "row": 1, "problem": "False is a boolean, not a number"},
    ]
    assert error.problems == expected
    body = error.to_dict("req-1")
    assert body["error"]["code"] == "signature_violation"
    assert body["error"]["request_id"] == "req-1"
    assert body["error"]["problems"] == expected
    json.dumps(body)  # the gateway sends it as is
    message = error.message
    assert "'churn' version 3" in message
    assert "row 0 field 'age': 'old' is not a number" in message
    assert "age, bmi, visits, smoker" in message


def test_the_message_shows_a_few_problems_and_the_body_all() -> None:
    rows = [{**good_row(i), "age": "x"} for i in range(20)]
    with pytest.raises(SignatureViolationError) as caught:
        parse({"instances": rows})
    assert len(caught.value.problems) == 20
    assert "and 15 more (see problems)" in caught.value.message


def test_problems_are_capped() -> None:
    rows = [{**good_row(i), "age": "x", "bmi": "y"} for i in range(MAX_PROBLEMS * 2)]
    problems = problems_of({"instances": rows})
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1]["problem"].startswith("more problems not listed")


def test_the_error_survives_pickling_with_its_problems() -> None:
    with pytest.raises(SignatureViolationError) as caught:
        parse({"instances": [{**good_row(), "age": "x"}]})
    copy = pickle.loads(pickle.dumps(caught.value))
    assert isinstance(copy, SignatureViolationError)
    assert copy.to_dict()["error"]["problems"] == caught.value.problems


# ---- Arrow bodies -----------------------------------------------------------------------


def test_arrow_stream_gives_the_same_table_as_json() -> None:
    rows = [good_row(i) for i in range(5)]
    sent = pa.table(
        {
            "smoker": pa.array([r["smoker"] for r in rows]),
            "visits": pa.array([r["visits"] for r in rows], pa.int32()),
            "age": pa.array([r["age"] for r in rows]),
            "bmi": pa.array([r["bmi"] for r in rows], pa.float32()),
        }
    )
    table = parse_arrow_body(arrow_bytes(sent), SIGNATURE, model="churn", version=3)
    assert table.schema.names == NAMES
    assert table.equals(parse({"instances": rows}))


def arrow_problems(data: bytes, **kwargs: Any) -> list[dict[str, Any]]:
    with pytest.raises(SignatureViolationError) as caught:
        parse_arrow_body(data, SIGNATURE, model="churn", version=3, **kwargs)
    return caught.value.problems


def test_arrow_unreadable_bytes() -> None:
    [problem] = arrow_problems(b"this is not arrow")
    assert "not an Arrow IPC stream" in problem["problem"]


def test_arrow_missing_unknown_and_non_numeric_columns() -> None:
    sent = pa.table({"age": ["a"], "bmi": [1.0], "smoker": [True], "zip": [1]})
    problems = arrow_problems(arrow_bytes(sent))
    assert {"field": "zip", "row": None, "problem": "is not an input of this model"} in problems
    assert {"field": "visits", "row": None, "problem": "is missing"} in problems
    sent = pa.table({"age": ["a"], "bmi": [1.0], "visits": [True], "smoker": [True]})
    problems = arrow_problems(arrow_bytes(sent))
    assert {
        "field": "age",
        "row": None,
        "problem": "has Arrow type string, not a number",
    } in problems
    assert {
        "field": "visits",
        "row": None,
        "problem": "has Arrow type bool, not a number",
    } in problems


def test_arrow_nulls_and_nan_name_their_rows() -> None:
    sent = pa.table(
        {
            "age": [1.0, None, 3.0],
            "bmi": [1.0, 2.0, float("nan")],
            "visits": [1, 2, 3],
            "smoker": [0, 1, 2],
        }
    )
    problems = arrow_problems(arrow_bytes(sent))
    assert {"field": "age", "row": 1, "problem": "is null"} in problems
    assert {"field": "bmi", "row": 2, "problem": "nan is not a finite number"} in problems
    assert {"field": "smoker", "row": 2, "problem": "2.0 is not a boolean (0 or 1)"} in problems


def test_arrow_row_limits() -> None:
    sent = pa.table({n: pa.array([1.0] * 3) for n in NAMES})
    [problem] = arrow_problems(arrow_bytes(sent), max_rows=2)
    assert "3 rows is more than the 2" in problem["problem"]
    [problem] = arrow_problems(arrow_bytes(sent.slice(0, 0)))
    assert "no rows" in problem["problem"]


# ---- signatures Cortex cannot serve ------------------------------------------------------


@pytest.mark.parametrize(
    "signature",
    [
        {},
        {"inputs": []},
        {"inputs": [{"type": "double"}]},
        {"inputs": [{"name": "city", "type": "string"}]},
        {"inputs": [{"name": "a", "type": "double"}, {"name": "a", "type": "double"}]},
    ],
)
def test_a_signature_without_numeric_inputs_is_not_servable(signature: dict[str, Any]) -> None:
    with pytest.raises(ModelNotServableError, match="cannot serve model 'churn' version 3"):
        signature_inputs(signature, model="churn", version=3)
