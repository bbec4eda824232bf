"""The training loop each Ray Train worker runs (``train_loop_per_worker``).

Batches come from the worker's shard of the materialised training split through
``iter_torch_batches`` (shuffled locally, seeded per epoch); every epoch ends with the
validation metrics reported to Ray Train, and every ``checkpoint.every_epochs`` epochs
(and the last) with a checkpoint of the model, the optimizer and the epoch. A worker
started again (a retry under ``FailureConfig``, a resumed trial, a PBT exploit)
continues from the newest checkpoint it is given instead of from epoch 1.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from actors.forge.metrics import MetricAccumulator, batch_loss, loss_function
from actors.forge.nets import ForgeNet, build_model, state_of
from actors.forge.spec import OptimizerSpec, TrainSpec
from actors.forge.tensors import to_tensors

CHECKPOINT_FILE = "forge.pt"
_SHUFFLE_BUFFER_ROWS = 2048


class InjectedFault(RuntimeError):
    """Raised once by the fault-injection seam (crash drills and tests), never otherwise."""


def make_optimizer(spec: OptimizerSpec, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The spec's torch optimizer over ``params``."""
    if spec.type == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
        )
    cls = torch.optim.AdamW if spec.type == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def write_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Save a training state (model, optimizer, epoch, model spec, metrics) in ``directory``."""
    torch.save(state, directory / CHECKPOINT_FILE)


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The training state saved by ``write_checkpoint`` (tensors only: weights_only)."""
    state: dict[str, Any] = torch.load(
        Path(directory) / CHECKPOINT_FILE, map_location="cpu", weights_only=True
    )
    return state


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train one trial on this worker; ``config`` is built by ``actors/forge/trial.py``."""
    spec = TrainSpec.model_validate(config["spec"])
    torch.manual_seed(spec.data.seed)
    net = build_model(config["model_spec"])
    net.set_scaling(**config["scaling"])
    optimizer = make_optimizer(spec.optimizer, net.parameters())
    start_epoch = _resume(net, optimizer, spec.optimizer, config.get("resume_from"))
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(net)
    loss = loss_function(spec.loss)
    collate = functools.partial(
        to_tensors, features=spec.data.features, label=spec.data.label, task=spec.task
    )
    train_shard = ray.train.get_dataset_shard("train")
    validation = ray.train.get_dataset_shard("validation")
    rank = ray.train.get_context().get_world_rank()
    for epoch in range(start_epoch + 1, spec.epochs + 1):
        model.train()
        batches = train_shard.iter_torch_batches(
            batch_size=spec.batch_size,
            collate_fn=collate,
            local_shuffle_buffer_size=_SHUFFLE_BUFFER_ROWS,
            local_shuffle_seed=spec.data.seed * 100_003 + epoch,
        )
        train_loss = _train_epoch(model, net, optimizer, loss, _on(device, batches))
        accumulator = MetricAccumulator(spec.task, spec.loss)
        net.eval()
        for x, y in _on(device, validation.iter_torch_batches(batch_size=1024, collate_fn=collate)):
            accumulator.add(net, x, y)
        metrics = accumulator.result(spec.metrics)
        metrics.update(epoch=epoch, train_loss=train_loss, resumed_from_epoch=start_epoch)
        due = epoch % spec.checkpoint.every_epochs == 0 or epoch == spec.epochs
        _report(metrics, due and rank == 0, net, optimizer, config["model_spec"])
        _maybe_fail(config.get("faults"), epoch)


def _on(
    device: torch.device, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in batches:
        yield x.to(device), y.to(device)


def _train_epoch(
    model: nn.Module,
    net: ForgeNet,
    optimizer: torch.optim.Optimizer,
    loss: Any,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    total, rows = 0.0, 0
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        value = batch_loss(net, loss, x, y, forward=model)
        value.backward()
        optimizer.step()
        total += float(value.detach()) * int(y.shape[0])
        rows += int(y.shape[0])
    return total / rows if rows else float("nan")


def _resume(
    net: ForgeNet, optimizer: torch.optim.Optimizer, spec: OptimizerSpec, resume_from: str | None
) -> int:
    """Load the newest checkpoint: Train's own (a worker retry), else the trial's."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and resume_from:
        checkpoint = ray.train.Checkpoint(resume_from)
    if checkpoint is None:
        return 0
    with checkpoint.as_directory() as directory:
        state = read_checkpoint(directory)
    net.load_state_dict(state["state_dict"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        # A PBT exploit resumes another trial's state under this trial's settings.
        group.update(lr=spec.lr, weight_decay=spec.weight_decay)
        if "momentum" in group:
            group["momentum"] = spec.momentum
    return int(state["epoch"])


def _report(
    metrics: dict[str, float],
    save: bool,
    net: ForgeNet,
    optimizer: torch.optim.Optimizer,
    model_spec: dict[str, Any],
) -> None:
    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="forge-ckpt-") as tmp:
        state = {
            "epoch": int(metrics["epoch"]),
            "state_dict": state_of(net),
            "optimizer": optimizer.state_dict(),
            "model_spec": model_spec,
            "metrics": metrics,
        }
        write_checkpoint(Path(tmp), state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _maybe_fail(faults: list[dict[str, Any]] | None, epoch: int) -> None:
    """The fault-injection seam: each fault fails the worker once, after its ``epoch``,
    while its ``marker`` file exists (deleted first, so the retry or the resumed run goes
    on)."""
    for fault in faults or []:
        marker = str(fault["marker"])
        if epoch == int(fault["epoch"]) and os.path.exists(marker):
            os.remove(marker)
            raise InjectedFault(f"injected fault after epoch {epoch} (marker {marker})")
