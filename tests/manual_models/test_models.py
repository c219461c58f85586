"""The models' contract: shapes, the post's corrections, stability, bad arguments, no autograd."""

from __future__ import annotations

import math

import pytest
import torch

import manual_models
from manual_models import (
    IMPLEMENTATIONS,
    GradientDescentModel,
    LogisticRegression,
    bce_from_logits,
    make_model,
)

ALL = list(IMPLEMENTATIONS)
DTYPES = [torch.float32, torch.float64]


def problem(m=8, n=3, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g, dtype=torch.float64).to(device, dtype)
    y = (torch.arange(m) % 2).to(device, dtype)
    return X, y


@pytest.mark.parametrize("impl", ALL)
def test_interface_and_shapes(impl, device):
    X, y = problem(device=device)
    model = make_model(impl, 3, 0.5, dtype=torch.float64, device=device)
    assert isinstance(model, GradientDescentModel)
    assert model.w.shape == (3,) and model.b.shape == ()
    assert model.forward(X).shape == (8,)
    assert model.loss(X, y).shape == ()
    grads = model.gradients(X, y)
    assert grads["dw"].shape == (3,) and grads["db"].shape == ()
    logits = model.logits(X)
    assert logits.shape == (8,)
    assert model.accuracy(logits, y) == ((logits > 0) == (y > 0.5)).double().mean()
    terms = model.summands(X, y)
    assert terms["dw"].shape == (3,) and terms["db"].shape == ()
    assert (terms["dw"] >= grads["dw"].abs()).all() and terms["db"] >= grads["db"].abs()
    loss, evaluated, z = model.evaluate(X, y)  # one pass: the same loss, gradient and logits
    torch.testing.assert_close(loss, model.loss(X, y), rtol=1e-15, atol=0)
    torch.testing.assert_close(z, logits, rtol=1e-15, atol=0)
    for name, given in model.summands(X, y, z).items():  # from the logits the caller has
        torch.testing.assert_close(given, terms[name], rtol=1e-15, atol=0)
        torch.testing.assert_close(evaluated[name], grads[name], rtol=1e-15, atol=0)
    w0, b0 = model.w.clone(), model.b.clone()
    loss, z = model.train_step(X, y)
    assert loss.shape == () and not loss.requires_grad
    torch.testing.assert_close(loss, model.loss_at(X, y, w0, b0), rtol=1e-15, atol=0)
    torch.testing.assert_close(z, logits, rtol=1e-15, atol=0)  # the step's logits, at θ_t
    torch.testing.assert_close(model.w, w0 - 0.5 * grads["dw"], rtol=1e-12, atol=1e-15)
    assert set(model.grads) == {"dw", "db"}


def test_exports():
    for name in ("LogisticRegression", "AutogradLogisticRegression", "FunctionLogisticRegression"):
        assert hasattr(manual_models, name)
    assert IMPLEMENTATIONS["manual"] is LogisticRegression


def test_manual_forward_backward_optimize_is_gradient_descent():
    """The post's three methods, by hand: dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y), θ ← θ − α∂J/∂θ."""
    X, y = problem()
    model = LogisticRegression(3, lr=0.1, dtype=torch.float64)
    w, b = model.w.clone(), model.b.clone()
    y_hat = model.forward(X)
    torch.testing.assert_close(y_hat, 1 / (1 + torch.exp(-(X @ w + b))), rtol=1e-15, atol=0)
    grads = model.backward(X, y_hat, y)
    assert grads is model.grads
    torch.testing.assert_close(grads["dw"], X.T @ (y_hat - y) / 8, rtol=1e-15, atol=0)
    torch.testing.assert_close(grads["db"], (y_hat - y).mean(), rtol=1e-15, atol=0)
    model.optimize()
    torch.testing.assert_close(model.w, w - 0.1 * grads["dw"], rtol=1e-15, atol=0)
    torch.testing.assert_close(model.b, b - 0.1 * grads["db"], rtol=1e-15, atol=0)


def test_optimize_before_backward_is_an_error():
    with pytest.raises(RuntimeError, match="backward"):
        LogisticRegression(3).optimize()


