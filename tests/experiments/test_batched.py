"""Several learning rates in one pass: each column is the run its rate would make alone."""

from __future__ import annotations

import pytest
import torch

from experiments import datasets, fit
from experiments.lr_batch import LrBatch, build
from manual_models import RULES, HandModel, Logistic, Optimizer, make_model

LRS = [0.003, 0.03, 0.3, 3.0]
# Relative tolerances from the issue, measured here at ~2e-16 (float64) and ~2e-7 (float32).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}
# The check's error against the size of the gradient's terms, in epsilons: measured at most
# 4 (binary) and 13 (softmax: wine at lr 3, float64, against a batched autograd reference
# whose cross_entropy runs over (m, C, K); 7.5 alone).
TERMS_EPS = {2: 10, 3: 20}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.fixture
def wine(device):
    """Standardised wine, all three classes: (X float64, y int64) on the test's device."""
    X, y = datasets.load("wine", classes="all")
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    return torch.tensor(X, device=device), torch.tensor(y, device=device)


@pytest.fixture(params=["binary", "softmax"])
def classified(request, breast_cancer, wine):
    """(X, y, n_classes): breast_cancer for logistic regression, wine for softmax regression."""
    return (*breast_cancer, 2) if request.param == "binary" else (*wine, 3)


def labels(y: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    return y.to(dtype) if n_classes == 2 else y


@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_batched_run_equals_separate_runs(impl, dtype, classified):
    X, y, n_classes = classified
    X, y = X.to(dtype), labels(y, n_classes, dtype)
    cut = int(0.7 * len(X))
    X_train, y_train, X_val, y_val = X[:cut], y[:cut], X[cut:], y[cut:]
    n = X.shape[1]
    new = {"dtype": dtype, "device": X.device, "seed": 7, "n_classes": n_classes}
    shape = (n,) if n_classes == 2 else (n, n_classes)

    def run(lrs):
        reference = build("autograd", n, lrs, **new) if impl != "autograd" else None
        model = build(impl, n, lrs, **new)
        return fit(
            model,
            X_train,
            y_train,
            300,
            X_val=X_val,
            y_val=y_val,
            reference=reference,
            check_every=7,
        ).runs()

    together, alone = run(LRS), [run([lr])[0] for lr in LRS]
    assert len(together) == len(LRS)
    for batched, single in zip(together, alone, strict=True):
        assert batched.w.shape == single.w.shape == (301, *shape)
        for name in ("w", "b", "dw", "db"):
            assert relative(getattr(batched, name), getattr(single, name)) <= RTOL[dtype], name
        for name in ("train/loss", "val/loss", "train/accuracy", "val/accuracy"):
            assert relative(batched.metrics[name], single.metrics[name]) <= RTOL[dtype], name
        if impl == "autograd":
            continue  # the reference itself: nothing to check against
        # The check ran on the same rows, and found the same agreement.
        assert torch.equal(
            batched.metrics["check/grad_rel_err"].isnan(),
            single.metrics["check/grad_rel_err"].isnan(),
        )
        err = batched.metrics["check/grad_err_vs_terms"]
        assert err[~err.isnan()].max() < TERMS_EPS[n_classes] * torch.finfo(dtype).eps
    # The rates really differ: the runs do not coincide.
    assert relative(together[0].w[-1], together[-1].w[-1]) > 0.1


def test_a_diverging_rate_does_not_touch_the_others(breast_cancer):
    X, y = breast_cancer
    new = {"dtype": X.dtype, "device": X.device}
    together = fit(LrBatch(make_model("manual", 30, **new), [0.1, 1e308]), X, y, 20).runs()
    (alone,) = fit(make_model("manual", 30, 0.1, **new), X, y, 20).runs()
    assert together[0].diverged_at is None and together[0].steps == 20
    assert relative(together[0].w, alone.w) <= 1e-12
    assert together[1].diverged_at is not None and together[1].steps == together[1].diverged_at


@pytest.mark.parametrize("n_classes", [2, 4])
def test_every_column_starts_from_the_seeded_draw(n_classes):
    new = {"dtype": torch.float64, "seed": 3, "n_classes": n_classes}
    single = make_model("manual", 5, 0.1, **new)
    for impl in ("manual", "function", "autograd"):
        model = LrBatch(make_model(impl, 5, **new), [0.1, 0.2, 0.3])
        assert model.w.shape == (*single.w.shape, 3) and model.b.shape == (*single.b.shape, 3)
        for k in range(3):
            assert torch.equal(model.w[..., k], single.w) and torch.equal(model.b[..., k], single.b)


@pytest.mark.parametrize("lrs", [[], [0.1, -1.0], [0.1, float("nan")], [[0.1]], 0.1, "0.1"])
def test_bad_rate_lists(lrs):
    with pytest.raises(ValueError, match=r"lrs? must be"):
        LrBatch(make_model("manual", 3), lrs)


def test_one_rate_per_model():
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        make_model("manual", 3, [0.1, 0.2])


def test_the_reference_must_match_the_batch(breast_cancer):
    X, y = breast_cancer
    model = LrBatch(make_model("manual", 30, dtype=X.dtype, device=X.device), [0.1, 0.2])
    with pytest.raises(ValueError, match="as many learning rates"):
        fit(
            model,
            X,
            y,
            3,
            reference=make_model("autograd", 30, 0.1, dtype=X.dtype, device=X.device),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_blocked_cpu_step_equals_the_plain_one(dtype):
    """Large X on the CPU goes through row blocks: the same loss, gradient and step."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(5000, 20, generator=generator, dtype=dtype)
    y = (torch.rand(5000, generator=generator) > 0.4).to(dtype)
    rows = {"blocked_above": 0, "block_bytes": 777 * 20 * X.element_size()}  # uneven tail
    for lrs in ([0.5], [0.05, 0.5, 5.0]):
        plain = build("manual", 20, lrs, dtype=dtype, seed=1)
        blocked = HandModel(Logistic(20, dtype=dtype, **rows), lrs[0], seed=1)
        blocked = blocked if len(lrs) == 1 else LrBatch(blocked, lrs)  # as build() makes it
        plain_loss, plain_logits = plain.train_step(X, y)
        blocked_loss, blocked_logits = blocked.train_step(X, y)
        assert relative(blocked_loss, plain_loss) <= RTOL[dtype]
        for key in ("dw", "db"):
            assert relative(blocked.grads[key], plain.grads[key]) <= RTOL[dtype]
        assert relative(blocked.w, plain.w) <= RTOL[dtype]
        assert relative(blocked_logits, plain_logits) <= RTOL[dtype]


@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
def test_batched_gradients_are_each_models_own(impl, classified):
    """gradients() of K models (the reference check of a batched run) equals each model's,
    and so do their losses, logits, accuracies and the sizes of the gradient's terms."""
    X, y, n_classes = classified
    y = labels(y, n_classes, X.dtype)
    new = {"dtype": X.dtype, "device": X.device, "n_classes": n_classes}
    together = LrBatch(make_model(impl, X.shape[1], **new), [0.1, 0.2, 0.3])
    generator = torch.Generator().manual_seed(0)
    w, b = (
        torch.randn(t.shape, generator=generator, dtype=X.dtype) for t in (together.w, together.b)
    )
    together.set_parameters(w, b)
    got, terms = together.evaluate(X, y), together.summands(X, y)
    assert got.grads["dw"].shape == w.shape and got.grads["db"].shape == b.shape
    accuracy = together.accuracy(got.logits, y)
    assert got.loss.shape == accuracy.shape == (3,)
    for k in range(3):
        alone = make_model(impl, X.shape[1], 0.1, **new)
        alone.set_parameters(w[..., k], b[..., k])
        expected, expected_terms = alone.evaluate(X, y), alone.summands(X, y)
        assert relative(got.loss[k], expected.loss) <= 1e-12
        assert relative(got.logits[..., k], expected.logits) <= 1e-12
        assert accuracy[k] == alone.accuracy(expected.logits, y)
        for key in ("dw", "db"):
            assert relative(got.grads[key][..., k], expected.grads[key]) <= 1e-12
            assert relative(terms[key][..., k], expected_terms[key]) <= 1e-12


RULE_CASES = {
    **{name: Optimizer(name, weight_decay=0.05) for name in RULES},  # every rule, with L2
    "nesterov(0.5)": Optimizer("nesterov", momentum=0.5),
    "adam(0.8,0.99)": Optimizer("adam", betas=(0.8, 0.99)),
    "no zero_grad": Optimizer(zero_grad=False),
}


@pytest.mark.parametrize("name", RULE_CASES)
@pytest.mark.parametrize("impl", ["manual", "function"])
@pytest.mark.parametrize("n_classes", [2, 4], ids=["binary", "softmax"])
def test_every_rule_batches(name, impl, n_classes):
    """K rates with every rule and its state (v; Adam's m, s and t): each column is the run
    its rate gives alone, step after step."""
    rule = RULE_CASES[name]
    g = torch.Generator().manual_seed(2)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (60,), generator=g)
    y = labels(y, n_classes, torch.float64)
    lrs = [0.01, 0.1, 0.5]
    new = {"dtype": torch.float64, "optimizer": rule, "n_classes": n_classes}
    batched = LrBatch(make_model(impl, 5, **new), lrs)
    alone = [make_model(impl, 5, lr, **new) for lr in lrs]
    for _ in range(30):
        losses = batched.train_step(X, y).loss
        for k, model in enumerate(alone):
            assert relative(losses[k], model.train_step(X, y).loss) <= 1e-12
    for k, model in enumerate(alone):
        assert relative(batched.w[..., k], model.w) <= 1e-12
        assert relative(batched.b[..., k], model.b) <= 1e-12
        for key in ("dw", "db"):
            assert relative(batched.grads[key][..., k], model.grads[key]) <= 1e-12
