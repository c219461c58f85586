"""Trajectories: 1,000 full-batch GD steps give the same path whoever computes the gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import manual_models.logistic
from analysis import TOLERANCES, trajectory_gap
from experiments import datasets, fit, loop
from experiments.lr_batch import build
from manual_models import Optimizer, make_model

STEPS, LR = 1000, 0.1


def run(impl, X, y, steps=STEPS):
    model = make_model(impl, X.shape[1], LR, dtype=X.dtype, device=X.device, seed=0)
    return fit(model, X, y, steps)


@pytest.mark.parametrize("impl", ["manual", "function"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_trajectory_matches_autograd(impl, dtype, breast_cancer):
    X, y = (t.to(dtype) for t in breast_cancer)
    got, ref = run(impl, X, y), run("autograd", X, y)
    gap = trajectory_gap(got, ref)
    assert gap.max_delta_w <= TOLERANCES[dtype], gap
    assert gap.agrees(dtype), gap
    # The path is not trivial: the loss fell by an order of magnitude and w moved far.
    assert ref.loss[-1] < ref.loss[0] / 10
    assert (ref.w[-1] - ref.w[0]).norm() > 1


@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
@pytest.mark.parametrize(("steps", "max_values", "every"), [(100, 10**6, 1), (100, 1200, 6),
                         (99, 1200, 6), (100, 60, 105)])  # fmt: skip
def test_the_loop_keeps_every_kth_row_and_the_last_and_all_metrics(
    impl, steps, max_values, every, breast_cancer
):
    """Bounded memory changes what is kept, never what is computed: the kept rows are those of
    the full record bit for bit, and so is every metric (CUDA graphs included)."""
    X, y = (t.float() for t in breast_cancer)
    K = 3  # learning rates side by side: 2 · (30 + 1) values a row a run
    lrs = [0.01, 0.1, 1.0]
    new = {"dtype": X.dtype, "device": X.device, "seed": 0}
    common = {"X_val": X[:50], "y_val": y[:50], "check_every": 7}
    fits = {}
    for limit in (None, max_values):
        model, ref = build(impl, 30, lrs, **new), build("autograd", 30, lrs, **new)
        reference = ref if impl != "autograd" else None
        fits[limit] = fit(model, X, y, steps, reference=reference, max_trajectory_values=limit,
                          **common)  # fmt: skip
    full, kept = fits[None], fits[max_values]
    rows = sorted({*range(0, steps + 1, every), steps})
    assert kept.every == every and kept.kept.tolist() == rows
    assert len(kept.kept) * 2 * 31 <= max_values + 2 * 31 or every > steps  # one row over at most
    for name in ("w", "b", "dw", "db"):
        assert torch.equal(getattr(kept, name), getattr(full, name)[rows]), name
    assert kept.metrics.keys() == full.metrics.keys()
    for name, values in full.metrics.items():
        assert torch.equal(kept.metrics[name], values) or torch.allclose(
            kept.metrics[name], values, rtol=0, atol=0, equal_nan=True
        ), name
    assert kept.metrics["train/loss"].shape == (steps + 1, K)
    assert [r.kept.tolist() for r in kept.runs()] == [rows] * K


def test_a_run_that_diverges_is_cut_at_its_first_non_finite_row_whatever_is_kept(breast_cancer):
    X, y = (t.float() for t in breast_cancer)
    lrs = [0.1, 1e38]  # 1e38 overflows float32 at its first step
    new = {"dtype": X.dtype, "device": X.device, "seed": 0}
    histories = [
        fit(build("manual", 30, lrs, **new), X, y, 200, max_trajectory_values=limit)
        for limit in (None, 2 * 31 * 20)
    ]
    (_, wild_full), (calm, wild) = (h.runs() for h in histories)
    assert calm.diverged_at is None and calm.steps == 200
    assert wild_full.diverged_at is not None and wild.diverged_at == wild_full.diverged_at
    assert wild.steps == wild.diverged_at and wild.loss.shape == (wild.diverged_at + 1,)
    assert int(wild.kept[-1]) <= wild.diverged_at  # its parameters end at the last kept row


def test_history_layout(breast_cancer):
    X, y = breast_cancer
    history = run("manual", X, y, steps=5)
    assert history.steps == 5
    assert history.w.shape == (6, 30) and history.dw.shape == (6, 30)
    assert set(history.metrics) == {
        "train/loss",
        "train/accuracy",
        "grad/w_norm",
        "grad/b",
        "param/w_norm",
        "param/b",
    }
    assert all(v.shape == (6,) and v.device.type == "cpu" for v in history.metrics.values())
    # Row t holds θ_t and the gradient there: w[t+1] = w[t] − lr·dw[t], b likewise.
    torch.testing.assert_close(
        history.w[1:], history.w[:-1] - LR * history.dw[:-1], rtol=0, atol=1e-15
    )
    torch.testing.assert_close(
        history.b[1:], history.b[:-1] - LR * history.db[:-1], rtol=0, atol=1e-15
    )
    # The last row is the final state, evaluated without a step.
    final = make_model("manual", 30, LR, dtype=X.dtype, device=X.device)
    final.set_parameters(history.w[-1].to(X.device), history.b[-1])
    torch.testing.assert_close(history.loss[-1], final.loss(X, y).cpu(), rtol=1e-15, atol=0)
    torch.testing.assert_close(
        history.dw[-1], final.gradients(X, y)["dw"].cpu(), rtol=1e-15, atol=0
    )


def test_trajectory_check_catches_a_0_1_percent_gradient_bug(breast_cancer, monkeypatch):
    X, y = breast_cancer
    ref = run("autograd", X, y, steps=200)
    correct = manual_models.logistic.bce_gradients

    def scaled(*args):
        return {k: 1.001 * v for k, v in correct(*args).items()}

    monkeypatch.setattr(manual_models.logistic, "bce_gradients", scaled)
    assert not trajectory_gap(run("manual", X, y, steps=200), ref).agrees(torch.float64)


def test_reruns_are_bit_identical(breast_cancer):
    X, y = breast_cancer
    a, b = run("manual", X, y, steps=50), run("manual", X, y, steps=50)
    assert torch.equal(a.w, b.w) and torch.equal(a.loss, b.loss)


@pytest.mark.parametrize("steps", [0, -1, 2.0])
def test_bad_steps(steps, breast_cancer):
    X, y = breast_cancer
    with pytest.raises(ValueError, match="steps"):
        fit(make_model("manual", 30, dtype=torch.float64, device=X.device), X, y, steps)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["breast_cancer", "iris", "wine", "digits", "moons"])
@pytest.mark.parametrize("lr", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_trajectories_agree_on_every_dataset_and_lr(name, lr, dtype, device):
    X, y = datasets.load(name)
    X = torch.tensor((X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1), dtype=dtype)
    y = torch.tensor(y, dtype=dtype)
    X, y = X.to(device), y.to(device)
    histories = {
        impl: fit(make_model(impl, X.shape[1], lr, dtype=dtype, device=device), X, y, 2000)
        for impl in ("manual", "function", "autograd")
    }
    for impl in ("manual", "function"):
        gap = trajectory_gap(histories[impl], histories["autograd"])
        assert gap.agrees(dtype), (impl, gap)


@pytest.mark.parametrize("impl", ["manual", "function"])
def test_validation_metrics_and_gradient_check(impl, breast_cancer):
    X, y = breast_cancer
    X_train, y_train, X_val, y_val = X[:400], y[:400], X[400:], y[400:]
    model = make_model(impl, 30, LR, dtype=X.dtype, device=X.device)
    reference = make_model("autograd", 30, LR, dtype=X.dtype, device=X.device)
    history = fit(
        model, X_train, y_train, 20, X_val=X_val, y_val=y_val, reference=reference, check_every=3
    )
    m = history.metrics
    assert set(m) >= {"val/loss", "val/accuracy", "check/grad_rel_err", "check/grad_err_vs_terms"}
    checked = ~torch.isnan(m["check/grad_rel_err"])
    assert checked.nonzero().flatten().tolist() == [0, 3, 6, 9, 12, 15, 18, 20]
    assert m["check/grad_rel_err"][checked].max() < 1e-12
    assert 0.9 < m["val/accuracy"][-1] <= 1 and m["val/loss"][-1] < m["val/loss"][0]
    # The reference stays a reference: training did not move the model that checks it...
    assert reference.w.data_ptr() != model.w.data_ptr()
    # ...and its gradient really is compared: a wrong one would show.
    probe = make_model("autograd", 30, LR, dtype=X.dtype, device=X.device)
    probe.set_parameters(history.w[20].to(X.device), history.b[20])
    expected = probe.gradients(X_train, y_train)
    torch.testing.assert_close(history.dw[20], expected["dw"].cpu(), rtol=1e-12, atol=0)


def iris_split(n_classes: int, device: str):
    """All of iris (three classes) or versicolor vs virginica, standardised, split 100 / rest:
    the two halves give different losses and accuracies at every step."""
    X, y = datasets.load("iris", classes="all" if n_classes == 3 else "binary")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float64)[order].to(device)
    y = torch.tensor(y)[order].to(device)
    y = y if n_classes == 3 else y.double()
    return X[:60], y[:60], X[60:], y[60:]


ROWS = [0, 1, 2, 7, 19, 39, 40]  # the first rows, some in the middle, the last (no step taken)


@pytest.mark.parametrize("n_classes", [2, 3], ids=["logistic", "softmax"])
@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
def test_every_row_is_the_metrics_of_its_own_parameters(impl, n_classes, device):
    """Row t holds θ_t and what θ_t scores: a fresh model set to the logged (w_t, b_t) gives the
    same training loss and accuracy on the training data, validation loss and accuracy on the
    validation data and gradient, to the last bit (the same implementation, the same
    operations), and the same norms. A loss recorded after the step, or validation scored on
    the training data, fails at the first row."""
    X, y, X_val, y_val = iris_split(n_classes, device)
    new = {"n_classes": n_classes, "dtype": torch.float64, "device": device}
    model, fresh = make_model(impl, 4, 0.5, **new), make_model(impl, 4, 0.5, **new)
    history = fit(model, X, y, 40, X_val=X_val, y_val=y_val)
    m = history.metrics
    for t in ROWS:
        fresh.set_parameters(history.w[t].to(device), history.b[t].to(device))
        grads = fresh.gradients(X, y)
        scores = {
            "train/loss": fresh.loss(X, y),
            "train/accuracy": fresh.accuracy(fresh.logits(X), y),
            "val/loss": fresh.loss(X_val, y_val),
            "val/accuracy": fresh.accuracy(fresh.logits(X_val), y_val),
        }
        for name, value in scores.items():
            assert m[name][t] == value.cpu(), (name, t, float(m[name][t]), float(value))
        assert torch.equal(history.dw[t], grads["dw"].cpu()), t
        # Norms sum the squares in memory order, which a transposed W changes: a few ulp.
        norms = {"grad/w_norm": grads["dw"], "param/w_norm": fresh.w}
        for name, tensor in norms.items():
            norm = float(torch.linalg.vector_norm(tensor))
            assert abs(float(m[name][t]) - norm) <= 1e-15 * norm, (name, t)
    # The rows are not alike: train and validation differ, and the loss moved.
    assert (m["train/loss"] != m["val/loss"]).all()
    assert m["train/loss"][-1] < 0.9 * m["train/loss"][0]


def test_gradient_checks_near_an_optimum(monkeypatch):
    """iris (not separable) converges: ‖g‖ → 1e-8 in float32, and the plain relative error of
    two correct gradients grows with it; the error relative to the summands does not. A wrong
    gradient moves both."""
    X, y = datasets.load("iris")
    X = torch.tensor((X - X.mean(0)) / X.std(0), dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.float32)

    def checked_run():
        model = make_model("manual", 4, 10.0)
        return fit(model, X, y, 1500, reference=make_model("autograd", 4, 10.0)).metrics

    m = checked_run()
    assert m["grad/w_norm"][-1] < 1e-5
    assert m["check/grad_rel_err"].max() > 1e-4  # looks alarming, is rounding
    assert m["check/grad_err_vs_terms"].max() < 1e-6  # float32 epsilon-sized all along
    correct = manual_models.logistic.bce_gradients
    monkeypatch.setattr(
        manual_models.logistic,
        "bce_gradients",
        lambda *a: {k: 1.001 * v for k, v in correct(*a).items()},
    )
    assert checked_run()["check/grad_err_vs_terms"].max() > 1e-4


def run_without_host_syncs(steps: loop.Loop) -> loop.History:
    """Every row, with any device-to-host synchronisation an error; then the history."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps.run_to(steps.steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return steps.history()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
