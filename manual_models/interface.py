"""The one contract between the training loop and every model, and what a step returns."""

from __future__ import annotations

from typing import NamedTuple, Protocol, runtime_checkable

import torch


class Evaluation(NamedTuple):
    """The loss, its gradient ``{"dw", "db"}`` and the logits, at one set of parameters."""

    loss: torch.Tensor
    grads: dict[str, torch.Tensor]
    logits: torch.Tensor


class Step(NamedTuple):
    """What one training step returns: the loss at the parameters before the step, and the
    logits it computed there (so the loop reads the training accuracy off them)."""

    loss: torch.Tensor
    logits: torch.Tensor


@runtime_checkable
class GradientDescentModel(Protocol):
    """Everything a training loop may rely on, whoever computes the gradient.

    ``w`` and ``b`` are the current parameters as plain tensors (no graph): w (n_features,) and
    b () for logistic regression, W (n_features, C) and b (C,) for softmax regression.
    ``grads`` holds ``{"dw", "db"}`` in the same shapes, from the last step; with
    ``rule.zero_grad`` false it is the sum of every gradient so far, as ``.grad`` is when
    nothing zeroes it. ``check=False`` skips the one check that reads data (the labels' values),
    which would synchronise a GPU with the host.

    Each model answers in its own terms: its logits and its accuracy, ``evaluate`` (the loss,
    gradient and logits from one pass over X), and ``summands``, the size of the terms each
    gradient sums (``|X|ᵀ|ŷ − y|/m`` and ``mean|ŷ − y|``, from logits already computed, or its
    own), which is what rounding in a correct gradient is relative to. Every value is per
    model; a set of models trained side by side returns each with a trailing axis, one entry
    per model.
    """

    n_features: int
    device: torch.device
    dtype: torch.dtype
    grads: dict[str, torch.Tensor]

    @property
    def w(self) -> torch.Tensor: ...

    @property
    def b(self) -> torch.Tensor: ...

    def forward(self, X: torch.Tensor) -> torch.Tensor: ...

    def logits(self, X: torch.Tensor) -> torch.Tensor: ...

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor: ...

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]: ...

    def evaluate(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Evaluation: ...

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step: ...

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...

    def summands(
        self, X: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]: ...

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None: ...
