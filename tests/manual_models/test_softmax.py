"""Softmax regression: the binary model's proof, for C classes.

The same checks as for logistic regression: forward, loss, dW and db against autograd at the
same parameters (float64, ≤ 1e-12 relative to the size of the sums), central differences,
a tightened gradcheck that sees a 0.1% bug, and whole trajectories.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.autograd import gradcheck, gradgradcheck

from experiments.loop import fit
from manual_models import (
    LogisticRegression,
    SoftmaxLoss,
    SoftmaxRegression,
    compare,
    cross_entropy_from_logits,
    make_model,
)

CHALLENGERS = ["manual", "function"]
TIGHT = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}
finite = {"allow_nan": False, "allow_infinity": False, "allow_subnormal": False}


def outputs_at(impl, X, y, W, b, n_classes):
    model = make_model(impl, X.shape[1], 0.1, n_classes=n_classes, dtype=X.dtype, device=X.device)
    model.set_parameters(W, b)
    return {"forward": model.forward(X), "loss": model.loss(X, y), **model.gradients(X, y)}


@st.composite
def problems(draw):
    """Random shapes and values in float64: X (m, n), C classes, labels, and (W, b)."""
    m, n, C = draw(st.integers(1, 48)), draw(st.integers(1, 12)), draw(st.integers(3, 7))
    X = draw(arrays(np.float64, (m, n), elements=st.floats(-10, 10, **finite)))
    y = draw(arrays(np.int64, (m,), elements=st.integers(0, C - 1)))
    W = draw(arrays(np.float64, (n, C), elements=st.floats(-3, 3, **finite)))
    b = draw(arrays(np.float64, (C,), elements=st.floats(-3, 3, **finite)))
    return tuple(torch.from_numpy(a) for a in (X, y, W, b)), C


@pytest.mark.parametrize("impl", CHALLENGERS)
@given(problem=problems())
def test_matches_autograd_on_random_problems_float64(impl, problem, exact):
    (X, y, W, b), C = problem
    got, ref = outputs_at(impl, X, y, W, b, C), outputs_at("autograd", X, y, W, b, C)
    assert compare("forward", got["forward"], ref["forward"]).within(1e-12)
    # The loss, relative to its exact value however small (60 digits, the same logits).
    loss = exact.cross_entropy(X @ W + b, y)
    assert abs(float(got["loss"]) - loss) <= 1e-12 * loss, (float(got["loss"]), loss)
    # As for the binary model: against autograd, 1e-12 relative to the size of what was summed
    # (the gradient's m terms (P − Y)ᵢ xᵢ/m can cancel; a tiny loss is log(1 + tiny) in
    # CrossEntropyLoss), elementwise and without an absolute slack.
    R = (torch.softmax(X @ W + b, 1) - torch.eye(C, dtype=X.dtype)[y]).abs()
    scale = {
        "loss": max(float(ref["loss"].abs()), float(torch.logsumexp(X @ W + b, 1).abs().mean())),
        "dw": torch.maximum(ref["dw"].abs(), X.abs().T @ R / len(X)),
        "db": torch.maximum(ref["db"].abs(), R.mean(0)),
    }
    for name in ("loss", "dw", "db"):
        err = (got[name] - ref[name]).abs()
        assert bool((err <= 1e-12 * scale[name]).all()), f"{impl} {name}: {err.max()}"


def iris_all(dtype=torch.float64, device="cpu"):
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    return torch.tensor(X, dtype=dtype, device=device), torch.tensor(y, device=device)


@pytest.mark.parametrize("impl", CHALLENGERS)
def test_matches_autograd_on_iris_at_several_points(impl, device):
    X, y = iris_all(device=device)
    for seed in range(3):
        start = SoftmaxRegression(4, 3, seed=seed, dtype=torch.float64, device=device)
        got = outputs_at(impl, X, y, 3 * start.w, start.b, 3)
        ref = outputs_at("autograd", X, y, 3 * start.w, start.b, 3)
        for name in ("forward", "loss", "dw", "db"):
            assert compare(name, got[name], ref[name]).within(1e-12), name


@pytest.mark.parametrize("seed", [0, 1])
def test_manual_gradient_matches_central_differences(seed):
    X, y = iris_all()
    model = SoftmaxRegression(4, 3, seed=seed, dtype=torch.float64)
    grads = model.gradients(X, y)
    theta = torch.cat([model.w.flatten(), model.b])
    numeric, h = torch.empty_like(theta), 1e-6
    for i in range(len(theta)):
        values = []
        for sign in (1, -1):
            shifted = theta.clone()
            shifted[i] += sign * h
            model.set_parameters(shifted[:12], shifted[12:])
            values.append(float(model.loss(X, y)))
        numeric[i] = (values[0] - values[1]) / (2 * h)
    analytic = torch.cat([grads["dw"].flatten(), grads["db"]])
    assert compare("grad", analytic, numeric).within(1e-7)  # central differences: O(h²)


def test_same_seed_same_start_as_nn_linear_for_all_three():
    models = [
        make_model(i, 5, n_classes=4, seed=3, dtype=torch.float64)
        for i in ("manual", "autograd", "function")
    ]
    for model in models[1:]:
        assert torch.equal(model.w, models[0].w) and torch.equal(model.b, models[0].b)
    assert models[0].w.shape == (5, 4) and models[0].b.shape == (4,)
    # nn.Linear's weight (C, n) row by row: its first row, W[:, 0], is the binary model's w.
    binary = LogisticRegression(5, seed=3, dtype=torch.float64)
    assert torch.equal(models[0].w[:, 0], binary.w)


@pytest.mark.parametrize("impl", CHALLENGERS)
@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_trajectories_match_autograd(impl, dtype, rtol, device):
    """300 steps on all of iris: every step's W, b and loss, within the dtype's tolerance."""
    X, y = iris_all(dtype, device)
    runs = {
        i: fit(make_model(i, 4, 0.5, n_classes=3, dtype=dtype, device=device), X, y, 300)
        for i in (impl, "autograd")
    }
    ours, ref = runs[impl], runs["autograd"]
    assert ours.w.shape == (301, 4, 3) and ours.b.shape == (301, 3)
    assert float((ours.w - ref.w).abs().max()) <= rtol
    assert float((ours.b - ref.b).abs().max()) <= rtol
    assert float((ours.loss - ref.loss).abs().max()) <= rtol
    assert float(ref.loss[-1]) < 0.5 * float(ref.loss[0])  # it trained


@pytest.mark.parametrize("margin", [0.5, 5.0, 20.0, 37.0, 40.0, 100.0, 700.0])
def test_the_loss_keeps_its_digits_at_every_margin(margin, exact):
    """Z = [M, 0, 0]: J = log(1 + 2e^−M) when the answer is right (8.5e-18 at M = 40, where
    log_softmax's 0 − (40 − lse) keeps nothing) and M + log(1 + 2e^−M) when it is wrong; each
    within 1e-15 of its exact value, relative, with no absolute slack."""
    Z = torch.tensor([[margin, 0.0, 0.0]], dtype=torch.float64)
    for label in (0, 1):
        y = torch.tensor([label])
        got, want = float(cross_entropy_from_logits(Z, y)), exact.cross_entropy(Z, y)
        assert abs(got - want) <= 1e-15 * want, (label, got, want)
    rows = torch.tensor([[margin, 0.0, -margin], [0.0, margin, 1.0], [-1.0, 2.0, margin]])
    y = torch.tensor([0, 1, 2])  # several samples, all right, at once
    rows = rows.double()
    got, want = float(cross_entropy_from_logits(rows, y)), exact.cross_entropy(rows, y)
    assert abs(got - want) <= 1e-15 * want, (got, want)


def test_the_reference_rounds_a_confident_answer_away_and_nothing_overflows():
    Z, y = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    assert float(torch.nn.functional.cross_entropy(Z, y)) == 0.0  # log_softmax: 0 − (40 − lse)
    big = torch.tensor([[1e4, -1e4, 0.0]], dtype=torch.float64)
    assert float(cross_entropy_from_logits(big, torch.tensor([1]))) == 2e4  # exactly


def test_two_classes_with_one_column_at_zero_is_the_binary_model():
    """softmax([z, 0]) = (σ(z), 1 − σ(z)): the same loss and the same gradient for w."""
    X, y = iris_all()
    X, y = X[y > 0], (y[y > 0] == 1).long()  # class 1 → index 0 below
    binary = LogisticRegression(4, dtype=torch.float64, seed=5)
    model = SoftmaxRegression(4, 2, dtype=torch.float64)
    model.set_parameters(
        torch.stack([binary.w, torch.zeros(4, dtype=X.dtype)], 1),
        torch.stack([binary.b, torch.zeros((), dtype=X.dtype)]),
    )
    labels = 1 - y  # index 0 is the binary model's positive class
    assert float(model.loss(X, labels)) == pytest.approx(
        float(binary.loss(X, y.double())), rel=1e-14, abs=0
    )
    dW, dw = model.gradients(X, labels)["dw"][:, 0], binary.gradients(X, y.double())["dw"]
    assert compare("dw", dW, dw).within(1e-13)


class ScaledBackward(SoftmaxLoss):
    @staticmethod
    def backward(ctx, grad_output):
        grads = SoftmaxLoss.backward(ctx, grad_output)
        return tuple(None if g is None else 1.001 * g for g in grads)


class ForgotTheMean(SoftmaxLoss):
    """db = Σ(P − Y) instead of its mean: the m forgotten in one place."""

    @staticmethod
    def backward(ctx, grad_output):
        dX, dW, db, dy = SoftmaxLoss.backward(ctx, grad_output)
        return dX, dW, db * ctx.saved_tensors[0].shape[0], dy


def loss_inputs(device, requires_grad=(True, True, True)):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 4, generator=g, dtype=torch.float64)
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (12,), generator=g)
    ts = [t.to(device).requires_grad_(r) for t, r in zip((X, W, b), requires_grad, strict=True)]
    return (*ts, y.to(device))


def test_gradcheck_and_gradgradcheck_tight(device):
    assert gradcheck(SoftmaxLoss.apply, loss_inputs(device), **TIGHT)
    assert gradcheck(SoftmaxLoss.apply, loss_inputs(device, (False, True, True)), **TIGHT)
    assert gradgradcheck(SoftmaxLoss.apply, loss_inputs(device), **TIGHT)


@pytest.mark.parametrize("mutant", [ScaledBackward, ForgotTheMean], ids=["x1.001", "sum-db"])
def test_tight_gradcheck_catches_mutants(mutant, device):
    assert not gradcheck(mutant.apply, loss_inputs(device), raise_exception=False, **TIGHT)


def test_default_gradcheck_misses_the_0_1_percent_bug():
    assert gradcheck(ScaledBackward.apply, loss_inputs("cpu"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_classes": 1}, "n_classes must be an integer >= 2"),
        ({"n_classes": 3, "lr": [0.1, 1.0]}, "lr must be a positive finite number"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression(4, **{"lr": 0.1, **kwargs})


@pytest.mark.parametrize("impl", ["manual", "autograd", "function"])
def test_labels_must_be_class_indices(impl):
    X, y = iris_all()
    model = make_model(impl, 4, n_classes=3, dtype=torch.float64)
    with pytest.raises(ValueError, match="integer tensor"):
        model.loss(X, y.double())
    with pytest.raises(ValueError, match=r"class indices in 0\.\.2"):
        model.loss(X, y + 1)
