"""``check_model``: the contract as checks anyone runs on a kind of their own, as scikit-learn's
``check_estimator`` does for estimators. Each check says what it measured, not only whether
it passed:

    contract      the methods and shapes the loop relies on; the seeded start repeats
    bad input     a wrong X or y is refused with a one-line ValueError or TypeError
    gradient      the derivation against autograd of the kind's own ``loss_at`` (``torch.func``:
                  no reference to write), ‖g − g_ad‖ / ‖summed terms‖ ≤ 1e-12 in float64 and
                  ≤ 1e-5 in float32, at random points of random problems and of breast_cancer
    differences   central differences of ``loss_at`` (float64, h = 1e-6) against the
                  derivation: |fd − g| ≤ 1e-8 + 1e-6 |g| per coordinate (gradcheck tightened:
                  its default rtol of 1e-3 passes a gradient 0.1% off)
    trajectory    50 steps of ``HandModel`` against ``torch.optim.SGD`` on autograd's gradient
                  of ``loss_at``, from the same start: ‖θ − θ_ad‖ / ‖θ_ad‖ ≤ 1e-12 (float64)
    K in one pass three parameter sets as one trailing axis: each column's loss and gradient
                  equal to its own (≤ 1e-12 relative), what K learning rates in one pass needs

A kind is given as ``make(n_features, *, dtype, device) -> Kind`` (a ``Kind`` subclass is one):
``check_model(Probit)``, ``check_model(lambda n, **kw: Softmax(n, 3, **kw))``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from manual_models.base import HandModel
from manual_models.interface import Kind
from manual_models.optimizers import Optimizer
from manual_models.validation import available_devices

F64, F32 = torch.float64, torch.float32
BOUNDS = {F64: 1e-12, F32: 1e-5}  # the gradient against autograd, relative to its terms
MakeKind = Callable[..., Kind]


@dataclass(frozen=True)
class Result:
    """One check: what it measured, against which bound, and where the worst case was."""

    check: str
    device: str
    measured: float
    bound: float
    where: str

    @property
    def passed(self) -> bool:
        return self.measured <= self.bound

    def __str__(self) -> str:
        verdict = "ok  " if self.passed else "FAIL"
        bound = f"{self.measured:.2e} ≤ {self.bound:.0e}?"
        return f"{verdict} {self.check:<13} {self.device:<5} {bound} {self.where}"


class ModelCheckFailed(AssertionError):
    """A check failed; the message is every result, one line each."""


def check_model(make: MakeKind, devices: list[str] | None = None) -> list[Result]:
    """Every check on every device present (or ``devices``); raises :class:`ModelCheckFailed`
    naming what failed, and returns the results when all pass."""
    results = [check() for _, check in checks(make, devices)]
    if not all(r.passed for r in results):
        raise ModelCheckFailed("\n" + "\n".join(map(str, results)))
    return results


def checks(make: MakeKind, devices: list[str] | None = None) -> Iterator[tuple[str, Callable]]:
    """(name, check) for each check and device: a check called returns its :class:`Result`."""
    for device in devices or available_devices():
        for name, check in CHECKS.items():
            yield f"{name}[{device}]", functools.partial(_guarded, check, name, make, device)


def _guarded(check: Callable, name: str, make: MakeKind, device: str) -> Result:
    """The check's result; a check the kind broke (an exception) fails, saying what raised."""
    try:
        return check(make, device)
    except Exception as err:  # the kind's code, not the check's: report it as the result
        message = str(err).splitlines()[0] if str(err) else ""
        return Result(name, device, math.inf, 0.0, f"raised {type(err).__name__}: {message}")


def parametrize_with_checks(makes: list[MakeKind]):
    """A pytest decorator, one test per kind × check × device (the test gets ``check`` and
    calls it); a failing one shows the line :func:`check_model` would::

        @parametrize_with_checks([Probit])
        def test_my_kind(check):
            check()
    """
    import pytest  # a test-time helper: pytest is a dev dependency

    cases = [
        pytest.param(_asserting(check), id=f"{getattr(make, '__name__', 'kind')}-{name}")
        for make in makes
        for name, check in checks(make)
    ]
    return pytest.mark.parametrize("check", cases)


def _asserting(check: Callable[[], Result]) -> Callable[[], Result]:
    def run() -> Result:
        result = check()
        if not result.passed:
            raise ModelCheckFailed(str(result))
        return result

    return run


