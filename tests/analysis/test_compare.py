"""The comparisons on small, hand-made sweeps whose answers are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import compare
from analysis.report import verdicts
from analysis.runs import Sweep
from experiments import datasets


class MemorySweep(Sweep):
    """A sweep held in memory: runs, and per-run history / trajectory frames."""

    def __init__(self, runs: list[dict], histories: dict, trajectories: dict):
        frame = pd.DataFrame(runs)
        defaults = {"status": "FINISHED", "device": "cpu", "dtype": "float64", "seed": 0,
                    "dataset": "iris", "dataset_name": "iris", "val_fraction": 0.25,
                    "optimizer": "sgd", "optimizer.name": "sgd", "weight_decay": 0.0,
                    "zero_grad": True, "n_classes": 2, "trajectory_every": 1,
                    "steps": 100, "batch_size": "None"}  # fmt: skip
        for key, value in defaults.items():
            frame[key] = frame[key].fillna(value) if key in frame else value
        frame["run_name"] = frame["run_id"]
        super().__init__(None, "0", "memory", "parent", frame)
        self._histories, self._trajectories = histories, trajectories

    def history(self, run_id):
        return self._histories[run_id]

    def trajectory(self, run_id):
        return self._trajectories[run_id]


def run_pair(offset_w: float, offset_loss: float = 0.0, dtype: str = "float64"):
    steps = np.arange(4)
    w = np.array([0.0, 0.5, 0.7, 0.8])
    histories, trajectories = {}, {}
    for run_id, dw, dl in (("a", 0.0, 0.0), ("m", offset_w, offset_loss)):
        loss = np.array([0.7, 0.5, 0.4, 0.35]) + dl
        histories[run_id] = pd.DataFrame({
            "step": steps, "train/loss": loss, "param/b": np.zeros(4), "grad/b": np.zeros(4),
            "check/grad_rel_err": [1e-16, 2e-16, 1e-15, 3e-16],
            "check/grad_err_vs_terms": [1e-17, 2e-17, 1e-16, 3e-17],
        })  # fmt: skip
        trajectories[run_id] = pd.DataFrame({"step": steps, "w_0": w + dw * steps, "dw_0": 0.0})
    runs = [
        {"run_id": "a", "impl": "autograd", "lr": 0.1, "dtype": dtype,
         "train/loss": 0.35, "val/loss": 0.4, "val/accuracy": 0.9},
        {"run_id": "m", "impl": "manual", "lr": 0.1, "dtype": dtype,
         "train/loss": 0.35 + offset_loss, "val/loss": 0.4, "val/accuracy": 0.9},
    ]  # fmt: skip
    return MemorySweep(runs, histories, trajectories)


@pytest.mark.parametrize(
    ("dtype", "offset", "agrees", "expected_gap"),
    [
        ("float64", 1e-14, True, 3e-14),  # the drift grows with the steps: 3 steps × 1e-14
        ("float64", 1e-12, False, 3e-12),
        ("float32", 3e-6, True, 9e-6),
        ("float32", 4e-6, False, 1.2e-5),
    ],
)
def test_pairs_measure_the_largest_drift_and_judge_it_by_dtype(dtype, offset, agrees, expected_gap):
    table = compare.pairs(run_pair(offset, dtype=dtype))
    (row,) = table.to_dict("records")
    assert row["impl"] == "manual" and row["twin_run_id"] == "a"
    # w ≈ 0.8 in float64: w + gap rounds to one ulp of w, 1.1e-16, whatever the gap.
    assert row["max_delta_w"] == pytest.approx(expected_gap, rel=0, abs=1.2e-16)
    assert row["agrees"] is agrees or row["agrees"] == agrees
    assert row["tolerance"] == {"float64": 1e-12, "float32": 1e-5}[dtype]
    assert row["max_grad_err_vs_terms"] == 1e-16  # the largest of the logged values, as it is


def test_a_loss_difference_alone_is_a_disagreement():
    (row,) = compare.pairs(run_pair(0.0, offset_loss=1e-9)).to_dict("records")
    assert row["max_delta_w"] == 0 and row["max_delta_loss"] == pytest.approx(1e-9, rel=1e-6, abs=0)
    assert not row["agrees"]


def test_a_run_without_twin_is_reported_not_dropped():
    sweep = run_pair(0.0)
    sweep.runs = sweep.runs[sweep.runs.impl == "manual"]
    (row,) = compare.pairs(sweep).to_dict("records")
    assert not row["agrees"] and "no autograd twin" in row["note"]


def test_verdict_explains_an_unstable_learning_rate():
    pairs = pd.DataFrame({"agrees": [True, False, False], "lr_times_L": [5.0, 0.5, 18.0]})
    assert verdicts(pairs).tolist() == ["agrees", "DISAGREES", "disagrees (unstable lr: lr·L ≥ 2)"]


def test_verdict_blames_an_adaptive_rule_only_when_the_gradients_agree():
    """Adam at lr 1 bounces around the optimum at any lr·L; its gradients still agree. With a
    gradient off by more than the tolerance, it is a real disagreement."""
    pairs = pd.DataFrame({
        "agrees": [False, False, False], "lr_times_L": [0.7, 0.7, 0.7],
        "optimizer": ["adam+wd(0.01)", "adam", "sgd"],
        "max_grad_err_vs_terms": [5e-16, 1e-3, 5e-16], "tolerance": [1e-12] * 3,
    })  # fmt: skip
    assert verdicts(pairs).tolist() == [
        "disagrees (the rule's steps amplify rounding; the gradients agree)",
        "DISAGREES",
        "DISAGREES",
    ]


def grid_sweep(val_losses: dict[tuple[str, float, int], float]):
    runs = [
        {"run_id": f"{impl}-{lr}-{seed}", "impl": impl, "lr": lr, "seed": seed,
         "val/loss": loss, "val/accuracy": 1 - loss, "train/loss": loss}
        for (impl, lr, seed), loss in val_losses.items()
    ]  # fmt: skip
    return MemorySweep(runs, {}, {})


def test_best_lr_is_the_lowest_mean_over_seeds_and_edges_are_flagged():
    losses = {}
    for seed, jitter in ((0, 0.0), (1, 0.02)):
        for lr, loss in ((0.01, 0.5), (0.1, 0.3), (1.0, 0.4)):
            losses[("autograd", lr, seed)] = loss + jitter
        for lr, loss in ((0.01, 0.5), (0.1, 0.45), (1.0, 0.2)):  # best at the grid's top
            losses[("manual", lr, seed)] = loss + jitter
    losses[("manual", 0.1, 1)] = 0.1  # one lucky seed does not make 0.1 best (mean 0.275)
    best = compare.best_lrs(grid_sweep(losses)).set_index("impl")
    assert best.loc["autograd", "best_lr"] == 0.1 and not best.loc["autograd", "on_edge"]
    assert best.loc["manual", "best_lr"] == 1.0 and best.loc["manual", "on_edge"]
    assert best.loc["manual", "val_loss_mean"] == pytest.approx(0.21, rel=1e-12, abs=0)
    assert best.loc["manual", "val_loss_std"] == pytest.approx(
        np.std([0.2, 0.22], ddof=1), rel=1e-12, abs=0
    )
    assert best.loc["manual", "val_loss_vs_autograd"] == pytest.approx(
        0.21 - 0.31, rel=1e-12, abs=0
    )
    assert best.loc["manual", "best_lr_autograd"] == 0.1


def test_separability_is_decided_exactly():
    assert compare.separable(np.array([[0.0], [1.0]]), np.array([0, 1]))
    xor = np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    assert not compare.separable(xor, np.array([0, 0, 1, 1]))
    X, y = datasets.load("breast_cancer")
    assert compare.separable((X - X.mean(0)) / X.std(0), y)
    X, y = datasets.load("iris")
    assert not compare.separable(X, y)


def test_reference_gap_is_measured_from_a_true_optimum_and_refused_without_one():
    runs = [
        {"run_id": "iris-run", "impl": "manual", "lr": 0.1, "train/loss": 0.5,
         "val/loss": 0.5, "val/accuracy": 0.8},
        {"run_id": "bc-run", "impl": "manual", "lr": 0.1, "train/loss": 0.05, "val/loss": 0.1,
         "val/accuracy": 0.9, "dataset": "breast_cancer", "dataset_name": "breast_cancer"},
    ]  # fmt: skip
    table = compare.reference(MemorySweep(runs, {}, {})).set_index("run_id")
    iris = table.loc["iris-run"]
    assert not iris.separable and iris.optimum_grad_norm < 1e-6
    assert 0 < iris.optimum_train_loss < 0.5
    assert iris.gap_to_optimum == pytest.approx(0.5 - iris.optimum_train_loss, rel=1e-12, abs=0)
    cancer = table.loc["bc-run"]
    assert cancer.separable and np.isnan(cancer.optimum_train_loss)
    assert np.isnan(cancer.gap_to_optimum) and "no minimiser" in cancer.note


def test_weight_decay_gives_separable_data_an_optimum_and_multiclass_data_has_one():
    """With L2 (λ = 0.01 on W) breast_cancer's objective has a minimiser; softmax on all of
    iris has one without it. The run's objective includes (λ/2)‖W‖² from param/w_norm."""
    runs = [
        {"run_id": "bc-wd", "impl": "manual", "lr": 0.1, "train/loss": 0.1, "param/w_norm": 2.0,
         "val/loss": 0.1, "val/accuracy": 0.9, "dataset": "breast_cancer",
         "dataset_name": "breast_cancer", "weight_decay": 0.01, "optimizer": "sgd+wd(0.01)"},
        {"run_id": "iris3", "impl": "manual", "lr": 0.1, "train/loss": 0.3, "val/loss": 0.3,
         "val/accuracy": 0.9, "dataset": "iris(classes=all)", "dataset.classes": "all",
         "n_classes": 3},
    ]  # fmt: skip
    table = compare.reference(MemorySweep(runs, {}, {})).set_index("run_id")
    cancer = table.loc["bc-wd"]
    assert cancer.separable and cancer.note == "" and cancer.optimum_grad_norm < 1e-6
    assert cancer.final_train_loss == pytest.approx(0.1 + 0.01 / 2 * 2.0**2, rel=1e-12, abs=0)
    assert 0 < cancer.optimum_train_loss < cancer.final_train_loss
    assert cancer.gap_to_optimum == pytest.approx(
        0.12 - cancer.optimum_train_loss, rel=1e-12, abs=0
    )
    iris = table.loc["iris3"]
    assert not iris.separable and iris.optimum_grad_norm < 1e-6
    assert 0 < iris.optimum_train_loss < 0.3


def test_multiclass_separability_is_decided_exactly():
    X = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert compare.separable(X, np.array([0, 1, 2]), 3)  # three points, three classes
    X = np.array([[0.0], [1.0], [2.0], [3.0]])
    assert not compare.separable(X, np.array([0, 1, 0, 2]), 3)  # class 0 on both sides of 1
    assert compare.separable(X, np.array([0, 1, 1, 2]), 3)  # ordered on a line: separable


def test_smoothness_sets_the_stable_learning_rate():
    """L = λ_max(X̃ᵀX̃)/4m: for one standardised feature plus the bias column, λ_max = 1."""
    X = np.array([[-1.0], [1.0]])
    assert compare.smoothness(X) == pytest.approx(0.25, rel=1e-12, abs=0)
