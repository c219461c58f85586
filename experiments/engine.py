"""The training loop: one loop for every implementation, plain PyTorch, no tracking.

It drives any :class:`manual_models.GradientDescentModel` and returns what happened as a
:class:`History`; writing it anywhere (MLflow, files) is the tracking layer's job.

The history is preallocated on the model's device and filled by tensor copies, never with
``.item()``, so on a GPU the loop queues work without waiting for the host; it crosses to the
CPU once, at the end.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch

from manual_models import GradientDescentModel
from manual_models.logistic import column, logits
from manual_models.softmax import one_hot

# Per-step scalars, named as the tracking UI groups them (prefix/name).
METRICS = (
    "train/loss",
    "val/loss",
    "train/accuracy",
    "val/accuracy",
    "grad/w_norm",
    "grad/b",
    "grad/b_norm",
    "param/w_norm",
    "param/b",
    "param/b_norm",
    "check/grad_rel_err",
    "check/grad_err_vs_terms",
)
# A binary model's bias is one number, logged as it is; a softmax model's (C,) by its norm.
BINARY_ONLY, MULTICLASS_ONLY = ("grad/b", "param/b"), ("grad/b_norm", "param/b_norm")


@dataclass(frozen=True)
class History:
    """What happened at every step of full-batch gradient descent, on the CPU.

    Row t (0 ≤ t ≤ steps) describes the parameters θ_t: the loss and accuracies there, the
    gradient g_t there, and θ_t itself. For t < steps, θ_{t+1} = θ_t − lr·g_t; the last row
    is the final state, where no step was taken. ``metrics`` maps the names in :data:`METRICS`
    to (steps + 1,) tensors; ``check/grad_rel_err`` is NaN on rows that were not checked, and
    ``val/*`` and ``check/*`` are present only when asked for. A model with K learning rates
    gives one History with a trailing K axis everywhere; :meth:`split` makes K of them.

    A softmax model (``n_classes`` C) keeps every parameter in ``w``: W (n, C) row by row,
    then b (C,); ``dw`` likewise, and its metrics have ``*/b_norm`` instead of ``*/b``.
    """

    metrics: dict[str, torch.Tensor]
    w: torch.Tensor  # (steps + 1, n_features), or (steps + 1, (n_features + 1)·C)
    dw: torch.Tensor  # (steps + 1, n_features), or (steps + 1, (n_features + 1)·C)
    diverged_at: int | None = None  # first row whose loss or parameters are not finite
    n_classes: int | None = None  # None: the binary model

    @property
    def steps(self) -> int:
        return self.w.shape[0] - 1

    @property
    def loss(self) -> torch.Tensor:
        return self.metrics["train/loss"]

    @property
    def b(self) -> torch.Tensor:
        """(rows,), or (rows, C) for a softmax model."""
        if self.n_classes is not None:
            return self.w[:, -self.n_classes :]
        return self.metrics["param/b"]

    @property
    def db(self) -> torch.Tensor:
        if self.n_classes is not None:
            return self.dw[:, -self.n_classes :]
        return self.metrics["grad/b"]

    def split(self) -> list[History]:
        """One History per learning rate of a batched run, each cut at its own divergence
        (views into this one: nothing is copied)."""
        if self.w.ndim != 3:
            raise ValueError("split() is for the history of a model with several rates")
        rows, k = self.w.shape[0], self.w.shape[2]
        bad = ~_finite_rows(self)  # (rows, K), found for all columns at once
        first = torch.where(bad.any(0), bad.to(torch.int8).argmax(0), rows).tolist()
        return [
            History(
                {name: v[: first[j] + 1, j] for name, v in self.metrics.items()},
                self.w[: first[j] + 1, :, j],
                self.dw[: first[j] + 1, :, j],
                diverged_at=first[j] if first[j] < rows else None,
            )
            for j in range(k)
        ]


def accuracy_from_logits(z: torch.Tensor, y: torch.Tensor, multiclass: bool = False):
    """The fraction classified right. Binary: σ(z) > ½ ⇔ z > 0 ⇔ class 1 (one column per
    rate); multiclass: the largest logit's class."""
    if multiclass:
        return (z.argmax(1) == y).to(z.dtype).mean()
    return ((z > 0) == (column(y, z) > 0.5)).to(z.dtype).mean(0)


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
    cuda_graphs: bool | None = None,
) -> History | list[History]:
    """Run ``steps`` full-batch gradient-descent steps of ``model`` on ``(X, y)``.

    Returns a :class:`History`, or for a model holding K learning rates (``lr`` given as a
    list) a list of K, one per rate, each exactly what a run at that rate alone records
    (up to rounding: the products are batched).

    With ``X_val, y_val`` it also records validation loss and accuracy. With a ``reference``
    (the autograd model, with the same rates), every ``check_every``-th row and the last one
    compare the gradient g = (dw, db) with the reference's g_ref, taken at the same parameters:

    - ``check/grad_rel_err`` = ‖g − g_ref‖ / ‖g_ref‖. Near an optimum ‖g_ref‖ → 0 while the
      rounding in Xᵀ(ŷ − y) does not, so this ratio grows (to O(1) in float32 at ‖g‖ ~ 1e-8)
      with nothing wrong in either gradient.
    - ``check/grad_err_vs_terms`` = ‖g − g_ref‖ / ‖(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|)‖: the same
      difference relative to the size of the numbers summed, which rounding is relative to.
      It stays near the dtype's epsilon all the way to convergence; a wrong gradient shows.

    On a GPU, ``cuda_graphs`` (default: on for CUDA) records one step as a CUDA graph after
    three ordinary ones and replays it: one launch a step instead of dozens, which is most of
    a step's time on small data. Nothing in a step waits for the host either way.
    """
    _check_count("steps", steps)
    _check_count("check_every", check_every)
    if (X_val is None) != (y_val is None):
        raise ValueError("give both X_val and y_val, or neither")
    batch = tuple(getattr(model, "batch_shape", ()))
    if reference is not None and tuple(getattr(reference, "batch_shape", ())) != batch:
        raise ValueError("the reference must hold as many learning rates as the model")
    # Check inputs and labels once, here: checking labels every step would sync a GPU each time.
    model.loss(X, y)
    if X_val is not None:
        model.loss(X_val, y_val)
    if cuda_graphs is None:
        cuda_graphs = model.device.type == "cuda"
    loop = _Loop(model, X, y, X_val, y_val, reference, check_every, batch)
    packed = loop.run(steps, cuda_graphs and model.device.type == "cuda").cpu()
    history = loop.unpack(packed)
    return history.split() if batch else _cut_at_divergence(history)