# --- the problems the checks use ------------------------------------------------------------
def problems(make: MakeKind, device: str, dtype: torch.dtype):
    """(label, kind, X, y, θ): three random problems (64 × 5) and breast_cancer standardised
    (569 × 30, labels cut into the kind's classes), each at parameters of its own (θ in the
    kind's order: the seeded start, every entry moved by 0.5 N(0, 1))."""
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        if seed < 3:
            X = torch.randn(64, 5, generator=gen, dtype=F64)
            label = f"random problem {seed}"
        else:
            (X, y_real), label = breast_cancer(), "breast_cancer"
        kind = make(X.shape[1], dtype=dtype, device=device)
        classes = kind.n_classes
        if seed < 3:
            y = torch.randint(0, classes, (len(X),), generator=gen)
        elif classes == 2:
            y = y_real
        else:  # the first feature cut at its quantiles: classes of equal size
            edges = torch.quantile(X[:, 0], torch.linspace(0, 1, classes + 1, dtype=F64)[1:-1])
            y = torch.bucketize(X[:, 0].contiguous(), edges)
        X, y = kind.inputs(X.to(device, dtype), y.to(device))
        theta = tuple(
            t + 0.5 * torch.randn(t.shape, generator=gen, dtype=F64).to(t)
            for t in kind.initial_parameters(seed)
        )
        yield label, kind, X, y, theta


@functools.cache
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised breast_cancer (569 × 30, float64), loaded once a process."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    return torch.tensor((X - X.mean(0)) / X.std(0)), torch.tensor(y)


def _error(value) -> float:
    """A measured error as a float; NaN (a check that broke down) as inf, so it fails."""
    value = float(value)
    return math.inf if math.isnan(value) else value


def _flat(tensors) -> torch.Tensor:
    """Tensors (a gradient by name: its values) as one float64 vector."""
    values = tensors.values() if isinstance(tensors, dict) else tensors
    return torch.cat([t.reshape(-1) for t in values]).double()


# --- the checks ------------------------------------------------------------------------------
def contract(make: MakeKind, device: str) -> Result:
    kind = make(3, dtype=F64, device=device)
    problems_found = []
    if not isinstance(kind, Kind):
        return Result("contract", device, 1.0, 0.0, f"{kind!r} is not a manual_models.Kind")
    names = tuple(kind.parameter_names)
    if len(set(names)) != len(names) or not all(n.isidentifier() for n in names):
        problems_found.append(f"parameter_names {names} are not distinct identifiers")
    if not set(kind.decays) <= set(names):
        problems_found.append(f"decays {tuple(kind.decays)} are not among {names}")
    theta, again = kind.initial_parameters(0), kind.initial_parameters(0)
    if len(theta) != len(names):
        problems_found.append(f"initial_parameters gives {len(theta)} tensors for {names}")
    if not all(torch.equal(a, b) for a, b in zip(theta, again, strict=False)):
        problems_found.append("initial_parameters(0) differs between calls")
    if all(torch.equal(a, b) for a, b in zip(theta, kind.initial_parameters(1), strict=False)):
        problems_found.append("initial_parameters(1) equals initial_parameters(0)")
    for name, t in zip(names, theta, strict=False):
        if t.dtype != F64 or t.device != kind.device:
            problems_found.append(f"{name} is {t.dtype} on {t.device}")
    X = torch.randn(7, 3, dtype=F64, device=device)
    y = torch.zeros(7, dtype=torch.int64, device=device)
    X, y = kind.inputs(X, y)
    loss, grads, z = kind.gradients_at(X, y, *theta)
    expected = [f"d{name}" for name in names]
    if list(grads) != expected:
        problems_found.append(f"gradients_at's grads have keys {list(grads)}, not {expected}")
    elif any(grads[f"d{n}"].shape != t.shape for n, t in zip(names, theta, strict=False)):
        problems_found.append("the gradient's shapes are not the parameters'")
    if loss.shape != () or z.shape[0] != 7:
        problems_found.append(f"loss shape {tuple(loss.shape)}, logits {tuple(z.shape)}")
    where = "; ".join(problems_found) or "names, methods, shapes, dtype, device, seeded start"
    return Result("contract", device, float(len(problems_found)), 0.0, where)


def bad_input(make: MakeKind, device: str) -> Result:
    """A model of the kind refuses each wrong input in one line, with ValueError or TypeError."""
    model = HandModel(make(3, dtype=F64, device=device))
    X = torch.zeros(4, 3, dtype=F64, device=device)
    y = torch.zeros(4, dtype=torch.int64, device=device)
    wrong = {
        "X as a list": (X.tolist(), y),
        "X with 2 features": (X[:, :2], y),
        "X in float32": (X.float(), y),
        "X of 1-D": (X[:, 0], y),
        "y of 3 rows": (X, y[:3]),
    }
    missed = []
    for what, (Xw, yw) in wrong.items():
        try:
            model.loss(Xw, yw)
        except (ValueError, TypeError) as err:
            if len(str(err).splitlines()) != 1:
                missed.append(f"{what}: a message of several lines")
        except Exception as err:  # the check reports any other kind
            missed.append(f"{what}: {type(err).__name__}")
        else:
            missed.append(f"{what}: accepted")
    where = "; ".join(missed) or f"{len(wrong)} wrong inputs, each refused in one line"
    return Result("bad input", device, float(len(missed)), 0.0, where)


