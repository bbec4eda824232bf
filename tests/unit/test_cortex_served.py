"""Serving a registry version: same numbers as the net in-process, outputs on the wire."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from actors.cortex.errors import DeviceUnavailableError, ModelNotServableError
from actors.cortex.served import (
    ServedModel,
    model_id,
    outputs_to_arrow,
    outputs_to_rows,
    parse_model_id,
    resolve_device,
    split_outputs,
)
from actors.cortex.signature import feature_matrix, parse_json_body
from actors.forge.nets import ForgeNet, build_model, load_artifact, save_artifact
from cluster.errors import InvalidInputError

FEATURES = ["age", "bmi", "visits"]


def model_spec(task: str, kind: str = "mlp", classes: int = 3) -> dict[str, Any]:
    return {
        "task": task,
        "type": kind,
        "hidden": [8, 4] if kind == "mlp" else [],
        "dropout": 0.0,
        "class_path": None,
        "kwargs": {},
        "features": list(FEATURES),
        "label": "target",
        "in_features": len(FEATURES),
        "out_features": classes if task == "classification" else 1,
        "loss": "mse" if task == "regression" else "cross_entropy",
    }


def signature(task: str, classes: int = 3) -> dict[str, Any]:
    output: dict[str, Any] = {"name": "target", "type": "double", "kind": "value"}
    if task == "classification":
        output = {"name": "target", "type": "int64", "kind": "class_logits", "num_classes": classes}
    inputs = [{"name": n, "type": "double"} for n in FEATURES]
    return {"inputs": inputs, "output": output, "task": task}


def artifact(task: str, kind: str = "mlp", seed: int = 0) -> tuple[dict[str, Any], bytes]:
    """A registry record and artifact for a small, deterministically initialised net."""
    torch.manual_seed(seed)
    spec = model_spec(task, kind)
    net = build_model(spec)
    # Non-trivial scaling, so the buffers (not just the weights) must round-trip.
    net.set_scaling([40.0, 25.0, 3.0], [10.0, 4.0, 2.0], y_mean=100.0, y_std=15.0)
    data = save_artifact(net, spec)
    record = {
        "name": "churn.v2",
        "version": 4,
        "sha256": hashlib.sha256(data).hexdigest(),
        "artifact_path": "churn.v2/4/model.pt",
        "format": "state_dict",
        "model_spec": spec,
        "signature": signature(task),
        "lineage": {"table": "default.people", "snapshot_id": 1},
    }
    return record, data


def features(rows: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, len(FEATURES))) * [10, 4, 2] + [40, 25, 3]).astype(np.float32)


def reference(data: bytes, matrix: np.ndarray) -> torch.Tensor:
    net: ForgeNet = load_artifact(data)
    with torch.no_grad():
        out: torch.Tensor = net(torch.from_numpy(matrix))
    return out


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_regression_predictions_equal_the_net_in_process(kind: str) -> None:
    record, data = artifact("regression", kind)
    served = ServedModel.from_artifact(record, data, "cpu")
    assert (served.name, served.version, served.device) == ("churn.v2", 4, "cpu")
    assert not served.net.training
    matrix = features(50)
    outputs = served.predict(matrix)
    assert set(outputs) == {"prediction"}
    assert outputs["prediction"].dtype == np.float64 and outputs["prediction"].shape == (50,)
    expected = reference(data, matrix).numpy().astype(np.float64)
    np.testing.assert_array_equal(outputs["prediction"], expected)
    # Values in label units: the y scaling was applied, not the standardised output.
    assert abs(float(outputs["prediction"].mean()) - 100.0) < 100.0


def test_classification_gives_argmax_and_softmax_of_the_net() -> None:
    record, data = artifact("classification", "mlp")
    record["model_spec"] = model_spec("classification")
    served = ServedModel.from_artifact(record, data, "cpu")
    matrix = features(64)
    outputs = served.predict(matrix)
    logits = reference(data, matrix)
    assert outputs["prediction"].dtype == np.int64
    np.testing.assert_array_equal(outputs["prediction"], logits.argmax(dim=-1).numpy())
    probabilities = outputs["probabilities"]
    assert probabilities.dtype == np.float64 and probabilities.shape == (64, 3)
    np.testing.assert_array_equal(probabilities, torch.softmax(logits.double(), -1).numpy())
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_a_json_request_through_the_signature_predicts_like_the_net() -> None:
    record, data = artifact("regression")
    served = ServedModel.from_artifact(record, data, "cpu")
    rows = [{"visits": 2, "age": 51.5, "bmi": 30.25}, {"age": 20.0, "bmi": 18.0, "visits": 0}]
    table = parse_json_body({"instances": rows}, served.signature, model="churn.v2", version=4)
    outputs = served.predict(feature_matrix(table, served.signature))
    direct = reference(data, np.array([[51.5, 30.25, 2], [20.0, 18.0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(outputs["prediction"], direct.numpy().astype(np.float64))


def test_a_matrix_of_the_wrong_width_is_refused() -> None:
    record, data = artifact("regression")
    served = ServedModel.from_artifact(record, data, "cpu")
    with pytest.raises(InvalidInputError, match=r"\[rows, 3\]"):
        served.predict(np.zeros((2, 4), dtype=np.float32))


# ---- versions Cortex refuses -------------------------------------------------------------


def test_a_signature_without_inputs_is_not_servable() -> None:
    record, data = artifact("regression")
    record["signature"] = {"output": {}, "task": "regression"}
    with pytest.raises(ModelNotServableError, match="signature lists no inputs"):
        ServedModel.from_artifact(record, data, "cpu")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"format": "torchscript"}, "artifact format is 'torchscript'"),
        ({"sha256": "0" * 64}, "do not match the record's sha256"),
        (
            {"signature": {**signature("regression"), "inputs": [{"name": "a", "type": "double"}]}},
            "takes 3 inputs, its signature lists 1",
        ),
        ({"signature": {**signature("regression"), "task": "classification"}}, "task"),
    ],
)
def test_records_cortex_cannot_serve(change: dict[str, Any], words: str) -> None:
    record, data = artifact("regression")
    with pytest.raises(
        ModelNotServableError, match=r"cannot serve model 'churn\.v2' version 4"
    ) as e:
        ServedModel.from_artifact({**record, **change}, data, "cpu")
    assert words in e.value.message


def test_inputs_out_of_training_order_are_not_servable() -> None:
    record, data = artifact("regression")
    reordered = dict(signature("regression"))
    reordered["inputs"] = list(reversed(reordered["inputs"]))
    with pytest.raises(ModelNotServableError, match="differ from the features"):
        ServedModel.from_artifact({**record, "signature": reordered}, data, "cpu")


def test_corrupt_bytes_are_not_servable() -> None:
    record, _data = artifact("regression")
    junk = b"not a torch file"
    record["sha256"] = hashlib.sha256(junk).hexdigest()
    with pytest.raises(ModelNotServableError, match="does not load"):
        ServedModel.from_artifact(record, junk, "cpu")


# ---- devices and ids ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preference", "cuda", "device"),
    [
        ("auto", True, "cuda"),
        ("auto", False, "cpu"),
        ("cpu", True, "cpu"),
        ("cpu", False, "cpu"),
        ("cuda", True, "cuda"),
    ],
)
def test_resolve_device(preference: str, cuda: bool, device: str) -> None:
    assert resolve_device(preference, cuda) == device


def test_cuda_without_a_gpu_says_how_to_fix_it() -> None:
    with pytest.raises(DeviceUnavailableError, match=r"set cortex\.device to 'auto'") as caught:
        resolve_device("cuda", False)
    assert caught.value.http_status == 409


def test_an_unknown_device_preference_is_invalid_input() -> None:
    with pytest.raises(InvalidInputError, match="auto or cpu or cuda"):
        resolve_device("tpu", True)


def test_model_ids_round_trip() -> None:
    assert model_id("churn.v2-x", 12) == "churn.v2-x:12"
    assert parse_model_id("churn.v2-x:12") == ("churn.v2-x", 12)


@pytest.mark.parametrize(
    "junk", ["churn", "churn:", ":3", "churn:0", "churn:-1", "Churn:1", "a:1.5", "a:٣"]
)
def test_junk_model_ids_are_invalid_input(junk: str) -> None:
    with pytest.raises(InvalidInputError, match="name:version"):
        parse_model_id(junk)


# ---- outputs on the wire -----------------------------------------------------------------


def classification_outputs(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=rows)
    return {
        "prediction": probabilities.argmax(axis=1).astype(np.int64),
        "probabilities": probabilities,
    }


def test_outputs_to_rows_are_plain_json() -> None:
    outputs = classification_outputs(4)
    rows = outputs_to_rows(outputs)
    assert len(rows) == 4
    assert json.loads(json.dumps(rows)) == rows
    assert type(rows[0]["prediction"]) is int
    assert type(rows[0]["probabilities"][0]) is float
    assert rows[2]["probabilities"] == outputs["probabilities"][2].tolist()
    regression = outputs_to_rows({"prediction": np.array([1.5, 2.5])})
    assert regression == [{"prediction": 1.5}, {"prediction": 2.5}]


def test_outputs_to_arrow_has_probabilities_as_list_of_double() -> None:
    outputs = classification_outputs(5)
    table = outputs_to_arrow(outputs)
    assert table.schema.field("prediction").type == pa.int64()
    assert table.schema.field("probabilities").type == pa.list_(pa.float64())
    assert table.column("probabilities").to_pylist() == outputs["probabilities"].tolist()
    assert outputs_to_arrow({"prediction": np.array([0.5])}).schema.names == ["prediction"]


@given(sizes=st.lists(st.integers(min_value=0, max_value=6), max_size=8))
def test_split_outputs_round_trips(sizes: list[int]) -> None:
    outputs = classification_outputs(sum(sizes))
    parts = split_outputs(outputs, sizes)
    assert [len(p["prediction"]) for p in parts] == sizes
    assert all(set(p) == {"prediction", "probabilities"} for p in parts)
    if parts:
        for key in outputs:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), outputs[key])


def test_split_outputs_refuses_sizes_that_do_not_add_up() -> None:
    with pytest.raises(InvalidInputError, match="add up to the batch's 4 rows"):
        split_outputs(classification_outputs(4), [1, 2])
    with pytest.raises(InvalidInputError):
        split_outputs(classification_outputs(4), [5, -1])