def _finite_rows(history: History) -> torch.Tensor:
    """Rows whose loss, b and every w are finite: (rows,), or (rows, K) for K rates."""
    m = history.metrics
    finite = torch.isfinite(m["train/loss"]) & torch.isfinite(history.w).all(dim=1)
    return finite & torch.isfinite(m["param/b"]) if "param/b" in m else finite


def _cut_at_divergence(history: History) -> History:
    """Checked once, on the host, after the loop: if the loss or the parameters stopped being
    finite, keep the rows up to and including the first such row, and say where it was."""
    finite = _finite_rows(history)
    if bool(finite.all()):
        return history
    first = int((~finite).nonzero()[0])
    keep = slice(0, first + 1)
    cut = {name: values[keep] for name, values in history.metrics.items()}
    return History(cut, history.w[keep], history.dw[keep], first, history.n_classes)


class _Loop:
    """The steps themselves: device work only, no host synchronisation.

    Each row is computed as one packed vector (the metrics, then w, then dw), so recording it
    is a single copy into a preallocated (steps + 1, width, *K) buffer, and one step, row
    included, can be captured and replayed as a CUDA graph.
    """

    WARMUP = 3  # ordinary steps before a capture: CUDA graphs want their kernels warmed up

    def __init__(self, model, X, y, X_val, y_val, reference, check_every, batch):
        self.model, self.X, self.y, self.X_val, self.y_val = model, X, y, X_val, y_val
        self.reference, self.check_every, self.batch = reference, check_every, batch
        self.n_classes = getattr(model, "n_classes", None)
        self.multiclass = self.n_classes is not None
        skip = BINARY_ONLY if self.multiclass else MULTICLASS_ONLY
        self.names = [
            name
            for name in METRICS
            if (X_val is not None or not name.startswith("val/"))
            and (reference is not None or not name.startswith("check/"))
            and name not in skip
        ]
        # Values per row for w (and for dw): w (n,), or W and b of a softmax model, flat.
        self.n = model.n_features * (self.n_classes or 1) + (self.n_classes or 0)

    def checked(self, t: int, steps: int) -> bool:
        return self.reference is not None and (t % self.check_every == 0 or t == steps)

    def run(self, steps: int, graphs: bool) -> torch.Tensor:
        model = self.model
        width = len(self.names) + 2 * self.n
        buffer = torch.empty(steps + 1, width, *self.batch, device=model.device, dtype=model.dtype)
        first_eager = 0
        if graphs and steps > self.WARMUP:
            side = torch.cuda.Stream(model.device)
            side.wait_stream(torch.cuda.current_stream(model.device))
            with torch.cuda.stream(side):
                for t in range(self.WARMUP):
                    buffer[t] = self.row(step=True, checked=self.checked(t, steps))
            torch.cuda.current_stream(model.device).wait_stream(side)
            captured: dict[bool, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
            for t in range(self.WARMUP, steps):
                checked = self.checked(t, steps)
                if checked not in captured:
                    graph = torch.cuda.CUDAGraph()
                    with _sync_allowed(), torch.cuda.graph(graph):
                        out = self.row(step=True, checked=checked)
                    captured[checked] = graph, out
                graph, out = captured[checked]
                graph.replay()
                buffer[t].copy_(out)
            first_eager = steps
        for t in range(first_eager, steps + 1):
            buffer[t] = self.row(step=t < steps, checked=self.checked(t, steps))
        return buffer

    def row(self, *, step: bool, checked: bool) -> torch.Tensor:
        """Everything about θ_t, then (if ``step``) one step to θ_{t+1}."""
        model, X, y = self.model, self.X, self.y
        multiclass = self.multiclass
        w, b = model.w.clone(), model.b.clone()  # θ_t: the step below updates in place
        values = {"param/w_norm": _norm(w, multiclass)}
        if multiclass:
            values["param/b_norm"] = torch.linalg.vector_norm(b)
        else:
            values["param/b"] = b
        if self.X_val is not None:
            values["val/loss"] = model.loss(self.X_val, self.y_val, check=False)
            z_val = logits(self.X_val, w, b)
            values["val/accuracy"] = accuracy_from_logits(z_val, self.y_val, multiclass)
        if checked:
            self.reference.set_parameters(w, b)
            expected = self.reference.gradients(X, y, check=False)
            terms = _summand_size(X, y, w, b, multiclass)
        z = None
        if step:
            if hasattr(model, "last_logits"):
                model.last_logits = None
            values["train/loss"] = model.train_step(X, y, check=False)
            grads = model.grads
            z = getattr(model, "last_logits", None)  # the step's own X w + b, if it keeps it
        else:
            values["train/loss"] = model.loss(X, y, check=False)
            grads = model.gradients(X, y, check=False)
        if z is None:
            z = logits(X, w, b)
        values["train/accuracy"] = accuracy_from_logits(z, y, multiclass)
        if multiclass:
            values["grad/b_norm"] = torch.linalg.vector_norm(grads["db"])
        else:
            values["grad/b"] = grads["db"]
        values["grad/w_norm"] = _norm(grads["dw"], multiclass)
        if self.reference is not None:  # NaN on the rows not checked
            nan = torch.full(self.batch, math.nan, device=model.device, dtype=model.dtype)
            values["check/grad_rel_err"] = values["check/grad_err_vs_terms"] = nan
        if checked:
            g, g_ref = _flat(grads, multiclass), _flat(expected, multiclass)
            diff = torch.linalg.vector_norm((g - g_ref).double(), dim=0)
            reference = torch.linalg.vector_norm(g_ref.double(), dim=0)
            values["check/grad_rel_err"] = torch.where(diff == 0, 0.0, diff / reference)
            values["check/grad_err_vs_terms"] = diff / torch.linalg.vector_norm(terms, dim=0)
        metrics = torch.stack([values[name].to(model.dtype) for name in self.names])
        if multiclass:  # every parameter, flat: W row by row, then b
            return torch.cat([metrics, w.flatten(), b, grads["dw"].flatten(), grads["db"]])
        return torch.cat([metrics, w, grads["dw"]])

    def unpack(self, packed: torch.Tensor) -> History:
        k = len(self.names)
        metrics = {name: packed[:, i].contiguous() for i, name in enumerate(self.names)}
        w, dw = packed[:, k : k + self.n], packed[:, k + self.n :]
        return History(metrics, w, dw, n_classes=self.n_classes)


@contextlib.contextmanager
def _sync_allowed():
    """Starting a capture synchronises the device once (``torch.cuda.graph`` does, and frees
    cached memory); under ``set_sync_debug_mode("error")`` that one set-up sync is let through,
    while every step, eager or replayed, stays checked."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def _norm(w: torch.Tensor, multiclass: bool) -> torch.Tensor:
    """‖w‖ per rate (one column each), or ‖W‖ over all of a softmax model's W."""
    return torch.linalg.vector_norm(w) if multiclass else torch.linalg.vector_norm(w, dim=0)


def _summand_size(X, y, w, b, multiclass: bool = False) -> torch.Tensor:
    """(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|): the gradient's sums taken over absolute values (with
    P − Y in place of ŷ − y for a softmax model), in the layout of :func:`_flat`."""
    z = logits(X, w, b)
    if multiclass:
        residual = (torch.softmax(z, dim=1) - one_hot(y, z)).abs()
    else:
        residual = (torch.sigmoid(z) - column(y, z)).abs()
    return _flat({"dw": X.abs().T @ residual / X.shape[0], "db": residual.mean(0)}, multiclass)


def _flat(grads: dict[str, torch.Tensor], multiclass: bool = False) -> torch.Tensor:
    if multiclass:
        return torch.cat([grads["dw"].flatten(), grads["db"]])
    return torch.cat([grads["dw"], grads["db"].unsqueeze(0)])


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
