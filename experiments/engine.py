"""The training loop: one loop for every implementation, plain PyTorch, no tracking.

It drives any :class:`manual_models.GradientDescentModel` and returns what happened as a
:class:`History`; writing it anywhere (MLflow, files) is the tracking layer's job.

The history is preallocated on the model's device and filled by tensor copies, never with
``.item()``, so on a GPU the loop queues work without waiting for the host; it crosses to the
CPU once, at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from manual_models import GradientDescentModel, relative_error

# Per-step scalars, named as the tracking UI groups them (prefix/name).
METRICS = (
    "train/loss",
    "val/loss",
    "train/accuracy",
    "val/accuracy",
    "grad/w_norm",
    "grad/b",
    "param/w_norm",
    "param/b",
    "check/grad_rel_err",
    "check/grad_err_vs_terms",
)


@dataclass(frozen=True)
class History:
    """What happened at every step of full-batch gradient descent, on the CPU.

    Row t (0 ≤ t ≤ steps) describes the parameters θ_t: the loss and accuracies there, the
    gradient g_t there, and θ_t itself. For t < steps, θ_{t+1} = θ_t − lr·g_t; the last row
    is the final state, where no step was taken. ``metrics`` maps the names in :data:`METRICS`
    to (steps + 1,) tensors; ``check/grad_rel_err`` is NaN on rows that were not checked, and
    ``val/*`` and ``check/*`` are present only when asked for.
    """

    metrics: dict[str, torch.Tensor]
    w: torch.Tensor  # (steps + 1, n_features)
    dw: torch.Tensor  # (steps + 1, n_features)
    diverged_at: int | None = None  # first row whose loss or parameters are not finite

    @property
    def steps(self) -> int:
        return self.w.shape[0] - 1

    @property
    def loss(self) -> torch.Tensor:
        return self.metrics["train/loss"]

    @property
    def b(self) -> torch.Tensor:
        return self.metrics["param/b"]

    @property
    def db(self) -> torch.Tensor:
        return self.metrics["grad/b"]


def accuracy(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Fraction of samples on the right side of the boundary: σ(z) > ½ ⇔ z > 0."""
    return ((X @ w + b > 0) == (y > 0.5)).to(w.dtype).mean()


def fit(
    model: GradientDescentModel,
    X: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    *,
    X_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    reference: GradientDescentModel | None = None,
    check_every: int = 1,
) -> History:
    """Run ``steps`` full-batch gradient-descent steps of ``model`` on ``(X, y)``.

    With ``X_val, y_val`` it also records validation loss and accuracy. With a ``reference``
    (the autograd model), every ``check_every``-th row and the last one compare the gradient
    g = (dw, db) with the reference's g_ref, taken at the same parameters:

    - ``check/grad_rel_err`` = ‖g − g_ref‖ / ‖g_ref‖. Near an optimum ‖g_ref‖ → 0 while the
      rounding in Xᵀ(ŷ − y) does not, so this ratio grows (to O(1) in float32 at ‖g‖ ~ 1e-8)
      with nothing wrong in either gradient.
    - ``check/grad_err_vs_terms`` = ‖g − g_ref‖ / ‖(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|)‖: the same
      difference relative to the size of the numbers summed, which rounding is relative to.
      It stays near the dtype's epsilon all the way to convergence; a wrong gradient shows.
    """
    _check_count("steps", steps)
    _check_count("check_every", check_every)
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    # Check inputs and labels once, here: checking labels every step would sync a GPU each time.
    model.loss(X, y)
    if X_val is not None:
        model.loss(X_val, y_val)
    metrics, W, dW = _loop(model, X, y, steps, X_val, y_val, reference, check_every)
    history = History({k: v.cpu() for k, v in metrics.items()}, W.cpu(), dW.cpu())
    return _cut_at_divergence(history)


def _cut_at_divergence(history: History) -> History:
    """Checked once, on the host, after the loop: if the loss or the parameters stopped being
    finite, keep the rows up to and including the first such row, and say where it was."""
    m = history.metrics
    finite = torch.isfinite(m["train/loss"]) & torch.isfinite(m["param/b"])
    finite &= torch.isfinite(history.w).all(dim=1)
    if bool(finite.all()):
        return history
    first = int((~finite).nonzero()[0])
    keep = slice(0, first + 1)
    cut = {name: values[keep] for name, values in m.items()}
    return History(cut, history.w[keep], history.dw[keep], diverged_at=first)


def _loop(model, X, y, steps, X_val, y_val, reference, check_every):
    """The steps themselves: device work only, no host synchronisation."""
    names = [
        name
        for name in METRICS
        if (X_val is not None or not name.startswith("val/"))
        and (reference is not None or not name.startswith("check/"))
    ]
    rows = steps + 1
    new = {"device": model.device, "dtype": model.dtype}
    metrics = {name: torch.full((rows,), math.nan, **new) for name in names}
    W = torch.empty(rows, model.n_features, **new)
    dW = torch.empty(rows, model.n_features, **new)

    for t in range(rows):
        w, b = model.w, model.b
        W[t] = w
        metrics["param/b"][t] = b
        metrics["param/w_norm"][t] = torch.linalg.vector_norm(w)
        metrics["train/accuracy"][t] = accuracy(X, y, w, b)
        if X_val is not None:
            metrics["val/loss"][t] = model.loss(X_val, y_val, check=False)
            metrics["val/accuracy"][t] = accuracy(X_val, y_val, w, b)
        checked = reference is not None and (t % check_every == 0 or t == steps)
        if checked:
            reference.set_parameters(w, b)
            expected = reference.gradients(X, y, check=False)
            terms = _summand_size(X, y, w, b)  # before the step: a twin's w is a live view
        if t < steps:
            metrics["train/loss"][t] = model.train_step(X, y, check=False)
            grads = model.grads
        else:
            metrics["train/loss"][t] = model.loss(X, y, check=False)
            grads = model.gradients(X, y, check=False)
        dW[t] = grads["dw"]
        metrics["grad/b"][t] = grads["db"]
        metrics["grad/w_norm"][t] = torch.linalg.vector_norm(grads["dw"])
        if checked:
            g, g_ref = _flat(grads), _flat(expected)
            metrics["check/grad_rel_err"][t] = relative_error(g, g_ref)
            metrics["check/grad_err_vs_terms"][t] = torch.linalg.vector_norm(
                g - g_ref
            ) / torch.linalg.vector_norm(terms)
    return metrics, W, dW


def _summand_size(X: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor):
    """(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|): the gradient's sums taken over absolute values."""
    residual = (torch.sigmoid(X @ w + b) - y).abs()
    return torch.cat([X.abs().T @ residual / X.shape[0], residual.mean().reshape(1)])


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([grads["dw"], grads["db"].reshape(1)])


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
