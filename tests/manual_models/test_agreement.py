"""The proof: the hand-written forward, loss and gradient equal autograd's, on any data.

One check (:func:`assert_matches_autograd`) runs on every implementation: put the model and the
autograd reference at the same parameters, then compare forward, loss, dw and db separately.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from manual_models import LogisticRegression, compare, make_model

CHALLENGERS = ["manual", "function"]  # each checked against "autograd"
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def outputs_at(impl: str, X, y, w, b) -> dict[str, torch.Tensor]:
    model = make_model(impl, X.shape[1], 0.1, dtype=X.dtype, device=X.device)
    model.set_parameters(w, b)
    grads = model.gradients(X, y)
    return {"forward": model.forward(X), "loss": model.loss(X, y), **grads}


def assert_matches_autograd(impl: str, X, y, w, b) -> None:
    got, ref = outputs_at(impl, X, y, w, b), outputs_at("autograd", X, y, w, b)
    for name in ("forward", "loss", "dw", "db"):
        result = compare(name, got[name], ref[name])
        assert result.within(RTOL[X.dtype]), f"{impl}: {result}"


finite = {"allow_nan": False, "allow_infinity": False, "allow_subnormal": False}


@st.composite
def problems(draw):
    """Random shapes and values, float64: X (m, n), labels, and a parameter point."""
    m = draw(st.integers(1, 64))
    n = draw(st.integers(1, 16))
    X = draw(arrays(np.float64, (m, n), elements=st.floats(-10, 10, **finite)))
    y = draw(arrays(np.int64, (m,), elements=st.integers(0, 1)))
    w = draw(arrays(np.float64, (n,), elements=st.floats(-3, 3, **finite)))
    b = draw(st.floats(-3, 3, **finite))
    return (
        torch.from_numpy(X),
        torch.from_numpy(y).double(),
        torch.from_numpy(w),
        torch.tensor(b, dtype=torch.float64),
    )


@pytest.mark.parametrize("impl", CHALLENGERS)
@given(problem=problems())
def test_matches_autograd_on_random_problems_float64(impl, problem, exact):
    check_random_problem(impl, problem, exact)


@pytest.mark.slow
@pytest.mark.parametrize("impl", CHALLENGERS)
@settings(max_examples=5000)
@given(problem=problems())
def test_matches_autograd_on_many_random_problems_float64(impl, problem, exact):
    check_random_problem(impl, problem, exact)


def check_random_problem(impl, problem, exact):
    X, y, w, b = problem
    got, ref = outputs_at(impl, X, y, w, b), outputs_at("autograd", X, y, w, b)
    assert compare("forward", got["forward"], ref["forward"]).within(1e-12)
    # The loss, relative to its exact value however small that is (60 digits, at the same
    # float64 logits).
    z = X @ w + b
    loss = exact.bce(z, y)
    assert abs(float(got["loss"]) - loss) <= 1e-12 * loss, (float(got["loss"]), loss)
    # Against autograd the errors are relative to the size of what was added up, which can
    # dwarf the result: the gradient sums m terms (ŷᵢ − yᵢ)xᵢ/m that may cancel, and
    # BCEWithLogitsLoss computes a tiny loss as log(1 + tiny), keeping ~1e-16 of |z| + 1
    # (docs/proof.md). On data without cancellation this is the plain relative error.
    residual = (torch.sigmoid(z) - y).abs()
    scale = {
        "loss": (z.abs() + 1).mean(),
        "dw": X.abs().T @ residual / len(y),
        "db": residual.mean(),
    }
    for name in ("loss", "dw", "db"):
        err = (got[name] - ref[name]).norm()
        assert err <= 1e-12 * max(ref[name].norm(), scale[name].norm()), (name, float(err))


@pytest.mark.parametrize("impl", CHALLENGERS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_matches_autograd_on_breast_cancer(impl, dtype, breast_cancer):
    X, y = (t.to(dtype) for t in breast_cancer)
    for seed in range(3):
        w, b = LogisticRegression(X.shape[1], seed=seed, dtype=dtype, device=X.device).w, 0.3
        assert_matches_autograd(impl, X, y, w, torch.tensor(b))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_same_seed_same_start_for_all_three(dtype, device):
    models = [
        make_model(impl, 7, dtype=dtype, device=device, seed=3)
        for impl in ("manual", "autograd", "function")
    ]
    for model in models[1:]:
        assert torch.equal(model.w, models[0].w) and torch.equal(model.b, models[0].b)
    other = make_model("manual", 7, dtype=dtype, device=device, seed=4)
    assert not torch.equal(other.w, models[0].w)


def central_difference(f, theta: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """∂f/∂θ by (f(θ + h eᵢ) − f(θ − h eᵢ)) / 2h, one coordinate at a time (float64 only)."""
    assert theta.dtype == torch.float64
    grad = torch.empty_like(theta)
    for i in range(theta.numel()):
        step = torch.zeros_like(theta)
        step.view(-1)[i] = h
        grad.view(-1)[i] = (f(theta + step) - f(theta - step)) / (2 * h)
    return grad


@pytest.mark.parametrize("seed", [0, 1])
def test_manual_gradient_matches_central_differences(seed, breast_cancer):
    X, y = breast_cancer
    model = LogisticRegression(X.shape[1], dtype=torch.float64, device=X.device, seed=seed)
    w0, b0 = model.w.clone(), model.b.clone()

    def loss_at(w, b):
        model.set_parameters(w, b)
        return model.loss(X, y)

    fd_w = central_difference(lambda w: loss_at(w, b0), w0)
    fd_b = central_difference(lambda b: loss_at(w0, b), b0)
    model.set_parameters(w0, b0)
    grads = model.gradients(X, y)
    assert compare("dw", grads["dw"], fd_w).within(1e-7)
    assert compare("db", grads["db"], fd_b).within(1e-7)


def test_central_differences_catch_a_wrong_gradient(breast_cancer):
    X, y = breast_cancer
    model = LogisticRegression(X.shape[1], dtype=torch.float64, device=X.device)
    w0 = model.w.clone()

    def loss_at(w):
        model.set_parameters(w, model.b)
        return model.loss(X, y)

    fd_w = central_difference(loss_at, w0)
    model.set_parameters(w0, model.b)
    assert not compare("dw", 1.001 * model.gradients(X, y)["dw"], fd_w).within(1e-7)
