"""The Hessian by hand, proved like the gradients: the product H v against torch.func's
forward-over-reverse and reverse-over-reverse, the full Hessian and its trace against
``torch.func.hessian``, on random problems and real data; wrong programs fail; and the
sharpness from power iteration against ``torch.linalg.eigvalsh``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import manual_models.logistic
import manual_models.softmax
from experiments import datasets
from manual_models import Logistic, Softmax
from manual_models.curvature import FIRST_ITERATIONS, ITERATIONS, sharpness

F64 = torch.float64


def kind_for(n_features: int, n_classes: int, dtype=F64):
    if n_classes == 2:
        return Logistic(n_features, dtype=dtype)
    return Softmax(n_features, n_classes, dtype=dtype)


def problem(seed: int, m: int, n: int, n_classes: int, dtype=F64, scale: float = 1.0):
    """X, y, and parameters (w, b) and a direction (v_w, v_b) in the kind's shapes."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(m, n, generator=g, dtype=F64)
    shape = (n,) if n_classes == 2 else (n, n_classes)
    bias = () if n_classes == 2 else (n_classes,)
    w, b = (
        scale * torch.randn(shape, generator=g, dtype=F64),
        torch.randn(bias, generator=g, dtype=F64),
    )
    v = (torch.randn(shape, generator=g, dtype=F64), torch.randn(bias, generator=g, dtype=F64))
    y = torch.randint(0, n_classes, (m,), generator=g)
    y = y.to(F64) if n_classes == 2 else y
    cast = (lambda t: t.to(dtype)) if dtype != F64 else (lambda t: t)
    return cast(X), (cast(y) if n_classes == 2 else y), cast(w), cast(b), tuple(map(cast, v))


def objective(kind, X, y, weight_decay):
    """J + (λ/2)‖w‖² through torch's own functions: what autograd differentiates."""

    def f(w, b):
        return kind.reference_loss_at(X, y, w, b)[0] + weight_decay / 2 * w.square().sum()

    return f


def autograd_hvps(kind, X, y, w, b, v, weight_decay):
    """H v forward-over-reverse (jvp of grad) and reverse-over-reverse (vjp of grad)."""
    grad = torch.func.grad(objective(kind, X, y, weight_decay), argnums=(0, 1))
    forward = torch.func.jvp(grad, (w, b), v)[1]
    reverse = torch.func.vjp(grad, w, b)[1](v)
    return forward, reverse


def autograd_hessian(kind, X, y, w, b, weight_decay):
    f, size = objective(kind, X, y, weight_decay), w.numel()

    def flat(theta):
        return f(theta[:size].reshape(w.shape), theta[size:].reshape(b.shape))

    return torch.func.hessian(flat)(torch.cat([w.flatten(), b.flatten()]))


def rel(a, b) -> float:
    a, b = (torch.cat([t.flatten() for t in x]) if isinstance(x, tuple) else x for x in (a, b))
    return float((a.double() - b.double()).norm() / b.double().norm())


