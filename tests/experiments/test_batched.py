"""Several learning rates in one pass: each column is the run its rate would make alone."""

from __future__ import annotations

import pytest
import torch

from experiments import fit
from manual_models import make_model

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

    def run(lr):
        reference = make_model("autograd", 30, lr, **new) if impl != "autograd" else None
        model = make_model(impl, 30, lr, **new)
        return fit(model, X_train, y_train, 300, X_val=X_val, y_val=y_val,
                   reference=reference, check_every=7)  # fmt: skip

    together, alone = run(LRS), [run(lr) for lr in LRS]
    assert isinstance(together, list) and len(together) == len(LRS)
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
    lrs = [0.1, 1e308]
    together = fit(make_model("manual", 30, lrs, dtype=X.dtype, device=X.device), X, y, 20)
    alone = fit(make_model("manual", 30, 0.1, dtype=X.dtype, device=X.device), X, y, 20)
    assert together[0].diverged_at is None and together[0].steps == 20
    assert relative(together[0].w, alone.w) <= 1e-12
    assert together[1].diverged_at is not None and together[1].steps == together[1].diverged_at


def test_every_column_starts_from_the_seeded_draw():
    single = make_model("manual", 5, 0.1, dtype=torch.float64, seed=3)
    for impl in ("manual", "function", "autograd"):
        model = make_model(impl, 5, [0.1, 0.2, 0.3], dtype=torch.float64, seed=3)
        assert model.w.shape == (5, 3) and model.b.shape == (3,)
        assert all(torch.equal(model.w[:, k], single.w) for k in range(3))


@pytest.mark.parametrize("lr", [[], [0.1, -1.0], [0.1, float("nan")], [[0.1]]])
def test_bad_rate_lists(lr):
    with pytest.raises(ValueError, match="lr must be"):
        make_model("manual", 3, lr)


def test_the_reference_must_match_the_batch(breast_cancer):
    X, y = breast_cancer
    model = make_model("manual", 30, [0.1, 0.2], dtype=X.dtype, device=X.device)
    with pytest.raises(ValueError, match="as many learning rates"):
        fit(
            model,
            X,
            y,
            3,
            reference=make_model("autograd", 30, 0.1, dtype=X.dtype, device=X.device),
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_blocked_cpu_step_equals_the_plain_one(dtype, monkeypatch):
    """Large X on the CPU goes through row blocks: the same loss, gradient and step."""
    import manual_models.logistic as logistic

    generator = torch.Generator().manual_seed(0)
    X = torch.randn(5000, 20, generator=generator, dtype=dtype)
    y = (torch.rand(5000, generator=generator) > 0.4).to(dtype)
    for lr in (0.5, [0.05, 0.5, 5.0]):
        plain = make_model("manual", 20, lr, dtype=dtype, seed=1)
        blocked = make_model("manual", 20, lr, dtype=dtype, seed=1)
        plain_loss = plain.train_step(X, y)
        monkeypatch.setattr(logistic, "BLOCKED_ABOVE", 0)
        monkeypatch.setattr(logistic, "BLOCK_BYTES", 777 * 20 * X.element_size())  # uneven tail
        blocked_loss = blocked.train_step(X, y)
        monkeypatch.undo()
        assert relative(blocked_loss, plain_loss) <= RTOL[dtype]
        for key in ("dw", "db"):
            assert relative(blocked.grads[key], plain.grads[key]) <= RTOL[dtype]
        assert relative(blocked.w, plain.w) <= RTOL[dtype]
        assert relative(blocked.last_logits, plain.last_logits) <= RTOL[dtype]


@pytest.mark.parametrize("impl", ["manual", "function", "autograd"])
def test_batched_gradients_are_each_models_own(impl, breast_cancer):
    """gradients() of K models (the reference check of a batched run) equals each model's."""
    X, y = breast_cancer
    w = torch.randn(30, 3, generator=torch.Generator().manual_seed(0), dtype=X.dtype)
    b = torch.tensor([0.3, -0.2, 0.0], dtype=X.dtype)
    together = make_model(impl, 30, [0.1, 0.2, 0.3], dtype=X.dtype, device=X.device)
    together.set_parameters(w, b)
    got = together.gradients(X, y)
    assert got["dw"].shape == (30, 3) and got["db"].shape == (3,)
    for k in range(3):
        alone = make_model(impl, 30, 0.1, dtype=X.dtype, device=X.device)
        alone.set_parameters(w[:, k], b[k])
        expected = alone.gradients(X, y)
        assert relative(got["dw"][:, k], expected["dw"]) <= 1e-12
        assert relative(got["db"][k], expected["db"]) <= 1e-12
