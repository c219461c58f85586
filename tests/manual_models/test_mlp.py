"""The worked example of a model of one's own: a two-layer network whose backward pass is
derived by hand (``examples/mlp.py``), through every check ``check_model`` runs. Three wrong
versions of it (a transposed weight gradient, a missing 1/m, a ReLU mask off by one) are in
``make mutants``, which these tests must catch."""

from __future__ import annotations

import math
import re

import torch

from examples.mlp import ReLU, TwoLayer
from manual_models import HandModel, check_model, make_model
from manual_models.checks import checks, parametrize_with_checks


def three_classes(n_features, **kwargs):
    return TwoLayer(n_features, 3, **kwargs)


@parametrize_with_checks([TwoLayer, ReLU, three_classes])
def test_the_network_passes_every_check(check):
    check()


def test_check_model_says_where_by_the_parameters_names():
    """The worst central difference is named as the parameter's entry: ``W1[1, 5] on …``."""
    results = {r.check: r for r in check_model(TwoLayer, devices=["cpu"])}
    assert results["contract"].measured == 0 and results["gradient"].measured < 1e-12
    assert re.match(r"(W1|W2)\[\d+, \d+\] on |(b1|b2)\[\d+\] on ", results["differences"].where)


def test_a_sweep_model_of_the_network_holds_its_parameters_by_name():
    """``make_model(..., kind=TwoLayer)``: the model the sweep builds, with W1, b1, W2, b2."""
    model = make_model("manual", 4, 0.1, n_classes=3, kind=TwoLayer, dtype=torch.float64)
    assert isinstance(model, HandModel) and list(model.params) == ["W1", "b1", "W2", "b2"]
    assert [tuple(t.shape) for t in model.theta] == [(4, 32), (32,), (32, 3), (3,)]
    twin = make_model("autograd", 4, 0.1, n_classes=3, kind=TwoLayer, dtype=torch.float64)
    X = torch.randn(20, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.arange(20) % 3
    for _ in range(5):
        model.train_step(X, y)
        twin.train_step(X, y)
    for name in model.params:
        torch.testing.assert_close(model.params[name], twin.params[name], rtol=1e-12, atol=0)


class Transposed(TwoLayer):
    """dW1 as (h, n): the shape of W1ᵀ, the classic slip of Xᵀ dA written dAᵀ X."""

    def gradients_at(self, X, y, *params):
        loss, grads, Z = super().gradients_at(X, y, *params)
        return loss, {**grads, "dW1": grads["dW1"].transpose(0, 1)}, Z


def test_a_check_the_kind_breaks_fails_saying_what_raised():
    """The step cannot apply a (h, n) gradient to an (n, h) weight: the trajectory check
    fails with the error's first line, and every other check still runs."""
    results = {r.check: r for r in (check() for _, check in checks(Transposed, ["cpu"]))}
    assert len(results) == 7
    assert results["trajectory"].measured == math.inf and not results["trajectory"].passed
    assert results["trajectory"].where.startswith("raised RuntimeError: ")
    assert "shapes are not the parameters'" in results["contract"].where
    assert results["gradient"].measured > 0.1 and results["bad input"].passed