@pytest.mark.parametrize(
    "impl, lr",
    [("manual", LR), ("function", LR), ("autograd", LR), ("manual", [0.01, LR, 1.0]),
     ("function", [0.01, LR, 1.0])],
    ids=["manual", "function", "autograd", "manual-3-lrs", "function-3-lrs"],
)  # fmt: skip
def test_the_loop_never_waits_for_the_host_on_cuda(impl, lr, graphs, breast_cancer_np):
    """Under sync debug mode "error", any .item(), host copy or data-dependent branch raises."""
    X, y = (torch.tensor(a, dtype=torch.float32, device="cuda") for a in breast_cancer_np)
    lrs = lr if isinstance(lr, list) else [lr]
    model = build(impl, 30, lrs, device="cuda")
    reference = None if impl == "autograd" else build("autograd", 30, lrs, device="cuda")
    new = {"X_val": X, "y_val": y, "reference": reference, "cuda_graphs": graphs}
    steps = loop.Loop(model, X, y, 50, check_every=2, **new)  # labels checked here, once
    history = run_without_host_syncs(steps)
    assert torch.isfinite(history.loss).all() and (history.loss[-1] < history.loss[0]).all()
    if reference is not None:  # checked rows (even, and the last) and only those
        checked = ~torch.isnan(history.metrics["check/grad_rel_err"])
        assert checked.reshape(51, -1).all(1).nonzero().flatten().tolist() == list(range(0, 51, 2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
def test_cuda_graphs_replay_the_same_steps(impl, breast_cancer_np):
    """A captured step replays the kernels the eager step launches: the same trajectory."""
    X, y = (torch.tensor(a, dtype=torch.float64, device="cuda") for a in breast_cancer_np)

    def run(graphs):
        model = make_model(impl, 30, LR, device="cuda", dtype=torch.float64)
        reference = (
            None
            if impl == "autograd"
            else make_model("autograd", 30, LR, device="cuda", dtype=torch.float64)
        )
        return fit(model, X, y, 200, X_val=X, y_val=y, reference=reference, cuda_graphs=graphs)

    eager, graphs = run(False), run(True)
    for name, values in eager.metrics.items():
        torch.testing.assert_close(
            graphs.metrics[name], values, rtol=1e-12, atol=1e-15, equal_nan=True, msg=name
        )
    torch.testing.assert_close(graphs.w, eager.w, rtol=1e-12, atol=1e-15)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
@pytest.mark.parametrize(
    ("n_classes", "rule"),
    [(2, Optimizer("adam", weight_decay=0.01)), (2, Optimizer("nesterov")),
     (3, Optimizer()), (3, Optimizer("momentum", zero_grad=False))],
    ids=["adam+wd", "nesterov", "softmax", "softmax-momentum-no-zero_grad"],
)  # fmt: skip
def test_rules_and_softmax_replay_as_graphs_without_host_syncs(impl, n_classes, rule):
    """Stateful rules (Adam's step count, momentum buffers) and softmax stay on the device:
    no host sync in any step, and the captured steps replay the eager trajectory."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g, dtype=torch.float64).cuda()
    y = torch.randint(0, n_classes, (200,), generator=g).cuda()
    y = y if n_classes > 2 else y.double()
    new = {"n_classes": n_classes, "device": "cuda", "dtype": torch.float64, "optimizer": rule}

    def run(graphs):
        model = make_model(impl, 6, 0.05, **new)
        reference = None if impl == "autograd" else make_model("autograd", 6, 0.05, **new)
        inputs = {"X_val": X, "y_val": y, "reference": reference, "cuda_graphs": graphs}
        return run_without_host_syncs(loop.Loop(model, X, y, 40, **inputs))

    eager, graphs = run(False), run(True)
    torch.testing.assert_close(graphs.w, eager.w, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(graphs.loss, eager.loss, rtol=1e-12, atol=1e-15)
