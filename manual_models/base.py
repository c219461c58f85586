"""The contract at a model's own parameters, written once, and the model stepped by hand.

A model is a :class:`~manual_models.interface.Kind` (the math) and an implementation (where
the gradient comes from and how the step is taken):

- :class:`Model`: checked arguments, a readable repr, and the loop's contract (``forward``,
  ``logits``, ``loss``, ``evaluate``, ``gradients``, ``accuracy``, ``summands``) at the own
  parameters, over the kind's functions and the implementation's ``loss_at`` / ``evaluate_at``.
- :class:`HandModel`: the gradient the kind derives by hand, the step written by hand
  (:class:`~manual_models.optimizers.HandOptimizer`). ``twins.py`` holds the autograd ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from manual_models.interface import Evaluation, Kind, Step
from manual_models.optimizers import HandOptimizer, Optimizer, check_rule
from manual_models.validation import check_lr


class Model(ABC):
    """The contract at the model's own parameters, over its kind and its implementation."""

    kind: Kind
    lr: float
    rule: Optimizer
    grads: dict[str, torch.Tensor]
    w: torch.Tensor
    b: torch.Tensor

    def __init__(self, kind: Kind, lr: float, optimizer: Optimizer | None) -> None:
        if not isinstance(kind, Kind):
            raise TypeError(f"kind must be a manual_models.Kind, got {kind!r}")
        self.kind = kind
        self.lr = check_lr(lr)
        self.rule = check_rule(optimizer)
        self.grads = {}

    # The kind's, not copies: one place says what a model's shapes, device and dtype are.
    n_features = property(lambda self: self.kind.n_features)
    n_classes = property(lambda self: self.kind.n_classes)
    device = property(lambda self: self.kind.device)
    dtype = property(lambda self: self.kind.dtype)

    # --- what an implementation writes ---------------------------------------------------------
    @abstractmethod
    def loss_at(self, X, y, w, b) -> torch.Tensor:
        """The loss at (w, b), as this implementation computes it."""

    @abstractmethod
    def evaluate_at(self, X, y, w, b) -> Evaluation:
        """The loss, its gradient and the logits at (w, b), any parameters (a trailing axis
        of K columns too): the derivation, an ``autograd.Function``, or autograd."""

    @abstractmethod
    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """One full-batch step; the loss and logits at the parameters before it."""

    @abstractmethod
    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        """Copy ``w`` and ``b`` in, in place (a captured CUDA graph keeps their storage)."""

    # --- the contract, at the model's own parameters -----------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.kind.link(self.logits(X))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.kind.logits_at(self.kind.features(X), self.w, self.b)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        return self.loss_at(*self.kind.inputs(X, y, check=check), self.w, self.b)

    def evaluate(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Evaluation:
        """The loss, ∂J/∂w and ∂J/∂b, and the logits at the current parameters, from one pass
        over X, without updating anything."""
        return self.evaluate_at(*self.kind.inputs(X, y, check=check), self.w, self.b)

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """∂J/∂w and ∂J/∂b at the current parameters, without updating anything."""
        return self.evaluate(X, y, check=check).grads

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.kind.accuracy(logits, y)

    def summands(
        self, X: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The size of the terms the gradient sums; ``logits``: this model's logits on X, when
        the caller has them already (from :meth:`evaluate`: one product X w fewer)."""
        X, y = self.kind.inputs(X, y, check=False)
        z = self.kind.logits_at(X, self.w, self.b) if logits is None else logits
        return self.kind.summands_at(X, y, z)

    def __repr__(self) -> str:
        classes = "" if self.n_classes == 2 else f", n_classes={self.n_classes}"
        return (
            f"{type(self).__name__}(n_features={self.n_features}{classes}, lr={self.lr}, "
            f"device={str(self.device)!r}, dtype={self.dtype})"
        )


class HandModel(Model):
    """Any kind, differentiated by hand: the kind's derived gradient, the post's ``optimize``,
    gradients kept the way ``.grad`` keeps them. Nothing requires grad, so it runs unchanged
    under ``torch.inference_mode()``."""

    def __init__(
        self,
        kind: Kind,
        lr: float = 0.01,
        *,
        seed: int = 0,
        optimizer: Optimizer | None = None,
        start: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """``start``: (w, b) to begin from instead of the kind's draw from ``seed``."""
        super().__init__(kind, lr, optimizer)
        self.w, self.b = kind.initial_parameters(seed) if start is None else start
        self.optimizer = HandOptimizer(self.rule)  # plain SGD unless told otherwise

    def loss_at(self, X, y, w, b) -> torch.Tensor:
        return self.kind.loss_at(X, y, w, b)

    def evaluate_at(self, X, y, w, b) -> Evaluation:
        return self.kind.gradients_at(X, y, w, b)

    def compile_gradients(self) -> HandModel:
        """The loss and gradient by hand through ``torch.compile``: the dozen elementwise
        kernels over the logits fused into few. Only this pure function: torch 2.13's compile
        drops an in-place update of a 0-dim bias (measured), so the update stays eager."""
        self.evaluate_at = torch.compile(self.evaluate_at, dynamic=False)
        return self

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """One full-batch step: the loss and logits at the parameters before it, then the
        update by the rule (plain SGD: θ ← θ − lr·∂J/∂θ)."""
        X, y = self.kind.inputs(X, y, check=check)
        loss, grads, z = self.evaluate_at(X, y, self.w, self.b)
        self._keep(grads)
        self.optimize()
        return Step(loss, z)

    def optimize(self) -> None:
        """θ ← θ − lr·dθ for plain SGD (momentum, Nesterov, Adam: the rule's update), in place:
        the parameters keep their storage."""
        if not self.grads:
            raise RuntimeError("optimize() needs gradients: call backward() first")
        self._writable()
        grads = [self.grads["dw"], self.grads["db"]]
        self.optimizer.step([self.w, self.b], grads, self.lr, decays=(True, False))

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        """Copy ``w`` and ``b`` in (to evaluate two models at one point), in the model's shapes
        and in place: the parameters keep their storage, as a captured CUDA graph needs."""
        self._writable()
        self.w.copy_(torch.as_tensor(w).reshape(self.w.shape))  # copy_ casts and moves
        self.b.copy_(torch.as_tensor(b).reshape(self.b.shape))

    def _writable(self) -> None:
        if self.w.is_inference() and not torch.is_inference_mode_enabled():
            # Made under inference_mode, updated outside it: move to ordinary tensors once.
            self.w, self.b = self.w.clone(), self.b.clone()

    def _keep(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This step's gradients; added to the kept ones when the rule has no zero_grad."""
        if not self.rule.zero_grad and self.grads:
            # Accumulate in place, as .grad does (and so a replayed CUDA graph adds into the
            # buffer it captured).
            for name, g in grads.items():
                self.grads[name].add_(g)
            return self.grads
        self.grads = grads
        return grads
