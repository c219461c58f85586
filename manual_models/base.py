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
    params: dict[str, torch.Tensor]  # by name, in the kind's order

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
    # The built-in kinds' two parameters by their names (a network's: ``params["W1"]``).
    w = property(lambda self: self._parameter("w"))
    b = property(lambda self: self._parameter("b"))

    def _parameter(self, name: str) -> torch.Tensor:
        if name not in self.params:  # an AttributeError, so hasattr and getattr work
            raise AttributeError(f"{self.kind!r} has no {name!r}; its parameters: {[*self.params]}")
        return self.params[name]

    @property
    def theta(self) -> tuple[torch.Tensor, ...]:
        """The parameters in the kind's order, as its functions take them."""
        return tuple(self.params.values())

    # --- what an implementation writes ---------------------------------------------------------
    @abstractmethod
    def loss_at(self, X, y, *params) -> torch.Tensor:
        """The loss at the parameters, as this implementation computes it."""

    @abstractmethod
    def evaluate_at(self, X, y, *params) -> Evaluation:
        """The loss, its gradient and the logits at any parameters (a trailing axis of K
        columns too): the derivation, an ``autograd.Function``, or autograd."""

    @abstractmethod
    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """One full-batch step; the loss and logits at the parameters before it."""

    def set_parameters(self, *params: torch.Tensor) -> None:
        """Copy the parameters in (in the kind's order: ``w, b`` here), to evaluate two models
        at one point: in the model's shapes and in place, so the parameters keep their
        storage, as a captured CUDA graph needs."""
        for own, new in zip(self.theta, self.kind.named(params).values(), strict=True):
            own.copy_(torch.as_tensor(new).reshape(own.shape))  # copy_ casts and moves

    # --- the contract, at the model's own parameters -----------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.kind.link(self.logits(X))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.kind.logits_at(self.kind.features(X), *self.theta)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        return self.loss_at(*self.kind.inputs(X, y, check=check), *self.theta)

    def evaluate(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Evaluation:
        """The loss, its gradient (∂J/∂w and ∂J/∂b, …) and the logits at the current
        parameters, from one pass over X, without updating anything."""
        return self.evaluate_at(*self.kind.inputs(X, y, check=check), *self.theta)

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """The gradient at the current parameters, without updating anything."""
        return self.evaluate(X, y, check=check).grads

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.kind.accuracy(logits, y)

    def summands(
        self, X: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The size of the terms the gradient sums; ``logits``: this model's logits on X, when
        the caller has them already (from :meth:`evaluate`: one product X w fewer)."""
        X, y = self.kind.inputs(X, y, check=False)
        z = self.kind.logits_at(X, *self.theta) if logits is None else logits
        return self.kind.summands_at(X, y, z, *self.theta)

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
        start: tuple[torch.Tensor, ...] | None = None,
    ) -> None:
        """``start``: the parameters to begin from (in the kind's order, or by name) instead
        of the kind's draw from ``seed``."""
        super().__init__(kind, lr, optimizer)
        self.params = kind.initial(seed) if start is None else kind.named(start)
        self.optimizer = HandOptimizer(self.rule)  # plain SGD unless told otherwise

    def loss_at(self, X, y, *params) -> torch.Tensor:
        return self.kind.loss_at(X, y, *params)

    def evaluate_at(self, X, y, *params) -> Evaluation:
        return self.kind.gradients_at(X, y, *params)

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
        loss, grads, z = self.evaluate_at(X, y, *self.theta)
        self._keep(grads)
        self.optimize()
        return Step(loss, z)

    def optimize(self) -> None:
        """θ ← θ − lr·dθ for plain SGD (momentum, Nesterov, Adam: the rule's update), in place:
        the parameters keep their storage."""
        if not self.grads:
            raise RuntimeError("optimize() needs gradients: call backward() first")
        self._writable()
        grads = [self.grads[name] for name in self.kind.gradient_names]
        self.optimizer.step(list(self.theta), grads, self.lr, decays=self.kind.decayed)

    def set_parameters(self, *params: torch.Tensor) -> None:
        self._writable()
        super().set_parameters(*params)

    def _writable(self) -> None:
        if self.theta[0].is_inference() and not torch.is_inference_mode_enabled():
            # Made under inference_mode, updated outside it: move to ordinary tensors once.
            self.params = {name: t.clone() for name, t in self.params.items()}

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
