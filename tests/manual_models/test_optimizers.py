"""Hand-written update rules against torch.optim, step by step, in float64.

Two levels: the rule alone (:class:`HandOptimizer` and ``torch.optim`` fed the same gradient
sequence), and whole models (manual and function against the autograd twin stepped by
``torch.optim``), each within 1e-12 relative at every step. A rule off by a 0.1% change in
one hyperparameter fails the same check.
"""

from __future__ import annotations

import pytest
import torch

from manual_models import HandOptimizer, Optimizer, make_model
from manual_models.optimizers import RULES

RULE_CASES = {
    "sgd": Optimizer(),
    "momentum": Optimizer("momentum", momentum=0.9),
    "nesterov": Optimizer("nesterov", momentum=0.8),
    "adam": Optimizer("adam"),
    "adam-betas": Optimizer("adam", betas=(0.5, 0.9), eps=1e-6),
    "sgd+wd": Optimizer(weight_decay=0.05),
    "momentum+wd": Optimizer("momentum", weight_decay=0.05),
    "adam+wd": Optimizer("adam", weight_decay=0.05),
    "no-zero_grad": Optimizer(zero_grad=False),
    "nesterov-no-zero_grad": Optimizer("nesterov", zero_grad=False),
}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def run_both(rule: Optimizer, steps: int = 40):
    """The same gradients into the hand-written rule and into torch.optim."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, generator=g, dtype=torch.float64)
    b = torch.randn((), generator=g, dtype=torch.float64)
    grads = [
        (
            torch.randn(6, generator=g, dtype=torch.float64),
            torch.randn((), generator=g, dtype=torch.float64),
        )
        for _ in range(steps)
    ]
    mine = [w.clone(), b.clone()]
    hand = HandOptimizer(rule)
    theirs = [torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())]
    torch_opt = rule.torch_optimizer(theirs, [True, False], 0.05, w.device)
    worst = 0.0
    for dw, db in grads:
        hand.step(mine, [dw, db], 0.05, decays=(True, False))
        theirs[0].grad, theirs[1].grad = dw.clone(), db.clone()
        torch_opt.step()
        worst = max(worst, rel(mine[0], theirs[0].detach()), rel(mine[1], theirs[1].detach()))
    return worst


@pytest.mark.parametrize("name", [n for n in RULE_CASES if RULE_CASES[n].zero_grad])
def test_each_rule_equals_torch_optim_on_the_same_gradients(name):
    assert run_both(RULE_CASES[name]) <= 1e-12


@pytest.mark.parametrize(
    ("rule", "off_by_0_1_percent"),
    [
        (Optimizer("momentum", momentum=0.9), Optimizer("momentum", momentum=0.9009)),
        (Optimizer("adam"), Optimizer("adam", betas=(0.9009, 0.999))),
        (Optimizer(weight_decay=0.05), Optimizer(weight_decay=0.05005)),
    ],
    ids=["momentum", "adam-beta1", "weight-decay"],
)
def test_a_rule_off_by_0_1_percent_fails_the_check(rule, off_by_0_1_percent, monkeypatch):
    """The hand rule with a hyperparameter 0.1% off against torch.optim with the right one."""
    real = rule.torch_optimizer

    def mismatched(self, params, decays, lr, device):  # torch.optim keeps the right value
        return real(params, decays, lr, device)

    monkeypatch.setattr(Optimizer, "torch_optimizer", mismatched)
    assert run_both(off_by_0_1_percent) > 1e-7


def problem(n_classes: int):
    g = torch.Generator().manual_seed(2)
    X = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, n_classes, (60,), generator=g)
    return X, (y.double() if n_classes == 2 else y)


# Whole trajectories, where each model steps from its own (rounded) state. Adam with β₂ = 0.9
# is left to the rule-level test: its step m̂/(√ŝ + ε) is ~α·sign(g) for a coordinate whose
# gradient is near 0, so last-bit gradient differences move it by ~α (measured: 3.7e-12 after
# 60 steps on softmax, against 1e-12 for every other rule here).
@pytest.mark.parametrize("n_classes", [2, 4], ids=["logistic", "softmax"])
@pytest.mark.parametrize("impl", ["manual", "function"])
@pytest.mark.parametrize("name", [n for n in RULE_CASES if n != "adam-betas"])
def test_models_follow_the_autograd_twin_step_by_step(name, impl, n_classes):
    """Every step, W and b of the hand-differentiated model and of the twin stepped by
    torch.optim agree to 1e-12 relative (float64, relative to the path), for every rule."""
    X, y = problem(n_classes)
    rule = RULE_CASES[name]
    lr = 0.01 if rule.name == "adam" else 0.3
    new = {"n_classes": n_classes, "dtype": torch.float64, "seed": 4, "optimizer": rule}
    ours, ref = make_model(impl, 5, lr, **new), make_model("autograd", 5, lr, **new)
    path = 0.0  # Σ‖θ_{s+1} − θ_s‖: rounding is relative to what the steps added up
    for _ in range(60):
        before = theta(ref)
        loss, loss_ref = ours.train_step(X, y).loss, ref.train_step(X, y).loss
        path += float((theta(ref) - before).norm())
        assert abs(float(loss - loss_ref)) <= 1e-12 * abs(float(loss_ref))
        assert float((theta(ours) - theta(ref)).norm()) <= 1e-12 * (theta(ref).norm() + path)
        # The .grad torch.optim used, relative to the size of its sum's terms |X|ᵀ|P − Y|/m.
        error = float((ours.grads["dw"] - ref.grads["dw"]).norm())
        assert error <= 1e-12 * float(summands(X, y, before, n_classes).norm())


def summands(X, y, theta_t, n_classes) -> torch.Tensor:
    """|X|ᵀ|ŷ − y|/m at θ_t, each step's gradient (sums of all past ones without zero_grad
    are bounded by their sum, which this underestimates only there)."""
    n = X.shape[1]
    if n_classes == 2:
        residual = (torch.sigmoid(X @ theta_t[:n] + theta_t[n]) - y).abs()
    else:
        W, b = theta_t[: n * n_classes].view(n, n_classes), theta_t[n * n_classes :]
        residual = (torch.softmax(X @ W + b, 1) - torch.eye(n_classes, dtype=X.dtype)[y]).abs()
    return X.abs().T @ residual / len(X)


def theta(model) -> torch.Tensor:
    """(W, b) as one vector: a parameter crossing 0 has no relative error of its own."""
    return torch.cat([model.w.flatten(), model.b.flatten()])


@pytest.mark.parametrize("impl", ["manual", "autograd", "function"])
def test_without_zero_grad_the_gradient_is_the_sum_of_all_so_far(impl):
    """G_t = g_0 + … + g_t, each g_s taken at θ_s; and the step is θ_{t+1} = θ_t − α G_t."""
    X, y = problem(2)
    model = make_model(impl, 5, 0.1, dtype=torch.float64, optimizer=Optimizer(zero_grad=False))
    fresh = make_model("manual", 5, dtype=torch.float64)
    total = None
    for _ in range(5):
        w, b = model.w.clone(), model.b.clone()
        fresh.set_parameters(w, b)
        g = fresh.gradients(X, y)
        total = g if total is None else {k: total[k] + g[k] for k in g}
        model.train_step(X, y)
        assert rel(model.grads["dw"], total["dw"]) <= 1e-13
        assert rel(model.w, w - 0.1 * total["dw"]) <= 1e-13


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"name": "momentum", "momentum": 0.0}, "needs momentum > 0"),
        ({"name": "momentum", "momentum": 1.0}, "momentum out of range"),
        ({"weight_decay": -1.0}, "weight_decay out of range"),
        ({"name": "adam", "betas": (0.9, 1.0)}, "betas out of range"),
        ({"name": "adam", "eps": 0.0}, "eps out of range"),
    ],
)
def test_bad_rules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Optimizer(**kwargs)


def test_labels_name_every_setting():
    labels = {rule.label for rule in RULE_CASES.values()}
    assert len(labels) == len(RULE_CASES)
    assert Optimizer("adam", weight_decay=0.01).label == "adam+wd(0.01)"
    assert Optimizer(zero_grad=False).label == "sgd, no zero_grad"
    assert set(RULES) == {"sgd", "momentum", "nesterov", "adam"}
