"""A registry model version loaded for serving, and what its outputs look like on the wire.

``ServedModel`` is the ``ForgeNet`` of one version on one device with the signature it
was registered with. ``predict`` takes the float32 matrix ``signature.feature_matrix``
builds and returns numpy outputs: ``prediction`` (label units for regression, the
argmax class for classification) and, for classification, ``probabilities`` (softmax of
the logits). The Serve shell concatenates the matrices of one batch of requests, runs one
``predict`` and hands each request its part with ``split_outputs``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from actors.cortex.errors import ModelNotServableError
from actors.cortex.outputs import (
    DEVICE_PREFERENCES,
    model_id,
    outputs_to_arrow,
    outputs_to_rows,
    parse_model_id,
    resolve_device,
    split_outputs,
)
from actors.cortex.signature import signature_inputs
from actors.forge.nets import ForgeNet, load_artifact
from cluster.errors import InvalidInputError

__all__ = [
    "DEVICE_PREFERENCES",
    "ServedModel",
    "model_id",
    "outputs_to_arrow",
    "outputs_to_rows",
    "parse_model_id",
    "resolve_device",
    "split_outputs",
]

SERVABLE_FORMATS = ("state_dict",)


@dataclass
class ServedModel:
    """One registry version's network on ``device``, in eval mode, with its signature."""

    name: str
    version: int
    net: ForgeNet
    device: str
    signature: dict[str, Any]
    model_spec: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.net.task)

    @property
    def in_features(self) -> int:
        return int(self.net.x_mean.shape[0])

    @classmethod
    def from_artifact(cls, record: dict[str, Any], data: bytes, device: str) -> ServedModel:
        """Load a registry version (its record from ``ModelRegistry.version`` and the
        artifact's bytes) onto ``device``; ``ModelNotServableError`` when Cortex cannot."""
        name, version = str(record["name"]), int(record["version"])

        def refuse(reason: str, fix: str) -> ModelNotServableError:
            return ModelNotServableError(model=name, version=version, reason=reason, fix=fix)

        fmt = record.get("format", "state_dict")
        if fmt not in SERVABLE_FORMATS:
            raise refuse(
                f"its artifact format is {fmt!r}; Cortex serves {', '.join(SERVABLE_FORMATS)}",
                "register the model from a Forge run (state_dict artifacts)",
            )
        expected = record.get("sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise refuse(
                "the artifact's bytes do not match the record's sha256",
                "read the artifact through ModelRegistry.artifact, or register it again",
            )
        signature = record.get("signature") or {}
        inputs = signature_inputs(signature, model=name, version=version)
        try:
            net = load_artifact(data)
        except Exception as exc:  # a corrupt or foreign file: torch's errors vary by cause
            raise refuse(
                f"its artifact does not load ({type(exc).__name__}: {exc})",
                "register the version again from a Forge run",
            ) from None
        _check_fits(net, record, [i.name for i in inputs], refuse)
        net = net.to(device)
        net.eval()
        model_spec = dict(record.get("model_spec") or {})
        return cls(name, version, net, device, dict(signature), model_spec)

    def predict(self, matrix: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a float32 ``[N, F]`` matrix (``signature.feature_matrix``).

        Regression: ``prediction`` float64 ``[N]``. Classification: ``prediction`` int64
        ``[N]`` (argmax of the logits) and ``probabilities`` float64 ``[N, C]`` (softmax).
        """
        if matrix.ndim != 2 or matrix.shape[1] != self.in_features:
            raise InvalidInputError(
                field="features",
                value=f"shape {tuple(matrix.shape)}",
                allowed=f"[rows, {self.in_features}] for {model_id(self.name, self.version)}",
            )
        x = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            out = self.net(x)
            if self.task == "regression":
                return {"prediction": out.cpu().numpy().astype(np.float64)}
            # Softmax in float64: probabilities that sum to 1 as closely as JSON shows.
            probabilities = torch.softmax(out.double(), dim=-1)
            classes = out.argmax(dim=-1)
            return {
                "prediction": classes.cpu().numpy().astype(np.int64),
                "probabilities": probabilities.cpu().numpy(),
            }


def _check_fits(
    net: ForgeNet,
    record: dict[str, Any],
    inputs: list[str],
    refuse: Callable[[str, str], ModelNotServableError],
) -> None:
    """The artifact's network takes the signature's inputs in the signature's order."""
    fix = "register the version again from a Forge run"
    width = int(net.x_mean.shape[0])
    if width != len(inputs):
        raise refuse(f"its network takes {width} inputs, its signature lists {len(inputs)}", fix)
    features = (record.get("model_spec") or {}).get("features")
    if features is not None and list(features) != inputs:
        raise refuse(
            f"its signature's inputs {inputs} differ from the features it was trained on "
            f"{list(features)}",
            fix,
        )
    task = (record.get("signature") or {}).get("task")
    if task is not None and task != net.task:
        raise refuse(f"its signature says task {task!r}, its network {net.task!r}", fix)


# ------------------------------------------------------------------------ outputs
