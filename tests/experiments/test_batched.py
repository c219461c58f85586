"""Several learning rates in one pass: each column is the run its rate would make alone."""

from __future__ import annotations

import pytest
import torch

from experiments import fit
from experiments.lr_batch import LrBatch, build
from manual_models import HandModel, Logistic, Optimizer, make_model

LRS = [0.003, 0.03, 0.3, 3.0]
# Relative tolerances from the issue, measured here at ~2e-16 (float64) and ~2e-7 (float32).
RTOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm()) if b.norm() > 0 else float((a - b).norm())


@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_batched_run_equals_separate_runs(impl, dtype, breast_cancer):
    X, y = (t.to(dtype) for t in breast_cancer)
    X_train, y_train, X_val, y_val = X[:400], y[:400], X[400:], y[400:]
    new = {"dtype": dtype, "device": X.device, "seed": 7}

    def run(lrs):
        reference = build("autograd", 30, lrs, **new) if impl != "autograd" else None
        model = build(impl, 30, lrs, **new)
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
        assert batched.w.shape == single.w.shape == (301, 30)
        assert relative(batched.w, single.w) <= RTOL[dtype]
        assert relative(batched.dw, single.dw) <= RTOL[dtype]
        for name in ("train/loss", "val/loss", "param/b", "grad/b", "train/accuracy"):
            assert relative(batched.metrics[name], single.metrics[name]) <= RTOL[dtype], name
        if impl == "autograd":
            continue  # the reference itself: nothing to check against
        # The check ran on the same rows, and found the same agreement.
        assert torch.equal(
            batched.metrics["check/grad_rel_err"].isnan(),
            single.metrics["check/grad_rel_err"].isnan(),
        )
        err = batched.metrics["check/grad_err_vs_terms"]
        assert err[~err.isnan()].max() < 10 * torch.finfo(dtype).eps
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


def test_every_column_starts_from_the_seeded_draw():
    single = make_model("manual", 5, 0.1, dtype=torch.float64, seed=3)
    for impl in ("manual", "function", "autograd"):
        model = LrBatch(make_model(impl, 5, dtype=torch.float64, seed=3), [0.1, 0.2, 0.3])
        assert model.w.shape == (5, 3) and model.b.shape == (3,)
        assert all(torch.equal(model.w[:, k], single.w) for k in range(3))


@pytest.mark.parametrize("lrs", [[], [0.1, -1.0], [0.1, float("nan")], [[0.1]], 0.1, "0.1"])
def test_bad_rate_lists(lrs):
    with pytest.raises(ValueError, match=r"lrs? must be"):
        LrBatch(make_model("manual", 3), lrs)


def test_one_rate_per_model_and_two_classes_per_batch():
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        make_model("manual", 3, [0.1, 0.2])
    with pytest.raises(ValueError, match="for two classes"):
        LrBatch(make_model("manual", 3, n_classes=3), [0.1, 0.2])


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
def test_batched_gradients_are_each_models_own(impl, breast_cancer):
    """gradients() of K models (the reference check of a batched run) equals each model's."""
    X, y = breast_cancer
    w = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=X.dtype)
    b = torch.tensor([0.3, -0.2, 0.0], dtype=X.dtype)
    together = LrBatch(make_model(impl, 30, dtype=X.dtype, device=X.device), [0.1, 0.2, 0.3])
    together.set_parameters(w, b)
    got, terms = together.gradients(X, y), together.summands(X, y)
    assert got["dw"].shape == (30, 3) and got["db"].shape == (3,)
    for k in range(3):
        alone = make_model(impl, 30, 0.1, dtype=X.dtype, device=X.device)
        alone.set_parameters(w[:, k], b[k])
        expected, expected_terms = alone.gradients(X, y), alone.summands(X, y)
        for key in ("dw", "db"):
            assert relative(got[key][..., k], expected[key]) <= 1e-12
            assert relative(terms[key][..., k], expected_terms[key]) <= 1e-12


@pytest.mark.parametrize("name", ["momentum", "adam+wd", "no-zero_grad"])
@pytest.mark.parametrize("impl", ["manual", "function"])
def test_every_rule_batches(name, impl):
    """K rates with a stateful rule: each column is the run its rate gives alone."""
    rule = {
        "momentum": Optimizer("momentum"),
        "adam+wd": Optimizer("adam", weight_decay=0.05),
        "no-zero_grad": Optimizer(zero_grad=False),
    }[name]
    g = torch.Generator().manual_seed(2)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (60,), generator=g).double()
    lrs = [0.01, 0.1, 0.5]
    batched = LrBatch(make_model(impl, 5, dtype=torch.float64, optimizer=rule), lrs)
    alone = [make_model(impl, 5, lr, dtype=torch.float64, optimizer=rule) for lr in lrs]
    for _ in range(30):
        batched.train_step(X, y)
        for model in alone:
            model.train_step(X, y)
    for k, model in enumerate(alone):
        assert relative(batched.w[:, k], model.w) <= 1e-12
        assert relative(batched.b[k], model.b) <= 1e-12
