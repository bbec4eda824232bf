"""Losses and metrics, shared by the training loop and holdout evaluation.

``val_loss`` is the training loss on held-out rows (in standard units for regression,
as the model learns); ``rmse``, ``mae`` and ``r2`` are in the label's own units;
``accuracy`` and ``log_loss`` (mean cross-entropy) for classification. Metrics
accumulate over batches in float64, so any batch size gives the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from actors.forge.nets import ForgeNet

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "mae": nn.L1Loss,
    "huber": nn.HuberLoss,
    "cross_entropy": nn.CrossEntropyLoss,
}


def loss_function(name: str) -> LossFn:
    """The torch loss ``name`` (mean over the batch)."""
    fn: LossFn = _LOSSES[name]()
    return fn


def batch_loss(
    model: ForgeNet,
    loss: LossFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    forward: nn.Module | None = None,
) -> torch.Tensor:
    """The loss the optimizer minimises: on the scaled output against the scaled target.

    ``forward`` is the module to call (the DistributedDataParallel wrapper of ``model``
    when training on several workers); ``model`` itself by default.
    """
    out = (forward or model)(x, scaled=True)
    if model.task == "regression":
        return loss(out, model.scale_target(y))
    return loss(out, y.long())


class MetricAccumulator:
    """Sums over batches; ``result`` turns them into the requested metrics."""

    def __init__(self, task: str, loss_name: str) -> None:
        self.task = task
        self.loss = loss_function(loss_name)
        self.n = 0
        self.sums = dict.fromkeys(("loss", "sq", "abs", "y", "y2", "correct", "nll"), 0.0)

    @torch.no_grad()
    def add(self, model: ForgeNet, x: torch.Tensor, y: torch.Tensor) -> None:
        """Account one batch of rows (``model`` in eval mode)."""
        rows = int(y.shape[0])
        if rows == 0:
            return
        self.n += rows
        self.sums["loss"] += float(batch_loss(model, self.loss, x, y)) * rows
        if self.task == "regression":
            error = (model(x) - y).double()
            target = y.double()
            self.sums["sq"] += float((error**2).sum())
            self.sums["abs"] += float(error.abs().sum())
            self.sums["y"] += float(target.sum())
            self.sums["y2"] += float((target**2).sum())
        else:
            logits = model(x)
            labels = y.long()
            self.sums["correct"] += float((logits.argmax(dim=-1) == labels).sum())
            nll = nn.functional.cross_entropy(logits.double(), labels, reduction="sum")
            self.sums["nll"] += float(nll)

    def result(self, metrics: Iterable[str]) -> dict[str, float]:
        """The metrics over every row added; NaN when no row was."""
        values = self._all()
        return {name: values[name] for name in metrics}

    def _all(self) -> dict[str, float]:
        n, s = self.n, self.sums
        if n == 0:
            return dict.fromkeys(
                ("val_loss", "rmse", "mae", "r2", "accuracy", "log_loss"), math.nan
            )
        out = {"val_loss": s["loss"] / n}
        if self.task == "regression":
            total = s["y2"] - s["y"] ** 2 / n
            out["rmse"] = math.sqrt(s["sq"] / n)
            out["mae"] = s["abs"] / n
            out["r2"] = 1.0 - s["sq"] / total if total > 0 else math.nan
        else:
            out["accuracy"] = s["correct"] / n
            out["log_loss"] = s["nll"] / n
        return out


def evaluate(
    model: ForgeNet,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    task: str,
    loss_name: str,
    metrics: Iterable[str],
) -> dict[str, float]:
    """``metrics`` of ``model`` over ``batches`` of (features, labels), in eval mode."""
    accumulator = MetricAccumulator(task, loss_name)
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            accumulator.add(model, x, y)
    finally:
        model.train(was_training)
    return accumulator.result(metrics)