def gradient(dtype: torch.dtype):
    def check(make: MakeKind, device: str) -> Result:
        worst, where = 0.0, ""
        for label, kind, X, y, theta in problems(make, device, dtype):
            hand = kind.gradients_at(X, y, *theta).grads
            terms = kind.summands_at(X, y, kind.logits_at(X, *theta), *theta)
            err = _error(
                torch.linalg.vector_norm(_flat(hand) - _flat(autograd_gradient(kind, X, y, theta)))
                / torch.linalg.vector_norm(_flat(terms))
            )
            if err >= worst:
                worst, where = err, f"worst on {label}"
        name = "gradient" + ("" if dtype == F64 else " f32")
        return Result(name, device, worst, BOUNDS[dtype], where)

    return check


def differences(make: MakeKind, device: str, h: float = 1e-6) -> Result:
    worst, where = 0.0, ""
    for label, kind, X, y, theta in problems(make, device, F64):
        g = _flat(kind.gradients_at(X, y, *theta).grads)
        flat = _flat(theta)
        for i in range(len(flat)):
            step = torch.zeros_like(flat)
            step[i] = h
            up, down = (_split(flat + sign * step, theta) for sign in (1, -1))
            fd = float(kind.loss_at(X, y, *up) - kind.loss_at(X, y, *down)) / (2 * h)
            ratio = _error(abs(fd - float(g[i])) / (1e-8 + 1e-6 * abs(float(g[i]))))
            if ratio >= worst:
                at = _coordinate(kind.parameter_names, theta, i)
                where = f"{at} on {label}: fd {fd:.9g}, hand {float(g[i]):.9g}"
                worst = ratio
    return Result("differences", device, worst, 1.0, where)


def autograd_gradient(kind: Kind, X, y, theta) -> tuple[torch.Tensor, ...]:
    """The gradient by autograd of the kind's own ``loss_at`` (``torch.func.grad``), in the
    parameters' order."""
    return torch.func.grad(lambda theta: kind.loss_at(X, y, *theta))(tuple(theta))


def _split(flat, theta) -> tuple[torch.Tensor, ...]:
    """One flat vector back into tensors of ``theta``'s shapes."""
    parts = flat.split([t.numel() for t in theta])
    return tuple(p.view(t.shape) for p, t in zip(parts, theta, strict=True))


def _coordinate(names, theta, i: int) -> str:
    """Where flat coordinate i lies: ``W1[3, 2]``."""
    for name, t in zip(names, theta, strict=True):
        if i < t.numel():
            index = [int(j) for j in torch.unravel_index(torch.tensor(i), t.shape)]
            return f"{name}{index}" if index else name
        i -= t.numel()
    raise IndexError(i)


def trajectory(make: MakeKind, device: str, steps: int = 50, lr: float = 0.1) -> Result:
    label, kind, X, y, _ = next(problems(make, device, F64))
    hand = HandModel(kind, lr, seed=0, optimizer=Optimizer())
    params = [t.clone().requires_grad_() for t in kind.initial_parameters(0)]
    sgd = torch.optim.SGD(params, lr=lr)
    worst, where = 0.0, ""
    for step in range(1, steps + 1):
        hand.train_step(X, y)
        sgd.zero_grad()
        kind.loss_at(X, y, *params).backward()
        sgd.step()
        theta, mine = _flat([t.detach() for t in params]), _flat(hand.theta)
        err = _error(torch.linalg.vector_norm(mine - theta) / torch.linalg.vector_norm(theta))
        if err > worst:
            worst, where = err, f"worst at step {step} of {steps} (lr {lr}) on {label}"
    return Result("trajectory", device, worst, BOUNDS[F64], where or f"{steps} steps, equal")


def k_in_one_pass(make: MakeKind, device: str) -> Result:
    label, kind, X, y, _ = next(problems(make, device, F64))
    starts = [kind.initial_parameters(seed) for seed in range(3)]
    stacked = [torch.stack(column, -1) for column in zip(*starts, strict=True)]
    together = kind.gradients_at(X, y, *stacked)
    worst, where = 0.0, ""
    for k, theta in enumerate(starts):
        alone = kind.gradients_at(X, y, *theta)
        column = {name: g[..., k] for name, g in together.grads.items()}
        err = _error(
            torch.linalg.vector_norm(_flat(column) - _flat(alone.grads))
            / torch.linalg.vector_norm(_flat(alone.grads))
        )
        err = max(err, _error(abs(together.loss[k] - alone.loss) / abs(alone.loss)))
        if err >= worst:
            worst, where = err, f"worst in column {k} of 3 on {label}"
    return Result("K in one pass", device, worst, BOUNDS[F64], where)


CHECKS: dict[str, Callable[[MakeKind, str], Result]] = {
    "contract": contract,
    "bad_input": bad_input,
    "gradient": gradient(F64),
    "gradient_f32": gradient(F32),
    "differences": differences,
    "trajectory": trajectory,
    "k_in_one_pass": k_in_one_pass,
}
