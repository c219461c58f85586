"""K learning rates in one pass: K copies of one model side by side, one step for all of them.

The models know nothing of this. Their math is written as functions of the parameters that
reduce over the samples (and the classes) only (``logits_at``, ``loss_at``,
``loss_and_gradients``, ``summands_at``), so K models' parameters stacked along a trailing
axis, w (n, K) and b (K,) for logistic regression, W (n, C, K) and b (C, K) for softmax
regression, go through the very functions one model uses: X w is one matrix product instead
of K, and every column is exactly the model its rate would train alone (the columns never
mix).

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
from manual_models import GradientDescentModel, HandModel, Implementation, make_model
from manual_models.validation import check_lr

# Trained K rates at a time in a sweep; autograd, the reference, stays one textbook run each.
BATCHED = ("manual", "function")


class LrBatch(HandModel):
    """K copies of one model, one per learning rate, trained in one pass.

    It offers the model's own interface with a trailing axis of K on every parameter: ``w``
    (n, K) or (n, C, K), ``b`` (K,) or (C, K), a loss and an accuracy per column, logits (m, K) or
    (m, C, K). Every column starts from the model's parameters, and the rule's state (momentum's
    v, Adam's m and s) has the same trailing axis. It asks the model only what
    :class:`manual_models.Implementation` lists: its kind, its rule, and its loss and gradient
    at any parameters.
    """

    def __init__(self, model: Implementation, lrs: Sequence[float]) -> None:
        if not isinstance(model, Implementation):
            raise TypeError(f"LrBatch needs a manual_models.Implementation, got {model!r}")
        if isinstance(lrs, str) or not isinstance(lrs, Sequence) or not lrs:
            raise ValueError(f"lrs must be a non-empty list of learning rates, got {lrs!r}")
        self.lrs = tuple(check_lr(lr) for lr in lrs)
        k = len(self.lrs)
        start = (t.unsqueeze(-1).repeat(*(1 for _ in t.shape), k) for t in model.theta)
        super().__init__(model.kind, self.lrs[0], optimizer=model.rule, start=tuple(start))
        self.model = model
        self.lr = torch.tensor(self.lrs, device=self.device, dtype=self.dtype)  # a rate a column

    # --- where the loss and gradient come from: the model's own, at the stacked parameters -----
    def loss_at(self, X, y, *params):
        return self.model.loss_at(X, y, *params)

    def evaluate_at(self, X, y, *params):
        return self.model.evaluate_at(X, y, *params)

    def keep(self, columns: Sequence[int]) -> None:
        """Go on with these columns only (successive halving stops the rest): the parameters,
        the kept gradients, the rule's state and the rates shrink to them, so the stopped
        columns cost nothing more. Each kept column goes on exactly as it would have."""
        index = torch.tensor(list(columns), device=self.device)

        def pick(t: torch.Tensor) -> torch.Tensor:  # Adam's step count, a scalar, is shared
            return t.index_select(-1, index) if t.ndim else t

        self.params = {name: pick(t) for name, t in self.params.items()}
        self.lr = pick(self.lr)
        self.lrs = tuple(self.lrs[i] for i in columns)
        self.grads = {name: pick(g) for name, g in self.grads.items()}
        self.optimizer.state = [{k: pick(v) for k, v in s.items()} for s in self.optimizer.state]

    def __repr__(self) -> str:
        return f"LrBatch({self.model!r}, lrs={list(self.lrs)})"


def build(
    impl: str, n_features: int, lrs: Sequence[float], *, compiled: bool = False, **kwargs
) -> GradientDescentModel:
    """One model for one rate; K side by side for K rates. ``compiled``: the hand-derived
    loss and gradient through ``torch.compile`` (the twins, the references, stay eager)."""
    model = make_model(impl, n_features, lrs[0], **kwargs)
    if compiled and isinstance(model, HandModel):
        model.compile_gradients()
    return model if len(lrs) == 1 else LrBatch(model, lrs)


def passes(points: list[RunConfig], batch: bool = True) -> list[list[RunConfig]]:
    """The grid points in training passes: consecutive points that differ only in lr share one
    when ``batch`` and their implementation is batched (:data:`BATCHED`); the rest train alone.
    Order is kept."""
    out: list[list[RunConfig]] = []
    for _, group in itertools.groupby(points, key=lambda p: p.model_dump(exclude={"lr"})):
        group = list(group)
        shared = batch and group[0].impl in BATCHED
        out.extend([group] if shared else [[point] for point in group])
    return out
