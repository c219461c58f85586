from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.data import digest
from experiments.loop import History
from experiments.records import CURVES, read_trajectory, series, thin, trajectory_table


@pytest.mark.parametrize(("n", "k"), [(1, 200), (200, 200), (201, 200), (1001, 200), (10**6, 7)])
def test_thinning_keeps_first_and_last_and_at_most_k(n, k):
    kept = thin(n, k)
    assert kept[0] == 0 and kept[-1] == n - 1
    assert len(kept) == min(n, k) and np.all(np.diff(kept) > 0)


def test_one_point_is_the_last_and_two_are_the_ends():
    assert thin(1001, 1).tolist() == [1000] and thin(1, 1).tolist() == [0]
    assert thin(1001, 2).tolist() == [0, 1000]


def test_thinning_is_dense_early_and_never_leaves_a_wide_gap():
    """1,000 steps in 200 points: every one of the first steps, where a large learning rate's
    loss falls fastest, and no gap wider than two evenly spaced points would leave."""
    kept = thin(1001, 200)
    assert kept[:12].tolist() == list(range(12))
    assert np.diff(kept).max() <= 2 * 1000 / 199
    assert (kept < 100).sum() > 2 * (kept >= 900).sum()  # denser at the start than at the end


def test_curves_and_log10_checks():
    """The checks also go as log10 (an exact 0 at −18); unchecked rows (NaN) stay NaN."""
    rows = 4
    metrics = {"train/loss": torch.ones(rows), "check/grad_err_vs_terms":
               torch.tensor([1e-16, float("nan"), 0.0, 1e-7], dtype=torch.float64)}  # fmt: skip
    params = {"w": torch.zeros(rows, 2), "b": torch.zeros(rows)}
    grads = {"dw": torch.zeros(rows, 2), "db": torch.zeros(rows)}
    history = History(metrics, params, grads, torch.arange(rows))
    out = series(history)
    assert set(out) == {"train/loss", "check/grad_err_vs_terms", "check/log10_grad_err_vs_terms"}
    log10 = out["check/log10_grad_err_vs_terms"]
    assert log10[0] == -16 and np.isnan(log10[1]) and log10[2] == -18 and log10[3] == -7
    assert set(CURVES) >= {"train/loss", "val/loss", "check/log10_grad_err_vs_terms"}


def test_the_trajectory_is_the_rows_the_loop_kept():
    kept = torch.tensor([0, 11, 22, 1000])
    w, b = torch.arange(4 * 5).view(4, 5).double(), torch.zeros(4)
    history = History({"train/loss": torch.zeros(1001)}, {"w": w, "b": b}, {"dw": -w, "db": b},
                      kept, every=11)  # fmt: skip
    frame = trajectory_table(history).to_pandas()
    assert frame["step"].tolist() == [0, 11, 22, 1000]
    assert list(frame.columns[1:7]) == ["w[0]", "w[1]", "w[2]", "w[3]", "w[4]", "b"]
    assert frame.shape == (4, 1 + 2 * 6)
    assert frame["w[3]"].tolist() == w[:, 3].tolist()
    assert frame["dw[3]"].tolist() == (-w[:, 3]).tolist()


def test_parameters_by_name_read_back_in_their_shapes():
    """Any names and shapes (a network's W1 (3, 2), b1 (2,), W2 (2,), b2 ()) come back as
    written."""
    g = torch.Generator().manual_seed(0)
    shapes = {"W1": (3, 2), "b1": (2,), "W2": (2,), "b2": ()}
    params = {n: torch.randn(5, *s, generator=g, dtype=torch.float64) for n, s in shapes.items()}
    grads = {f"d{n}": -t for n, t in params.items()}
    history = History({"train/loss": torch.zeros(5)}, params, grads, torch.arange(5))
    steps, read, read_grads = read_trajectory(trajectory_table(history).to_pandas())
    assert steps.tolist() == [0, 1, 2, 3, 4]
    assert list(read) == list(shapes) and list(read_grads) == [f"d{n}" for n in shapes]
    for name, t in {**params, **grads}.items():
        assert np.array_equal({**read, **read_grads}[name], t.numpy()), name


@pytest.mark.parametrize("n_classes", [2, 3])
def test_a_trajectory_from_before_names_reads_as_w_and_b(n_classes):
    """Stores written before parameters had names hold θ flat as w_0 …: logistic's w (its b
    in the history's param/b), softmax's W row by row, then b."""
    rows, n = 3, 4
    if n_classes == 2:
        theta = np.arange(rows * n, dtype=float).reshape(rows, n)
    else:
        theta = np.arange(rows * (n + 1) * n_classes, dtype=float).reshape(rows, -1)
    old = pd.DataFrame({"step": [0, 5, 9]})
    for j in range(theta.shape[1]):
        old[f"w_{j}"] = theta[:, j]
    for j in range(theta.shape[1]):
        old[f"dw_{j}"] = -theta[:, j]
    history = pd.DataFrame({"param/b": np.arange(10.0), "grad/b": -np.arange(10.0)})
    steps, params, grads = read_trajectory(old, n_classes=n_classes, history=history)
    assert steps.tolist() == [0, 5, 9]
    if n_classes == 2:
        assert np.array_equal(params["w"], theta) and params["b"].tolist() == [0, 5, 9]
        assert grads["db"].tolist() == [0, -5, -9]
    else:
        split = n * n_classes
        assert np.array_equal(params["w"], theta[:, :split].reshape(rows, n, n_classes))
        assert np.array_equal(params["b"], theta[:, split:])
        assert np.array_equal(grads["dw"], -params["w"])


def test_digest_sees_every_value():
    X = np.zeros((100_000, 10))
    before = digest(X, np.zeros(100_000))
    X[50_000, 3] = 1e-300
    assert digest(X, np.zeros(100_000)) != before
    assert digest(X.reshape(10, -1), np.zeros(100_000)) != digest(X, np.zeros(100_000))


def test_experiments_open_in_the_model_training_view(tmp_path):
    """A sweep's experiment is of the model-training kind, one made before the tag gets it,
    and the printed link names the view: the UI opens on the runs, not on GenAI's traces."""
    from experiments.tracking import KIND, MODEL_TRAINING, Tracker, runs_page

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracker.open()
    made = tracker.experiment("fresh")
    assert tracker.client.get_experiment(made).tags[KIND] == MODEL_TRAINING
    old = tracker.client.create_experiment("old")  # as a store from before holds it
    assert KIND not in tracker.client.get_experiment(old).tags
    assert tracker.experiment("old") == old
    assert tracker.client.get_experiment(old).tags[KIND] == "custom_model_development"
    assert runs_page("7") == "#/experiments/7/runs?workflowType=machine_learning"
