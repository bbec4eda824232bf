"""Training specs, search spaces, schedulers, networks and metrics, without Ray.

A spec is validated as a whole before anything runs: every problem is listed with its
key path (and line, for a file); the search space and schedulers translate into Tune's
objects; a network saved as an artifact loads back and predicts bit for bit the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from sklearn.metrics import log_loss, mean_absolute_error, r2_score
from torch import nn

from actors.forge.data import validation_mask
from actors.forge.errors import InvalidTrainSpecError, ModelBuildError
from actors.forge.lineage import code_version, git_commit
from actors.forge.live import LiveTrials
from actors.forge.metrics import evaluate
from actors.forge.nets import (
    ForgeNet,
    artifact_spec,
    build_model,
    load_artifact,
    model_spec_for,
    save_artifact,
)
from actors.forge.results import TrialRecord, best_trial, summarise
from actors.forge.spec import (
    apply_params,
    config_hash,
    load_train_spec,
    parse_train_spec,
    run_id_for,
)
from actors.forge.tuning import build_scheduler, param_space
from cluster import __version__

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "training" / "diabetes.yaml"
FEATURES = ["a", "b", "c"]


def spec_dict(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "demo",
        "task": "regression",
        "data": {"table": "forge.rows", "features": FEATURES, "label": "y"},
    }
    base.update(overrides)
    return base


class TinyNet(nn.Module):
    """A user network, as ``model.class_path`` names one."""

    def __init__(self, in_features: int, out_features: int, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, width), nn.Tanh())
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(x))
        return out


# --- specs -------------------------------------------------------------------------------


def test_the_example_spec_is_valid_and_its_run_id_is_stable() -> None:
    spec = load_train_spec(EXAMPLE)
    assert spec.task == "regression" and spec.model.type == "mlp"
    assert spec.objective.metric == "rmse" and spec.mode == "min"
    assert run_id_for(spec) == run_id_for(load_train_spec(EXAMPLE))
    assert run_id_for(spec).startswith("diabetes-mlp-")


def test_defaults_are_filled_by_task_and_are_part_of_the_hash() -> None:
    regression = load_train_spec(spec_dict())
    assert regression.loss == "mse"
    assert regression.metrics == ["val_loss", "rmse", "mae", "r2"]
    assert regression.objective.mode == "min"
    explicit = load_train_spec(spec_dict(loss="mse", metrics=["val_loss", "rmse", "mae", "r2"]))
    assert config_hash(explicit) == config_hash(regression)  # same meaning, same hash
    other = load_train_spec(spec_dict(epochs=11))
    assert config_hash(other) != config_hash(regression)
    classify = load_train_spec(spec_dict(task="classification", model={"type": "logistic"}))
    assert classify.loss == "cross_entropy" and classify.metrics[-1] == "log_loss"
    accuracy = load_train_spec(spec_dict(task="classification", objective={"metric": "accuracy"}))
    assert accuracy.mode == "max"


def test_a_bad_file_lists_every_problem_with_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: demo\n"
        "task: regression\n"
        "data:\n"
        "  table: forge.rows\n"
        "  features: [a, b]\n"
        "  label: y\n"
        "  validaton_fraction: 0.3\n"
        "epochs: 0\n"
        "tune:\n"
        "  search_space:\n"
        "    optimizer.lr: {loguniform: [0, 0.1]}\n"
    )
    with pytest.raises(InvalidTrainSpecError) as caught:
        load_train_spec(path)
    message = caught.value.message
    assert "line 7, data.validaton_fraction: is not a key here" in message
    assert "did you mean 'validation_fraction'" in message
    assert "line 8, epochs" in message
    assert "line 11, tune.search_space.optimizer.lr" in message
    assert "loguniform needs low > 0" in message
    assert len(caught.value.fields["problems"]) == 3


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"task": "classification", "model": {"type": "linear"}}, "model.type: linear is for"),
        ({"model": {"type": "logistic"}}, "logistic is for classification"),
        ({"metrics": ["rmse", "acuracy"]}, "'acuracy' is not a regression metric"),
        ({"objective": {"metric": "r2"}, "metrics": ["rmse"]}, "objective.metric: 'r2'"),
        ({"loss": "cross_entropy"}, "'cross_entropy' is not a regression loss"),
        (
            {"tune": {"search_space": {"optimizer.lrr": {"uniform": [0.1, 0.2]}}}},
            "did you mean 'optimizer.lr'",
        ),
        (
            {"tune": {"search_space": {"batch_size": {"uniform": [8, 64]}}}},
            "batch_size takes choice or grid",
        ),
        (
            {"tune": {"search_space": {"batch_size": {"choice": [16, 0]}}}},
            "value 0",
        ),
        (
            {"tune": {"search_space": {"model.dropout": {"grid": [0.1, 1.5]}}}},
            "value 1.5",
        ),
        (
            {
                "tune": {
                    "search_space": {"model.hidden": {"grid": [[8], [16]]}},
                    "scheduler": {"type": "pbt"},
                }
            },
            "pbt cannot mutate a grid",
        ),
        (
            {
                "tune": {
                    "search_space": {"optimizer.lr": {"uniform": [0.01, 0.1]}},
                    "scheduler": {"type": "pbt", "perturbation_interval": 3},
                },
                "checkpoint": {"every_epochs": 2},
            },
            "not a multiple of checkpoint.every_epochs",
        ),
        ({"data": {"table": "forge.rows", "features": ["a", "y"], "label": "y"}}, "also listed"),
        ({"data": {"table": "1bad", "features": ["a"], "label": "y"}}, "not a Lake table"),
        ({"model": {"type": "custom"}}, "type custom needs class_path"),
        ({"model": {"type": "custom", "class_path": "no_colon"}}, "not 'package.module:Class'"),
        ({"name": "Has Space"}, "name"),
    ],
)
def test_bad_specs_name_the_problem(overrides: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidTrainSpecError) as caught:
        load_train_spec(spec_dict(**overrides))
    assert expected in caught.value.message
    assert caught.value.http_status == 422


def test_yaml_syntax_errors_and_non_mappings_are_spec_errors() -> None:
    with pytest.raises(InvalidTrainSpecError, match="line 2"):
        parse_train_spec("name: x\n  bad: [\n", source="x.yaml")
    with pytest.raises(InvalidTrainSpecError, match="not a mapping"):
        parse_train_spec("- 1\n- 2\n", source="x.yaml")


def test_apply_params_sets_one_trials_hyperparameters() -> None:
    spec = load_train_spec(spec_dict(model={"type": "mlp", "hidden": [8]}))
    trial = apply_params(spec, {"optimizer.lr": 0.05, "model.hidden": [4, 2], "batch_size": 16})
    assert trial.optimizer.lr == 0.05 and trial.model.hidden == [4, 2]
    assert trial.batch_size == 16
    assert spec.model.hidden == [8]  # the run's spec is unchanged


# --- search space and schedulers ---------------------------------------------------------


def test_search_space_translates_to_tune_domains() -> None:
    spec = load_train_spec(
        spec_dict(
            tune={
                "search_space": {
                    "optimizer.lr": {"loguniform": [1e-4, 1e-1]},
                    "optimizer.weight_decay": {"uniform": [0.0, 0.01]},
                    "model.hidden": {"choice": [[8], [16, 8]]},
                    "batch_size": {"grid": [16, 32]},
                }
            }
        )
    )
    space = param_space(spec)
    lr = space["optimizer.lr"]
    assert isinstance(lr, tune.search.sample.Float)
    assert isinstance(lr.get_sampler(), tune.search.sample.LogUniform)
    assert (lr.lower, lr.upper) == (1e-4, 1e-1)
    decay = space["optimizer.weight_decay"]
    assert isinstance(decay.get_sampler(), tune.search.sample.Uniform)
    assert isinstance(space["model.hidden"], tune.search.sample.Categorical)
    assert space["model.hidden"].categories == [[8], [16, 8]]
    assert space["batch_size"] == {"grid_search": [16, 32]}


def test_schedulers_count_epochs() -> None:
    assert isinstance(build_scheduler(load_train_spec(spec_dict())), FIFOScheduler)
    asha = build_scheduler(
        load_train_spec(spec_dict(epochs=8, tune={"scheduler": {"type": "asha"}}))
    )
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epoch"
    pbt = build_scheduler(
        load_train_spec(
            spec_dict(
                tune={
                    "search_space": {"optimizer.lr": {"choice": [0.1, 0.01]}},
                    "scheduler": {"type": "pbt", "perturbation_interval": 2},
                }
            )
        )
    )
    assert isinstance(pbt, PopulationBasedTraining)
    assert pbt._hyperparam_mutations == {"optimizer.lr": [0.1, 0.01]}


# --- networks and artifacts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "model", "out_shape"),
    [
        ("regression", {"type": "linear"}, (5,)),
        ("regression", {"type": "mlp", "hidden": [8, 4], "dropout": 0.1}, (5,)),
        ("classification", {"type": "logistic"}, (5, 3)),
        ("classification", {"type": "mlp", "hidden": [6]}, (5, 3)),
        (
            "classification",
            {"type": "custom", "class_path": f"{__name__}:TinyNet", "kwargs": {"width": 3}},
            (5, 3),
        ),
    ],
)
def test_networks_build_and_round_trip_through_an_artifact(
    task: str, model: dict[str, Any], out_shape: tuple[int, ...]
) -> None:
    spec = load_train_spec(spec_dict(task=task, model=model))
    model_spec = model_spec_for(spec, num_classes=3 if task == "classification" else None)
    torch.manual_seed(0)
    net = build_model(model_spec)
    net.set_scaling([1.0, 2.0, 3.0], [0.5, 0.0, 2.0], y_mean=10.0, y_std=4.0)
    net.eval()
    x = torch.randn(5, 3)
    assert net(x).shape == out_shape
    data = save_artifact(net, model_spec)
    loaded = load_artifact(data)
    assert isinstance(loaded, ForgeNet) and not loaded.training
    assert torch.equal(loaded(x), net(x))
    assert artifact_spec(data) == model_spec
    assert loaded.x_std[1] == 1.0  # a zero spread is taken as 1, never a division by 0


def test_regression_learns_in_standard_units_and_predicts_in_the_labels() -> None:
    spec = load_train_spec(spec_dict(model={"type": "linear"}))
    net = build_model(model_spec_for(spec))
    with torch.no_grad():
        net.core.weight.zero_()
        net.core.bias.fill_(1.0)
    net.set_scaling([0.0] * 3, [1.0] * 3, y_mean=100.0, y_std=10.0)
    x = torch.zeros(2, 3)
    assert torch.allclose(net(x, scaled=True), torch.ones(2))
    assert torch.allclose(net(x), torch.full((2,), 110.0))


def test_a_custom_class_that_does_not_resolve_is_a_model_build_error() -> None:
    spec = load_train_spec(spec_dict(model={"type": "custom", "class_path": "no_such_pkg.mod:Net"}))
    with pytest.raises(ModelBuildError, match=r"'no_such_pkg\.mod' does not import"):
        build_model(model_spec_for(spec))
    missing = load_train_spec(spec_dict(model={"type": "custom", "class_path": f"{__name__}:Nope"}))
    with pytest.raises(ModelBuildError, match="has no 'Nope'"):
        build_model(model_spec_for(missing))


# --- metrics -----------------------------------------------------------------------------


def test_regression_metrics_match_scikit_learn_at_any_batch_size() -> None:
    spec = load_train_spec(spec_dict(model={"type": "linear"}))
    torch.manual_seed(1)
    net = build_model(model_spec_for(spec))
    net.set_scaling([0.0] * 3, [1.0] * 3, y_mean=5.0, y_std=2.0)
    x, y = torch.randn(50, 3), torch.randn(50) * 3 + 5
    with torch.no_grad():
        pred = net(x).numpy()
    for size in (7, 50):
        batches = [(x[i : i + size], y[i : i + size]) for i in range(0, 50, size)]
        got = evaluate(net, batches, task="regression", loss_name="mse", metrics=spec.metrics)
        assert got["mae"] == pytest.approx(mean_absolute_error(y.numpy(), pred), rel=1e-5)
        assert got["r2"] == pytest.approx(r2_score(y.numpy(), pred), rel=1e-4)
        rmse = math.sqrt(float(np.mean((y.numpy() - pred) ** 2)))
        assert got["rmse"] == pytest.approx(rmse, rel=1e-5)


def test_classification_metrics_match_scikit_learn() -> None:
    spec = load_train_spec(spec_dict(task="classification", model={"type": "logistic"}))
    torch.manual_seed(2)
    net = build_model(model_spec_for(spec, num_classes=3))
    x, y = torch.randn(40, 3), torch.randint(0, 3, (40,))
    with torch.no_grad():
        probs = torch.softmax(net(x).double(), dim=-1).numpy()
    got = evaluate(
        net, [(x, y)], task="classification", loss_name="cross_entropy", metrics=spec.metrics
    )
    assert got["accuracy"] == pytest.approx(float(np.mean(probs.argmax(1) == y.numpy())))
    assert got["log_loss"] == pytest.approx(log_loss(y.numpy(), probs, labels=[0, 1, 2]))
    assert got["val_loss"] == pytest.approx(got["log_loss"], rel=1e-5)


# --- split, results, progress, lineage ----------------------------------------------------


def test_the_split_is_a_seeded_function_of_each_row() -> None:
    frame = pd.DataFrame({"a": np.arange(2000.0), "y": np.arange(2000) % 7})
    held = validation_mask(frame, seed=3, fraction=0.2)
    assert 0.17 < held.mean() < 0.23
    # Row by row, in any batching, the same rows are held out; another seed differs.
    halves = np.concatenate(
        [
            validation_mask(frame.iloc[:777], seed=3, fraction=0.2),
            validation_mask(frame.iloc[777:], seed=3, fraction=0.2),
        ]
    )
    assert np.array_equal(held, halves)
    assert not np.array_equal(held, validation_mask(frame, seed=4, fraction=0.2))


def _rows(*scores: float, checkpoint_every: int = 1) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "val_loss": s,
            "train_loss": s,
            "checkpoint_dir_name": f"checkpoint_{e:06d}" if e % checkpoint_every == 0 else None,
        }
        for e, s in enumerate(scores, 1)
    ]


def _record(trial_id: str, rows: list[dict[str, Any]], **extra: Any) -> TrialRecord:
    saved = [r["checkpoint_dir_name"] for r in rows if r["checkpoint_dir_name"]]
    path = f"/exp/{trial_id}/{saved[-1]}" if saved else None
    return TrialRecord(trial_id, {"optimizer.lr": 0.1}, rows, checkpoint_path=path, **extra)


def test_the_best_trial_is_judged_at_its_latest_checkpoint() -> None:
    good = _record("a", _rows(0.9, 0.5, 0.1, checkpoint_every=2), tune_status="TERMINATED")
    steady = _record("b", _rows(0.6, 0.3, 0.2), tune_status="TERMINATED")
    failed = _record("c", _rows(0.05), error="boom", tune_status="ERROR")
    early = _record("d", _rows(0.7), tune_status="TERMINATED")
    cut = _record("e", _rows(0.8, 0.7), tune_status="RUNNING")
    trials = [summarise(t, ["val_loss"], epochs=3) for t in (good, steady, failed, early, cut)]
    statuses = [t["status"] for t in trials]
    assert statuses == ["completed", "completed", "error", "stopped", "interrupted"]
    assert trials[0]["checkpoint"] == {
        "epoch": 2,
        "path": "/exp/a/checkpoint_000002",
        "metrics": {"val_loss": 0.5, "train_loss": 0.5},
    }
    best = best_trial(trials[:2], "val_loss", "min")
    assert best is not None and best["trial_id"] == "b"  # 0.2 at its checkpoint beats 0.5
    assert best_trial(trials[:2], "val_loss", "max")["trial_id"] == "a"  # type: ignore[index]
    assert best_trial([], "val_loss", "min") is None


def test_a_pbt_exploited_trial_is_judged_by_the_state_it_was_given() -> None:
    # PBT restarted the trial from its donor's last checkpoint, which lies in the donor's
    # folder; Tune hands over the donor's last result with it, and no new row followed.
    cloned = TrialRecord(
        "x",
        {"optimizer.lr": 0.02},
        rows=[],
        checkpoint_path="/exp/donor/checkpoint_000005",
        last={"epoch": 6, "val_loss": 0.25, "checkpoint_dir_name": "checkpoint_000005"},
        tune_status="TERMINATED",
    )
    (summary,) = [summarise(cloned, ["val_loss"], epochs=6)]
    assert summary["status"] == "completed" and summary["epoch"] == 6
    assert summary["checkpoint"] == {
        "epoch": 6,
        "path": "/exp/donor/checkpoint_000005",
        "metrics": {"val_loss": 0.25},
    }


def test_live_trials_fold_tune_events() -> None:
    live = LiveTrials()
    live.apply({"event": "start", "trial_id": "t1", "params": {"optimizer.lr": 0.1}})
    event = live.apply(
        {
            "event": "result",
            "trial_id": "t1",
            "result": {"epoch": 2, "rmse": 3.5, "time_total_s": 9.0, "pid": 1},
        }
    )
    assert event["status"] == "running" and event["epoch"] == 2
    assert event["metrics"] == {"rmse": 3.5}
    live.apply({"event": "complete", "trial_id": "t1"})
    assert live.trials()[0]["status"] == "completed"


def test_code_version_reads_the_checkout_without_git(tmp_path: Path) -> None:
    git = tmp_path / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    assert git_commit(tmp_path) is None
    (git / "packed-refs").write_text("# pack-refs\n" + "ab" * 20 + " refs/heads/main\n")
    assert git_commit(tmp_path) == "ab" * 20
    (git / "refs" / "heads" / "main").write_text("cd" * 20 + "\n")
    assert code_version(tmp_path).endswith("+git." + "cd" * 6)
    assert code_version(tmp_path / "nowhere") == f"datapunk {__version__}"
