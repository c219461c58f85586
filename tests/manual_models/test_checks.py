"""``check_model`` on the built-in kinds, and the wrong programs it must catch."""

from __future__ import annotations

import pytest
import torch

from manual_models import Evaluation, Logistic, ModelCheckFailed, Softmax, check_model
from manual_models.checks import CHECKS, checks, parametrize_with_checks


def three_classes(n_features, **kwargs):
    return Softmax(n_features, 3, **kwargs)


@parametrize_with_checks([Logistic, three_classes])
def test_the_built_in_kinds_pass_every_check(check):
    check()


class TooLarge(Logistic):
    """A gradient 0.1% too large: what gradcheck's default rtol lets through."""

    def gradients_at(self, X, y, w, b):
        loss, grads, z = super().gradients_at(X, y, w, b)
        return Evaluation(loss, {**grads, "dw": grads["dw"] * 1.001}, z)


class Transposed(Softmax):
    """dW = (Xᵀ(P − Y))ᵀ/m reshaped back: the rows and columns of the weight gradient mixed."""

    def gradients_at(self, X, y, W, b):
        loss, grads, Z = super().gradients_at(X, y, W, b)
        dW = grads["dw"]
        return Evaluation(loss, {**grads, "dw": dW.transpose(0, 1).reshape(dW.shape)}, Z)


@pytest.mark.parametrize(
    ("make", "failing"),
    [
        (TooLarge, {"gradient", "gradient f32", "differences", "trajectory"}),
        (lambda n, **kw: Transposed(n, 3, **kw), {"gradient", "gradient f32", "differences",
                                                  "trajectory"}),
    ],
    ids=["a gradient 0.1% too large", "a transposed weight gradient"],
)  # fmt: skip
def test_a_wrong_derivation_fails_and_says_where(make, failing):
    with pytest.raises(ModelCheckFailed) as raised:
        check_model(make, devices=["cpu"])
    lines = str(raised.value).strip().splitlines()
    assert len(lines) == len(CHECKS)
    failed = {line[5:18].strip() for line in lines if line.startswith("FAIL")}
    assert failed == failing, lines
    results = {name: check() for name, check in checks(make, ["cpu"])}
    gradient = results["gradient[cpu]"]
    assert gradient.measured > 1e-4 and gradient.where.startswith("worst on ")


def test_a_kind_that_is_not_one_fails_the_contract_check():
    (result,) = [check() for name, check in checks(lambda n, **kw: object(), ["cpu"])
                 if name.startswith("contract")]  # fmt: skip
    assert not result.passed and "is not a manual_models.Kind" in result.where


def test_each_result_says_what_it_measured():
    results = check_model(Logistic, devices=["cpu"])
    assert [r.check for r in results] == [
        "contract", "bad input", "gradient", "gradient f32", "differences", "trajectory",
        "K in one pass",
    ]  # fmt: skip
    by = {r.check: r for r in results}
    assert 0 < by["gradient"].measured <= 1e-12 < by["gradient f32"].measured <= 1e-5
    assert by["trajectory"].where.startswith("worst at step")
    assert str(by["gradient"]).startswith("ok   gradient      cpu")
    assert torch.isfinite(torch.tensor([r.measured for r in results])).all()
