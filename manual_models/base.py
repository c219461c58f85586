"""What every model shares, whoever computes its gradient.

A model is three layers, each in one place:

- :class:`Model`: checked arguments, checked inputs, a readable repr, and the contract at the
  model's own parameters (``forward``, ``logits``, ``loss``, ``gradients``, ``summands``),
  written once over the functional forms below.
- its kind (``Logistic`` in ``logistic.py``, ``Softmax`` in ``softmax.py``): labels, the
  seeded start, and the kind's math as functions of the parameters: ``logits_at``,
  ``loss_at``, ``accuracy``, ``summands_at`` (from the logits).
- its implementation: where the gradient comes from (``loss_and_gradients``: by hand, through
  an ``autograd.Function``, or by autograd) and how it steps (by hand, :class:`HandStepped`, or
  ``torch.optim``, in ``twins.py``).

The functional forms take the parameters as arguments, so they serve any parameters: the
model's own, a reference's, or several models' stacked along a trailing axis.
"""

from __future__ import annotations

import torch

from manual_models.interface import Evaluation, Step
from manual_models.optimizers import HandOptimizer, Optimizer, check_rule
from manual_models.validation import check_count, check_dtype, check_lr, check_X, resolve_device


class Model:
    """Validated constructor arguments, input checks, and the contract at the own parameters."""

    n_features: int
    n_classes: int
    lr: float
    device: torch.device
    dtype: torch.dtype
    rule: Optimizer
    grads: dict[str, torch.Tensor]
    w: torch.Tensor
    b: torch.Tensor

    def _setup(self, n_features, lr, device, dtype, optimizer) -> None:
        self.n_features = check_count("n_features", n_features)
        self.lr = check_lr(lr)
        self.device = resolve_device(device)
        self.dtype = check_dtype(dtype)
        self.rule = check_rule(optimizer)
        self.grads = {}

    # --- supplied by the kind of model and by the implementation -----------------------------
    def _y(self, y: torch.Tensor, n_samples: int, check: bool) -> torch.Tensor:
        raise NotImplementedError

    def link(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits_at(self, X, w, b) -> torch.Tensor:
        raise NotImplementedError

    def loss_at(self, X, y, w, b) -> torch.Tensor:
        raise NotImplementedError

    def loss_and_gradients(self, X, y, w, b) -> Evaluation:
        raise NotImplementedError

    def summands_at(self, X, y, z) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # --- the contract, at the model's own parameters -----------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.link(self.logits(X))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return self.logits_at(self._X(X), self.w, self.b)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        return self.loss_at(*self._inputs(X, y, check), self.w, self.b)

    def evaluate(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Evaluation:
        """The loss, ∂J/∂w and ∂J/∂b, and the logits at the current parameters, from one pass
        over X, without updating anything."""
        return self.loss_and_gradients(*self._inputs(X, y, check), self.w, self.b)

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """∂J/∂w and ∂J/∂b at the current parameters, without updating anything."""
        return self.evaluate(X, y, check=check).grads

    def summands(
        self, X: torch.Tensor, y: torch.Tensor, logits: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The size of the terms the gradient sums; ``logits``: this model's logits on X, when
        the caller has them already (from :meth:`evaluate`: one product X w fewer)."""
        X, y = self._inputs(X, y, False)
        z = self.logits_at(X, self.w, self.b) if logits is None else logits
        return self.summands_at(X, y, z)

    # --- checks ------------------------------------------------------------------------------
    def _X(self, X: torch.Tensor) -> torch.Tensor:
        return check_X(X, self.n_features, self.device, self.dtype)

    def _inputs(self, X, y, check: bool) -> tuple[torch.Tensor, torch.Tensor]:
        X = self._X(X)
        return X, self._y(y, X.shape[0], check)

    def __repr__(self) -> str:
        classes = "" if self.n_classes == 2 else f", n_classes={self.n_classes}"
        return (
            f"{type(self).__name__}(n_features={self.n_features}{classes}, lr={self.lr}, "
            f"device={str(self.device)!r}, dtype={self.dtype})"
        )


class HandStepped:
    """A model whose parameters are plain tensors and whose step is written by hand: the
    post's ``optimize``, gradients kept the way ``.grad`` keeps them, and the step.

    Needs ``w``, ``b``, ``lr`` (a number, or a row of rates for models side by side), ``rule``,
    ``grads``, ``_inputs`` and ``loss_and_gradients``.
    """

    optimizer: HandOptimizer

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """One full-batch step: the loss and logits at the parameters before it, then the
        update by the rule (plain SGD: θ ← θ − lr·∂J/∂θ)."""
        X, y = self._inputs(X, y, check)
        loss, grads, z = self.loss_and_gradients(X, y, self.w, self.b)
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
