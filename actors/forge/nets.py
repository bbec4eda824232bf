"""Networks Forge trains: built-in linear, logistic and MLP, or a user ``nn.Module``.

Every model is a ``ForgeNet``: the network proper (``core``) behind fixed scaling
buffers. Inputs are standardised with the training split's mean and standard deviation,
and regression targets are learnt in standard units and scaled back, so a model in the
registry takes raw feature values and returns values in the label's own units
(regression) or class logits (classification). The buffers live in the state dict, so
``load_artifact`` rebuilds exactly what was trained.

A model is described by a JSON-able ``model_spec`` (``model_spec_for``); the artifact
is ``torch.save`` of ``{"state_dict", "model_spec"}`` and loads with
``weights_only=True`` (no pickled code runs on load).
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from actors.forge.errors import ModelBuildError
from actors.forge.spec import TrainSpec

ARTIFACT_VERSION = 1


class ForgeNet(nn.Module):
    """``core`` behind input standardisation (and target scaling for regression)."""

    x_mean: torch.Tensor
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, core: nn.Module, in_features: int, task: str) -> None:
        super().__init__()
        self.core = core
        self.task = task
        self.register_buffer("x_mean", torch.zeros(in_features))
        self.register_buffer("x_std", torch.ones(in_features))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))

    def set_scaling(
        self,
        x_mean: Sequence[float],
        x_std: Sequence[float],
        y_mean: float = 0.0,
        y_std: float = 1.0,
    ) -> None:
        """Fix the scaling from training-split statistics (a zero spread counts as 1)."""
        spread = torch.tensor(x_std, dtype=torch.float32)
        self.x_mean.copy_(torch.tensor(x_mean, dtype=torch.float32))
        self.x_std.copy_(torch.where(spread > 0, spread, torch.ones_like(spread)))
        self.y_mean.fill_(float(y_mean))
        self.y_std.fill_(float(y_std) if y_std > 0 else 1.0)

    def scaled(self, x: torch.Tensor) -> torch.Tensor:
        """The core's output on standardised inputs: what the loss sees."""
        out: torch.Tensor = self.core((x - self.x_mean) / self.x_std)
        return out.squeeze(-1) if self.task == "regression" else out

    def scale_target(self, y: torch.Tensor) -> torch.Tensor:
        """A regression target in the units ``scaled`` predicts."""
        return (y - self.y_mean) / self.y_std

    def forward(self, x: torch.Tensor, *, scaled: bool = False) -> torch.Tensor:
        """Regression: predictions in the label's units; classification: class logits.

        ``scaled=True`` returns what the loss sees; training calls the model so (through
        DistributedDataParallel's forward, which syncs gradients) rather than ``scaled``.
        """
        out = self.scaled(x)
        if scaled or self.task != "regression":
            return out
        return out * self.y_std + self.y_mean


def _mlp(in_features: int, out_features: int, hidden: Sequence[int], dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def model_spec_for(spec: TrainSpec, num_classes: int | None = None) -> dict[str, Any]:
    """The JSON description ``build_model`` rebuilds a trial's network from."""
    classification = spec.task == "classification"
    if classification and num_classes is None:
        num_classes = spec.model.num_classes
    if classification and (num_classes is None or num_classes < 2):
        raise ValueError("classification needs num_classes >= 2 (from the data or the spec)")
    return {
        "task": spec.task,
        "type": spec.model.type,
        "hidden": list(spec.model.hidden) if spec.model.type == "mlp" else [],
        "dropout": spec.model.dropout if spec.model.type == "mlp" else 0.0,
        "class_path": spec.model.class_path,
        "kwargs": dict(spec.model.kwargs),
        "features": list(spec.data.features),
        "label": spec.data.label,
        "in_features": len(spec.data.features),
        "out_features": num_classes if classification else 1,
        "loss": spec.loss,
    }


def build_model(model_spec: dict[str, Any]) -> ForgeNet:
    """A fresh ``ForgeNet`` for ``model_spec`` (weights from torch's current seed)."""
    kind, task = model_spec["type"], model_spec["task"]
    n_in, n_out = int(model_spec["in_features"]), int(model_spec["out_features"])
    if kind in ("linear", "logistic"):
        core: nn.Module = nn.Linear(n_in, n_out)
    elif kind == "mlp":
        core = _mlp(n_in, n_out, model_spec["hidden"], float(model_spec["dropout"]))
    elif kind == "custom":
        core = _custom(model_spec["class_path"], n_in, n_out, model_spec.get("kwargs") or {})
    else:
        raise ModelBuildError(
            model=str(kind), reason="unknown type", fix="use linear, logistic, mlp or custom"
        )
    return ForgeNet(core, n_in, task)


def _custom(class_path: str, n_in: int, n_out: int, kwargs: dict[str, Any]) -> nn.Module:
    module_name, _, class_name = class_path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        raise ModelBuildError(
            model=class_path,
            reason=f"module {module_name!r} does not import ({exc})",
            fix="ship the module with the job (ray job submit --working-dir .) or install it",
        ) from None
    except AttributeError:
        raise ModelBuildError(
            model=class_path,
            reason=f"module {module_name!r} has no {class_name!r}",
            fix="check the class name after the colon",
        ) from None
    try:
        core = cls(in_features=n_in, out_features=n_out, **kwargs)
    except TypeError as exc:
        raise ModelBuildError(
            model=class_path,
            reason=f"calling it failed: {exc}",
            fix="accept in_features and out_features, and the spec's model.kwargs",
        ) from None
    if not isinstance(core, nn.Module):
        raise ModelBuildError(
            model=class_path,
            reason=f"it made a {type(core).__name__}, not a torch.nn.Module",
            fix="subclass torch.nn.Module",
        )
    return core


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on CPU, unwrapped from DistributedDataParallel."""
    wrapped = getattr(model, "module", None)
    inner = wrapped if isinstance(wrapped, nn.Module) else model
    return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}


def save_artifact(model: nn.Module, model_spec: dict[str, Any]) -> bytes:
    """The registry artifact: ``torch.save`` of the state dict and the model spec."""
    buffer = io.BytesIO()
    payload = {"format_version": ARTIFACT_VERSION, "state_dict": state_of(model)}
    torch.save({**payload, "model_spec": model_spec}, buffer)
    return buffer.getvalue()


def load_artifact(data: bytes) -> ForgeNet:
    """The model in ``data`` (``save_artifact``'s bytes), in eval mode on CPU."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return model_from_state(payload["model_spec"], payload["state_dict"])


def model_from_state(model_spec: dict[str, Any], state: dict[str, torch.Tensor]) -> ForgeNet:
    """Rebuild ``model_spec``'s network and load ``state`` into it (strictly), eval mode."""
    model = build_model(model_spec)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def artifact_spec(data: bytes) -> dict[str, Any]:
    """The model spec stored in an artifact."""
    payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    spec: dict[str, Any] = payload["model_spec"]
    return spec
