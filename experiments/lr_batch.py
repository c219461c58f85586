"""K learning rates in one pass: K copies of one model side by side, one step for all of them.

The models know nothing of this. Their math is written as functions of the parameters that
reduce over the samples only (``logits_at``, ``loss_at``, ``loss_and_gradients``,
``summands_at``), so K models' parameters stacked along a trailing axis, w (n, K) and b (K,),
go through the very functions one model uses: X w is one matrix product instead of K
matrix-vector products, and every column is exactly the model its rate would train alone (the
columns never mix).

Each column moves by its own rate with the update rule written by hand
(:class:`manual_models.HandOptimizer`, which ``tests/manual_models/test_optimizers.py`` holds
to ``torch.optim`` within 1e-12 at every step): ``torch.optim`` has one rate per param group,
so K rates would be K groups stepped one after another. What tells the implementations apart,
where the gradient comes from, stays each one's own: the hand derivation, the
``autograd.Function``'s backward, or autograd.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch

from experiments.config import RunConfig
from manual_models import GradientDescentModel, make_model
from manual_models.base import HandStepped, Model
from manual_models.optimizers import HandOptimizer
from manual_models.validation import check_lr

# Trained K rates at a time in a sweep; autograd, the reference, stays one textbook run each.
BATCHED = ("manual", "function")


class LrBatch(HandStepped, Model):
    """K models of one implementation, one per learning rate, trained in one pass.

    It offers the models' own interface with a trailing axis of K: ``w`` (n, K), ``b`` (K,),
    a loss and an accuracy per column, logits (m, K). Every column starts from the same seeded
    draw. Two classes only: softmax regression's functions do not take a trailing axis yet.
    """

    def __init__(
        self,
        impl: str,
        n_features: int,
        lrs: Sequence[float],
        *,
        n_classes: int = 2,
        **kwargs,
    ) -> None:
        if isinstance(lrs, str) or not isinstance(lrs, Sequence) or not lrs:
            raise ValueError(f"lrs must be a non-empty list of learning rates, got {lrs!r}")
        self.lrs = tuple(check_lr(lr) for lr in lrs)
        if n_classes != 2:
            raise ValueError(
                "several learning rates in one pass is for two classes; "
                "softmax regression trains one rate a run"
            )
        self.model = make_model(impl, n_features, self.lrs[0], n_classes=n_classes, **kwargs)
        model = self.model
        self.n_features, self.n_classes = model.n_features, model.n_classes
        self.device, self.dtype, self.rule = model.device, model.dtype, model.rule
        self.lr = torch.tensor(self.lrs, device=self.device, dtype=self.dtype)  # a rate a column
        k = len(self.lrs)
        self.w = model.w.unsqueeze(-1).repeat(*(1 for _ in model.w.shape), k)
        self.b = model.b.unsqueeze(-1).repeat(*(1 for _ in model.b.shape), k)
        self.optimizer = HandOptimizer(self.rule)
        self.grads = {}

    # --- the model's checks and math, taken at the stacked parameters --------------------------
    def _y(self, y, n_samples, check):
        return self.model._y(y, n_samples, check)

    def link(self, z):
        return self.model.link(z)

    def logits_at(self, X, w, b):
        return self.model.logits_at(X, w, b)

    def loss_at(self, X, y, w, b):
        return self.model.loss_at(X, y, w, b)

    def loss_and_gradients(self, X, y, w, b):
        return self.model.loss_and_gradients(X, y, w, b)

    def accuracy(self, logits, y):
        return self.model.accuracy(logits, y)

    def summands_at(self, X, y, z):
        return self.model.summands_at(X, y, z)

    def __repr__(self) -> str:
        return f"LrBatch({self.model!r}, lrs={list(self.lrs)})"


def build(impl: str, n_features: int, lrs: Sequence[float], **kwargs) -> GradientDescentModel:
    """One model for one rate; K side by side for K rates."""
    if len(lrs) == 1:
        return make_model(impl, n_features, lrs[0], **kwargs)
    return LrBatch(impl, n_features, lrs, **kwargs)


def passes(points: list[RunConfig], batch: bool = True) -> list[list[RunConfig]]:
    """The grid points in training passes: consecutive points that differ only in lr share one
    when ``batch`` and their model can (two classes, a batched implementation); the rest train
    alone. Order is kept."""
    out: list[list[RunConfig]] = []
    for _, group in itertools.groupby(points, key=lambda p: p.model_dump(exclude={"lr"})):
        group = list(group)
        shared = batch and group[0].impl in BATCHED and not group[0].dataset.multiclass
        out.extend([group] if shared else [[point] for point in group])
    return out
