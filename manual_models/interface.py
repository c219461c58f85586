"""The one interface every implementation offers."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class GradientDescentModel(Protocol):
    """What a training loop may rely on, whoever computes the gradient.

    ``w`` (n_features,) and ``b`` (0-d) are the current parameters as plain tensors (no graph);
    ``grads`` holds ``{"dw", "db"}`` from the last step. ``check=False`` skips the one check
    that reads data (labels in {0, 1}), which would synchronise a GPU with the host.

    Optional, and used by the training loop where present: ``batch_shape`` — ``(K,)`` for a
    model holding K learning rates side by side, whose ``w`` is (n_features, K), ``b`` (K,) and
    losses (K,) — and ``last_logits``, the logits the last ``train_step`` computed (so the loop
    need not compute them again for the accuracy).

    A softmax model has ``n_classes`` (C): ``w`` is then W (n_features, C) and ``b`` (C,);
    labels are class indices. Every model has ``rule``, its update rule
    (:class:`manual_models.Optimizer`); with ``rule.zero_grad`` false, ``grads`` holds the sum
    of every gradient so far, as ``.grad`` does when nothing zeroes it.
    """

    n_features: int
    lr: float
    device: torch.device
    dtype: torch.dtype
    grads: dict[str, torch.Tensor]

    @property
    def w(self) -> torch.Tensor: ...

    @property
    def b(self) -> torch.Tensor: ...

    def forward(self, X: torch.Tensor) -> torch.Tensor: ...

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor: ...

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]: ...

    def train_step(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> torch.Tensor: ...

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None: ...
