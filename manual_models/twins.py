"""The autograd twins of :class:`manual_models.LogisticRegression`: same interface, same init.

- :class:`AutogradLogisticRegression` is the reference: ``nn.Linear`` + ``BCEWithLogitsLoss`` +
  ``torch.optim.SGD``, trained by the post's loop ``zero_grad → forward → loss → backward → step``.
- :class:`FunctionLogisticRegression` is what "overriding backward" means in PyTorch: the loss is
  a ``torch.autograd.Function`` (:class:`LogisticLoss`) whose ``backward`` is the hand derivation,
  and ``torch.optim.SGD`` applies it.
"""

from __future__ import annotations

import torch
from torch import nn

from manual_models import _checks
from manual_models.logistic import bce_from_logits, bce_gradients, logits


class LogisticLoss(torch.autograd.Function):
    """J(X, w, b, y) = mean(softplus(z) − y z), z = X w + b, with the hand-written backward.

    backward (g = ∂output/∂J, usually 1):
        ∂J/∂w = g Xᵀ(ŷ − y)/m     ∂J/∂b = g mean(ŷ − y)
        ∂J/∂X = g (ŷ − y) wᵀ/m    ∂J/∂y = −g z/m
    The backward is itself written in differentiable ops, so double backward
    (``create_graph=True``, ``gradgradcheck``) works: there it recomputes z from the inputs.
    """

    @staticmethod
    def forward(ctx, X, w, b, y):
        z = logits(X, w, b)
        ctx.save_for_backward(X, w, b, y)
        ctx.z = z
        return bce_from_logits(z, y)

    @staticmethod
    def backward(ctx, grad_output):
        X, w, b, y = ctx.saved_tensors
        # With create_graph=True grad mode is on: rebuild z so the graph reaches w and b.
        z = logits(X, w, b) if torch.is_grad_enabled() else ctx.z
        y_hat = torch.sigmoid(z)
        need_X, need_w, need_b, need_y = ctx.needs_input_grad
        dX = dw = db = dy = None
        if need_w or need_b:
            grads = bce_gradients(X, y_hat, y)
            dw = grad_output * grads["dw"] if need_w else None
            db = grad_output * grads["db"] if need_b else None
        if need_X:
            dX = grad_output * torch.outer(y_hat - y, w) / X.shape[0]
        if need_y:
            dy = -grad_output * z / X.shape[0]
        return dX, dw, db, dy


class _TorchOptimModel(_checks.CheckedModel, nn.Module):
    """The shared half of the twins: parameters as nn.Parameters, trained by torch.optim.SGD."""

    def __init__(
        self,
        n_features: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
    ) -> None:
        nn.Module.__init__(self)
        self._check_args(n_features, lr, device, dtype)
        self.grads: dict[str, torch.Tensor] = {}
        self._build(*_checks.init_parameters(self.n_features, seed, self.device, self.dtype))
        self.optimizer = torch.optim.SGD(self.parameters(), lr=self.lr)

    # Each twin says how it holds w and b and how it computes the loss with a graph.
    def _build(self, w: torch.Tensor, b: torch.Tensor) -> None:
        raise NotImplementedError

    def _params(self) -> tuple[nn.Parameter, nn.Parameter]:
        raise NotImplementedError

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss with its autograd graph (inputs already checked)."""
        raise NotImplementedError

    # --- the common interface -----------------------------------------------------------
    @property
    def w(self) -> torch.Tensor:
        return self._params()[0].detach().view(self.n_features)

    @property
    def b(self) -> torch.Tensor:
        return self._params()[1].detach().view(())

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """ŷ = σ(X w + b), shape (n_samples,)."""
        return torch.sigmoid(self.logits(self._X(X)))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        w, b = self._params()
        return logits(X, w.view(self.n_features), b.view(()))

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        X = self._X(X)
        y = self._y(y, X, check)
        with torch.no_grad():
            return self.objective(X, y)

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """∂J/∂w and ∂J/∂b by autograd at the current parameters; ``.grad`` is left alone."""
        X = self._X(X)
        y = self._y(y, X, check)
        self._require_autograd()
        with torch.enable_grad():
            dw, db = torch.autograd.grad(self.objective(X, y), self._params())
        return {"dw": dw.view(self.n_features), "db": db.view(())}

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """The post's loop: zero_grad → forward → loss → backward → step. Returns the loss."""
        X = self._X(X)
        y = self._y(y, X, check)
        self._require_autograd()
        with torch.enable_grad():
            self.optimizer.zero_grad()
            loss = self.objective(X, y)
            loss.backward()
            self.optimizer.step()
        w, b = self._params()
        self.grads = {"dw": w.grad.view(self.n_features), "db": b.grad.view(())}
        return loss.detach()

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        w_param, b_param = self._params()
        with torch.no_grad():
            w_param.copy_(torch.as_tensor(w).reshape(w_param.shape))
            b_param.copy_(torch.as_tensor(b).reshape(b_param.shape))

    def _require_autograd(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() turns off; "
                "the manual LogisticRegression runs there"
            )


class AutogradLogisticRegression(_TorchOptimModel):
    """The reference: ``nn.Linear(n_features, 1)`` + ``nn.BCEWithLogitsLoss`` + ``optim.SGD``."""

    def _build(self, w, b):
        # skip_init: the parameters come from the shared seed, not from torch's global RNG.
        self.linear = nn.utils.skip_init(
            nn.Linear, self.n_features, 1, device=self.device, dtype=self.dtype
        )
        self.criterion = nn.BCEWithLogitsLoss()
        with torch.no_grad():
            self.linear.weight.copy_(w.view(1, -1))
            self.linear.bias.copy_(b.view(1))

    def _params(self):
        return self.linear.weight, self.linear.bias

    def logits(self, X):
        return self.linear(X).squeeze(-1)

    def objective(self, X, y):
        outputs = self.logits(X)
        return self.criterion(outputs, y)


class FunctionLogisticRegression(_TorchOptimModel):
    """Parameters ``weight`` (n,) and ``bias`` (), the loss through :class:`LogisticLoss`."""

    def _build(self, w, b):
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def _params(self):
        return self.weight, self.bias

    def objective(self, X, y):
        return LogisticLoss.apply(X, self.weight, self.bias, y)
