"""gradcheck / gradgradcheck on the autograd.Function, with tolerances that can see a 0.1% bug.

gradcheck's defaults (atol=1e-5, rtol=1e-3) accept any gradient within 0.1% of the finite
difference, so a backward scaled by 1.001 passes them. In float64 the finite difference itself is
good to ~1e-10 (eps=1e-6), which leaves room to tighten both tolerances by three orders.
"""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from manual_models import LogisticLoss

TIGHT = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}


class ScaledBackward(LogisticLoss):
    """A 0.1% scale error: the kind of bug a forgotten factor or wrong m produces."""

    @staticmethod
    def backward(ctx, grad_output):
        grads = LogisticLoss.backward(ctx, grad_output)
        return tuple(None if g is None else 1.001 * g for g in grads)


class FlippedBiasSign(LogisticLoss):
    """db with the wrong sign: mean(y − ŷ) instead of mean(ŷ − y)."""

    @staticmethod
    def backward(ctx, grad_output):
        dX, dw, db, dy = LogisticLoss.backward(ctx, grad_output)
        return dX, dw, -db, dy


def inputs(device: str, *, requires_grad=(True, True, True, True)):
    """A small float64 problem whose db is well away from 0 (else a sign flip is invisible)."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(12, 4, generator=g, dtype=torch.float64)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    y = (torch.rand(12, generator=g, dtype=torch.float64) < 0.5).double()
    b = torch.tensor(0.7, dtype=torch.float64)
    assert abs(float((torch.sigmoid(X @ w + b) - y).mean())) > 1e-2  # |db| well above 0
    pairs = zip((X, w, b, y), requires_grad, strict=True)
    return tuple(t.to(device).requires_grad_(r) for t, r in pairs)


def test_gradcheck_tight(device):
    assert gradcheck(LogisticLoss.apply, inputs(device), **TIGHT)


def test_gradcheck_parameters_only(device):
    """The training case: only w and b require grad."""
    problem = inputs(device, requires_grad=(False, True, True, False))
    assert gradcheck(LogisticLoss.apply, problem, **TIGHT)


def test_gradgradcheck_tight(device):
    assert gradgradcheck(LogisticLoss.apply, inputs(device), **TIGHT)


@pytest.mark.parametrize("mutant", [ScaledBackward, FlippedBiasSign], ids=["x1.001", "-db"])
def test_tight_gradcheck_catches_mutants(mutant, device):
    assert not gradcheck(mutant.apply, inputs(device), raise_exception=False, **TIGHT)


def test_default_tolerances_miss_a_0_1_percent_scale_bug():
    """Why TIGHT exists: with its defaults, gradcheck passes the 1.001-scaled backward."""
    assert gradcheck(ScaledBackward.apply, inputs("cpu"))


def batched_inputs(device: str):
    """Three columns of parameters (w (4, 3), b (3,)): the Function's K-learning-rate form."""
    X, w, b, y = (t.detach() for t in inputs(device))
    W = torch.stack([w, 0.5 * w, -w], dim=1)
    B = torch.stack([b, -b, 2 * b])
    return tuple(t.clone().requires_grad_(True) for t in (X, W, B, y))


def test_gradcheck_batched_columns(device):
    """K losses at once: every input's gradient, X and y summing over the K columns."""
    assert gradcheck(LogisticLoss.apply, batched_inputs(device), **TIGHT)
    assert gradgradcheck(LogisticLoss.apply, batched_inputs(device), **TIGHT)


@pytest.mark.parametrize("mutant", [ScaledBackward, FlippedBiasSign], ids=["x1.001", "-db"])
def test_tight_gradcheck_catches_batched_mutants(mutant, device):
    assert not gradcheck(mutant.apply, batched_inputs(device), raise_exception=False, **TIGHT)