@settings(max_examples=25, deadline=None, database=None)
@given(
    seed=st.integers(0, 10**6),
    m=st.integers(1, 40),
    n=st.integers(1, 6),
    n_classes=st.sampled_from([2, 3, 5]),
    weight_decay=st.sampled_from([0.0, 0.01, 1.0]),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
)
def test_the_hessian_by_hand_is_autograd_s_on_random_problems(
    seed, m, n, n_classes, weight_decay, scale
):
    X, y, w, b, v = problem(seed, m, n, n_classes, scale=scale)
    kind = kind_for(n, n_classes)
    hand = kind.hvp_at(X, y, w, b, *v, weight_decay=weight_decay)
    for reference in autograd_hvps(kind, X, y, w, b, v, weight_decay):
        assert rel(hand, reference) <= 1e-12
    H = autograd_hessian(kind, X, y, w, b, weight_decay)
    H_hand = kind.hessian_at(X, y, w, b, weight_decay=weight_decay)
    assert rel(H_hand, H) <= 1e-12
    trace = kind.hessian_trace_at(X, y, w, b, weight_decay=weight_decay)
    assert float(trace) == pytest.approx(float(H.trace()), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize(("name", "n_classes"), [("breast_cancer", 2), ("wine", 2), ("digits", 2),
                         ("iris", 3), ("wine", 3), ("digits", 10)])  # fmt: skip
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_the_hessian_vector_product_on_real_data(name, n_classes, weight_decay):
    """Standardised real data, at a start and at parameters 10× larger (saturated sigmoids)."""
    X, y = datasets.load(name, **({} if n_classes == 2 else {"classes": "all"}))
    X = torch.tensor((X - X.mean(0)) / (X.std(0) + 1e-12))
    y = torch.tensor(y, dtype=F64 if n_classes == 2 else torch.int64)
    kind = kind_for(X.shape[1], n_classes)
    for scale in (1.0, 10.0):
        _, _, w, b, v = problem(1, 1, X.shape[1], n_classes, scale=scale)
        hand = kind.hvp_at(X, y, w, b, *v, weight_decay=weight_decay)
        for reference in autograd_hvps(kind, X, y, w, b, v, weight_decay):
            assert rel(hand, reference) <= 1e-12, scale


@pytest.mark.parametrize("n_classes", [2, 4])
def test_float32_is_within_its_measured_bound(n_classes):
    """float32 against the float64 product at the same (rounded) inputs: measured ≤ 4e-7
    (a few float32 epsilons, 1.2e-7) over these seeds; bound 2e-6."""
    worst = 0.0
    for seed in range(20):
        X, y, w, b, v = problem(seed, 300, 8, n_classes, dtype=torch.float32)
        kind32, kind64 = kind_for(8, n_classes, torch.float32), kind_for(8, n_classes)
        y64 = y.double() if n_classes == 2 else y
        up = [t.double() for t in (X, w, b, *v)]
        exact = kind64.hvp_at(up[0], y64, up[1], up[2], up[3], up[4])
        worst = max(worst, rel(kind32.hvp_at(X, y, w, b, *v), exact))
    assert worst <= 2e-6


def test_k_models_side_by_side_are_each_model_alone():
    for n_classes in (2, 3):
        X, y, w, b, v = problem(0, 50, 4, n_classes)
        kind = kind_for(4, n_classes)
        stacked = [torch.stack([t, 2 * t + 0.1], -1) for t in (w, b, *v)]
        together = kind.hvp_at(X, y, *stacked, weight_decay=0.1)
        traces = kind.hessian_trace_at(X, y, stacked[0], stacked[1], weight_decay=0.1)
        for k in range(2):
            column = [t[..., k] for t in stacked]
            alone = kind.hvp_at(X, y, *column, weight_decay=0.1)
            assert rel(tuple(t[..., k] for t in together), alone) <= 1e-14
            trace = kind.hessian_trace_at(X, y, column[0], column[1], weight_decay=0.1)
            assert float(traces[k]) == pytest.approx(float(trace), rel=1e-14)


WRONG = {
    "a missing 1/m": (manual_models.logistic, "bce_hvp",
                      lambda X, z, v_w, v_b, weight_decay=0.0, weights=None: (
                          X.T @ (manual_models.logistic.curvatures(z) * (X @ v_w + v_b)),
                          (manual_models.logistic.curvatures(z) * (X @ v_w + v_b)).mean(0))),
    "a dropped bias row": (manual_models.logistic, "bce_hvp",
                           lambda X, z, v_w, v_b, weight_decay=0.0, weights=None: (
                               X.T @ (manual_models.logistic.curvatures(z) * (X @ v_w)) / len(X),
                               (manual_models.logistic.curvatures(z) * (X @ v_w)).mean(0))),
    "ŷ² for ŷ(1 − ŷ)": (manual_models.logistic, "curvatures", lambda z: torch.sigmoid(z) ** 2),
    "softmax without the −ppᵀ term": (manual_models.softmax, "softmax_hvp",
                                     lambda X, Z, V_W, V_b, weight_decay=0.0, weights=None: (
                                         manual_models.softmax.transposed_product(
                                             X, torch.softmax(Z, 1) * (X @ V_W + V_b)) / len(X),
                                         (torch.softmax(Z, 1) * (X @ V_W + V_b)).mean(0))),
}  # fmt: skip


@pytest.mark.parametrize("name", list(WRONG))
def test_a_wrong_hessian_fails_the_check(name, monkeypatch):
    module, function, wrong = WRONG[name]
    n_classes = 3 if module is manual_models.softmax else 2
    X, y, w, b, v = problem(3, 30, 4, n_classes)
    kind = kind_for(4, n_classes)
    monkeypatch.setattr(module, function, wrong)
    hand = kind.hvp_at(X, y, w, b, *v)
    assert rel(hand, autograd_hvps(kind, X, y, w, b, v, 0.0)[0]) > 1e-3


@pytest.mark.parametrize("n_classes", [2, 3])
def test_sharpness_is_the_top_eigenvalue_and_a_warm_start_keeps_it(n_classes):
    """A hard case: λ₂/λ₁ is 0.86 and 0.88 here, and λ₃/λ₁ (the pair's rate) 0.82 and 0.77.
    From a random pair, FIRST_ITERATIONS block steps reach λ_max to 1e-9 (measured: 2.2e-10
    and 1.4e-12); along a path of nearby parameters, ITERATIONS steps a point from the last
    point's pair stay within 2e-6 (measured: 6.7e-7 and 8.8e-8)."""
    X, y, w, b, v = problem(5, 200, 6, n_classes)
    kind = kind_for(6, n_classes)

    def exact(w, b):
        return float(torch.linalg.eigvalsh(kind.hessian_at(X, y, w, b)).max())

    def hvp(w, b):
        return kind.hessian_product(X, y, w, b)

    other = problem(6, 1, 6, n_classes)[-1]
    top, pair = sharpness(hvp(w, b), (v, other), FIRST_ITERATIONS)
    assert float(top) == pytest.approx(exact(w, b), rel=1e-9)
    for t in range(1, 20):  # a path: θ moves by 1% a step
        w, b = w * 0.99 + 0.01, b * 0.99
        top, pair = sharpness(hvp(w, b), pair, ITERATIONS)
        assert float(top) == pytest.approx(exact(w, b), rel=2e-6), t


def test_the_pair_follows_the_top_eigenvalue_through_a_crossing():
    """H(s) = Q diag(1 + s, 1 − s, 0.5, 0.3, 0.1) Qᵀ, s from 0.1 to −0.1: the top two
    eigenvalues cross at s = 0 and the top eigenvector jumps to the other one. A single
    warm-started vector keeps the old one (then second) and converges back at (1 − s)/(1 + s)
    a step; the pair spans both, so its estimate stays exact to rounding."""
    g = torch.Generator().manual_seed(0)
    Q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]
    pair = tuple((torch.randn(5, generator=g, dtype=F64),) for _ in range(2))
    for t, s in enumerate(torch.linspace(0.1, -0.1, 21, dtype=F64)):
        H = Q @ torch.diag(torch.tensor([1 + s, 1 - s, 0.5, 0.3, 0.1], dtype=F64)) @ Q.T
        steps = FIRST_ITERATIONS if t == 0 else 2
        top, pair = sharpness(lambda d: (H @ d[0],), pair, steps)  # noqa: B023 (used at once)
        assert float(top) == pytest.approx(1 + abs(float(s)), rel=1e-12), float(s)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_the_loop_logs_the_sharpness_at_its_cadence_and_each_rate_on_its_own(n_classes):
    """``Loop(sharpness_every=…)``: curv/sharpness at every 5th row and the last (NaN
    between), the top eigenvalue of the Hessian at that row's kept θ, warm-started from the
    row before; curv/lr_x_sharpness is lr times it; three rates side by side are each their
    own run's."""
    from experiments.loop import Loop
    from experiments.lr_batch import build

    X, y, *_ = problem(2, 120, 4, n_classes)
    new = {"n_classes": n_classes, "dtype": F64}
    rates = [0.05, 0.5, 2.0]
    together = Loop(build("manual", 4, rates, **new), X, y, 30, sharpness_every=5,
                    sharpness_iterations=60)  # fmt: skip
    together.run_to(30)
    history = together.history()
    top = history.metrics["curv/sharpness"]
    assert (~top[:, 0].isnan()).nonzero().flatten().tolist() == [0, 5, 10, 15, 20, 25, 30]
    kind = kind_for(4, n_classes)
    for k, lr in enumerate(rates):
        for t in (5, 30):
            w, b = history.w[t][..., k], history.b[t][..., k]
            exact = float(torch.linalg.eigvalsh(kind.hessian_at(X, y, w, b)).max())
            assert float(top[t, k]) == pytest.approx(exact, rel=1e-8), (lr, t)
            ratio = float(history.metrics["curv/lr_x_sharpness"][t, k])
            assert ratio == pytest.approx(lr * float(top[t, k]), rel=1e-14)
        alone = Loop(build("manual", 4, [lr], **new), X, y, 30, sharpness_every=5,
                     sharpness_iterations=60)  # fmt: skip
        alone.run_to(30)
        mine = alone.history().metrics["curv/sharpness"]
        # the same start in each column: the same estimate, to rounding
        torch.testing.assert_close(top[:, k], mine, rtol=1e-12, atol=0, equal_nan=True)