@pytest.mark.parametrize("impl", ALL)
def test_bias_acts(impl):
    """The post's forward forgot b; here changing b changes every prediction."""
    X, _ = problem()
    model = make_model(impl, 3, dtype=torch.float64)
    before = model.forward(X).detach()
    model.set_parameters(model.w, model.b + 1.0)
    after = model.forward(X).detach()
    assert torch.all(after > before)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_large_logits_stay_finite(impl, dtype, device):
    """Logits of ±1e3: σ saturates to exactly 0 or 1, and loss and gradients are exact: e^−1000
    underflows to 0, so every sample's loss and residual is a whole number."""
    X = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=dtype, device=device)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype, device=device)
    model = make_model(impl, 1, dtype=dtype, device=device)
    model.set_parameters(torch.tensor([1e3]), torch.tensor(0.0))
    loss = model.loss(X, y)
    grads = model.gradients(X, y)
    # Two samples right (loss 0), two wrong by a margin of 1e3 (loss 1e3 each): J = 500.
    # Residuals ŷ − y = (0, 0, 1, −1): dw = Xᵀ(ŷ − y)/4 = 2/4, db = 0. All exact.
    assert float(loss) == 500.0
    assert grads["dw"].tolist() == [0.5] and float(grads["db"]) == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_loss_finite_up_to_the_dtype_limit(dtype):
    big = torch.finfo(dtype).max / 4
    z = torch.tensor([big, -big, big, -big], dtype=dtype)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=dtype)
    loss = bce_from_logits(z, y)
    assert float(loss) == big / 2  # (0 + 0 + big + big) / 4: exact, and nothing overflowed


def test_manual_model_needs_no_autograd():
    X, y = problem()
    with torch.inference_mode():
        inside = LogisticRegression(3, lr=0.1, dtype=torch.float64)
        for _ in range(5):
            inside.train_step(X, y)
    outside = LogisticRegression(3, lr=0.1, dtype=torch.float64)
    for _ in range(5):
        outside.train_step(X, y)
        assert not any(t.requires_grad for t in (outside.w, outside.b, *outside.grads.values()))
    # Same implementation, same device, same order of operations: identical to the bit.
    assert torch.equal(inside.w, outside.w) and torch.equal(inside.b, outside.b)
    inside.train_step(X, y)  # made under inference_mode, trained outside it: still works


@pytest.mark.parametrize("impl", ["autograd", "function"])
def test_twins_say_why_they_cannot_train_under_inference_mode(impl):
    X, y = problem()
    model = make_model(impl, 3, dtype=torch.float64)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        model.train_step(X, y)


@pytest.mark.parametrize("impl", ALL)
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_features": 0}, "n_features"),
        ({"n_features": -2}, "n_features"),
        ({"n_features": 2.5}, "n_features"),
        ({"lr": 0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"lr": float("inf")}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"dtype": torch.float16}, "float32, float64"),
        ({"device": "tpu"}, "cpu, cuda, mps"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_constructor_arguments(impl, kwargs, message):
    args = {"n_features": 3, "lr": 0.1, **kwargs}
    with pytest.raises(ValueError, match=message):
        make_model(impl, args.pop("n_features"), args.pop("lr"), **args)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_absent_device_is_named():
    with pytest.raises(ValueError, match="not available here; present: cpu"):
        LogisticRegression(3, device="cuda")


def test_unknown_implementation():
    with pytest.raises(ValueError, match="manual, autograd, function"):
        make_model("numpy", 3)


@pytest.mark.parametrize("impl", ALL)
def test_bad_data(impl):
    model = make_model(impl, 3, dtype=torch.float64)
    X, y = problem()
    cases = [
        (lambda: model.forward(torch.zeros(8, 4, dtype=torch.float64)), "shape \\(n_samples, 3\\)"),
        (lambda: model.forward(torch.zeros(3, dtype=torch.float64)), "shape \\(n_samples, 3\\)"),
        (lambda: model.forward(X.float()), "dtype"),
        (lambda: model.forward(X.to("meta")), "is on meta but the model is on cpu"),
        (lambda: model.loss(X, y[:5]), "shape \\(8,\\)"),
        (lambda: model.loss(X, y + 1), "\\{0, 1\\}"),
        (lambda: model.gradients(X, 0.5 * y), "\\{0, 1\\}"),
        (lambda: model.train_step(X, y.to("meta")), "y is on meta"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        model.forward(X.numpy())


def test_integer_labels_are_accepted():
    X, y = problem()
    model = LogisticRegression(3, dtype=torch.float64)
    assert torch.equal(model.loss(X, y.long()), model.loss(X, y))


@pytest.mark.parametrize("t", [-5.0, -30.0, -37.0, -200.0])
def test_loss_of_a_confident_right_answer_keeps_its_digits(t):
    """ℓ = log(1 + e^t) ≈ e^t for t ≪ 0, whichever label is right; no rounding to 0."""
    exact = math.log1p(math.exp(t))
    for z, y in ((t, 0.0), (-t, 1.0)):
        loss = bce_from_logits(torch.tensor([z], dtype=torch.float64), torch.tensor([y]).double())
        assert math.isclose(float(loss), exact, rel_tol=4e-16), (z, y, float(loss), exact)
