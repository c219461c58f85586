"""The autograd twins of the hand-differentiated models: the same interface, the same seeded
start, the gradient from PyTorch. Each reads like d2l's concise version beside its scratch one.

- ``Autograd*`` is the reference: ``nn.Linear`` + ``nn.BCEWithLogitsLoss`` (two classes) or
  ``nn.CrossEntropyLoss`` (C classes) + ``torch.optim``, trained by the post's loop
  ``zero_grad → forward → loss → backward → step``.
- ``Function*`` is what "overriding backward" means in PyTorch: the loss is a
  ``torch.autograd.Function`` (:class:`LogisticLoss`, :class:`SoftmaxLoss`) whose ``backward``
  is the hand derivation, and ``torch.optim`` applies it.

Both are one :class:`Twin`, parametrised by the loss; the kind of model (``Logistic``,
``Softmax``) brings the labels, the start and the link.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from manual_models.base import Model
from manual_models.interface import Evaluation, Step
from manual_models.logistic import Logistic, bce_from_logits, bce_gradients, column, logits
from manual_models.optimizers import Optimizer
from manual_models.softmax import (
    Softmax,
    cross_entropy_from_logits,
    one_hot,
    softmax_gradients,
)


class LogisticLoss(torch.autograd.Function):
    """J(X, w, b, y) = mean(softplus(z) − y z), z = X w + b, with the hand-written backward.

    backward (g = ∂output/∂J, usually 1):
        ∂J/∂w = g Xᵀ(ŷ − y)/m     ∂J/∂b = g mean(ŷ − y)
        ∂J/∂X = g (ŷ − y) wᵀ/m    ∂J/∂y = −g z/m
    With K columns (w (n, K), b (K,)) J is (K,), one loss per column, and g is (K,): the
    formulas hold column by column, and X and y, shared by all columns, sum their K parts.
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
        m = X.shape[0]
        if need_X:
            residual = (y_hat - column(y, z)) * grad_output
            dX = (torch.outer(residual, w) if z.ndim == 1 else residual @ w.T) / m
        if need_y:
            dy = -(grad_output * z if z.ndim == 1 else z @ grad_output) / m
        return dX, dw, db, dy


class SoftmaxLoss(torch.autograd.Function):
    """J(X, W, b, y) = mean(log Σ_k e^{Z_k} − Z_y), Z = X W + b, with the hand-written backward.

    backward (g = ∂output/∂J):
        ∂J/∂W = g Xᵀ(P − Y)/m     ∂J/∂b = g mean(P − Y)     ∂J/∂X = g (P − Y) Wᵀ/m
    y holds class indices: no gradient. The backward is written in differentiable ops, so
    double backward works (it rebuilds Z from the inputs when grad mode is on).
    """

    @staticmethod
    def forward(ctx, X, W, b, y):
        Z = logits(X, W, b)
        ctx.save_for_backward(X, W, b, y)
        ctx.Z = Z
        return cross_entropy_from_logits(Z, y)

    @staticmethod
    def backward(ctx, grad_output):
        X, W, b, y = ctx.saved_tensors
        Z = logits(X, W, b) if torch.is_grad_enabled() else ctx.Z
        P = torch.softmax(Z, dim=1)
        need_X, need_W, need_b, _ = ctx.needs_input_grad
        dX = dW = db = None
        if need_W or need_b:
            grads = softmax_gradients(X, P, y)
            dW = grad_output * grads["dw"] if need_W else None
            db = grad_output * grads["db"] if need_b else None
        if need_X:
            dX = grad_output * (P - one_hot(y, P)) @ W.T / X.shape[0]
        return dX, dW, db, None


class Twin(Model, nn.Module):
    """What both twins share: parameters as ``nn.Parameter``, stepped by ``torch.optim``.

    A twin says how it holds its parameters (``_build``, ``_leaves``, and ``_view``, which
    shows them in the model's shapes w, b), its loss with a graph (``objective``), and where a
    gradient at any parameters comes from (``loss_and_gradients``).
    """

    def __init__(
        self,
        n_features: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._setup(n_features, lr, device, dtype, optimizer)
        self._build(*self._start(seed))
        # w and b: live views of the parameters, without their graph (the optimizer updates
        # the parameters in place, so the views follow; writing them writes the parameters).
        self._w, self._b = (t.detach() for t in self._view(*self._leaves()))
        self.optimizer = self.rule.torch_optimizer(*self._leaves(), self.lr, self.device)

    def _build(self, w: torch.Tensor, b: torch.Tensor) -> None:
        raise NotImplementedError

    def _leaves(self) -> tuple[nn.Parameter, nn.Parameter]:
        raise NotImplementedError

    def _view(self, weight, bias) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def objective(self, X, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss with its autograd graph, and the logits it came from (inputs checked)."""
        raise NotImplementedError

    @property
    def w(self) -> torch.Tensor:
        return self._w

    @property
    def b(self) -> torch.Tensor:
        return self._b

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """The post's loop: zero_grad → forward → loss → backward → step. (Without zero_grad
        when the rule says so: then ``.grad`` sums every step's gradient.)"""
        X, y = self._inputs(X, y, check)
        self._require_autograd()
        with torch.enable_grad():
            if self.rule.zero_grad:
                self.optimizer.zero_grad()
            loss, outputs = self.objective(X, y)
            loss.backward()
            self.optimizer.step()
        dw, db = self._view(*(p.grad for p in self._leaves()))
        self.grads = {"dw": dw, "db": db}
        return Step(loss.detach(), outputs.detach())

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        X, y = self._inputs(X, y, check)
        with torch.no_grad():
            return self.objective(X, y)[0]

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """∂J/∂w and ∂J/∂b by autograd at the current parameters; ``.grad`` is left alone."""
        X, y = self._inputs(X, y, check)
        self._require_autograd()
        with torch.enable_grad():
            dw, db = self._view(*torch.autograd.grad(self.objective(X, y)[0], self._leaves()))
        return {"dw": dw, "db": db}

    def loss_and_gradients(self, X, y, w, b) -> Evaluation:
        """The loss, its gradient by autograd, and the logits at (w, b), any parameters (one
        loss, or one per trailing column: the gradient of their sum is each column's own)."""
        self._require_autograd()
        w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        with torch.enable_grad():
            loss, z = self._loss_at(X, y, w, b)
            dw, db = torch.autograd.grad(loss.sum(), (w, b))
        return Evaluation(loss.detach(), {"dw": dw, "db": db}, z.detach())

    def _loss_at(self, X, y, w, b) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        self._w.copy_(torch.as_tensor(w).reshape(self._w.shape))  # copy_ casts and moves
        self._b.copy_(torch.as_tensor(b).reshape(self._b.shape))

    def _require_autograd(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() turns off; "
                "the manual models (LogisticRegression, SoftmaxRegression) run there"
            )


class AutogradTwin(Twin):
    """``nn.Linear`` + a criterion + ``torch.optim``: the textbook model, the reference."""

    Criterion: type[nn.Module]

    def _build(self, w, b):
        # skip_init: the parameters come from the shared seed, not from torch's global RNG.
        self.linear = nn.utils.skip_init(
            nn.Linear, self.n_features, b.numel(), device=self.device, dtype=self.dtype
        )
        self.criterion = self.Criterion()
        with torch.no_grad():
            for view, start in zip(self.from_linear(*self._leaves()), (w, b), strict=True):
                view.copy_(start)

    def _leaves(self):
        return self.linear.weight, self.linear.bias

    def _view(self, weight, bias):
        return self.from_linear(weight, bias)

    def objective(self, X, y):
        outputs = self.linear(X).squeeze(-1)  # the logits: (m,) for one output, (m, C) for C
        return self.criterion(outputs, y), outputs

    def loss_at(self, X, y, w, b):
        with torch.no_grad():
            return self._loss_at(X, y, w, b)[0]


class FunctionTwin(Twin):
    """Parameters ``weight`` and ``bias`` in the model's shapes; the loss through an
    ``autograd.Function`` with the hand-written backward; ``torch.optim`` steps it."""

    Loss: type[torch.autograd.Function]

    def _build(self, w, b):
        self.weight = nn.Parameter(w)
        self.bias = nn.Parameter(b)

    def _leaves(self):
        return self.weight, self.bias

    def _view(self, weight, bias):
        return weight, bias

    def objective(self, X, y):
        return self._loss_at(X, y, self.weight, self.bias)

    def _loss_at(self, X, y, w, b):
        with torch.no_grad():  # for the accuracy: the Function keeps its own logits inside
            z = self.logits_at(X, w, b)
        return self.Loss.apply(X, w, b, y), z


class AutogradLogisticRegression(AutogradTwin, Logistic):
    """The reference: ``nn.Linear(n_features, 1)`` + ``nn.BCEWithLogitsLoss`` + ``optim.SGD``."""

    Criterion = nn.BCEWithLogitsLoss

    def _loss_at(self, X, y, w, b):
        """The same loss as a function of the parameters: nn.Linear is F.linear, and
        BCEWithLogitsLoss is F.binary_cross_entropy_with_logits, per column."""
        z = F.linear(X, w.reshape(self.n_features, -1).T, b.reshape(-1)).view(-1, *b.shape)
        per_sample = F.binary_cross_entropy_with_logits(
            z, column(y, z).expand_as(z), reduction="none"
        )
        return per_sample.mean(0), z


class FunctionLogisticRegression(FunctionTwin, Logistic):
    """Parameters ``weight`` (n,) and ``bias`` (); the loss through :class:`LogisticLoss`."""

    Loss = LogisticLoss


class AutogradSoftmaxRegression(AutogradTwin, Softmax):
    """The reference: ``nn.Linear(n_features, n_classes)`` + ``nn.CrossEntropyLoss`` +
    ``torch.optim``; its weight (C, n) is Wᵀ."""

    Criterion = nn.CrossEntropyLoss

    def __init__(self, n_features: int, n_classes: int, lr: float = 0.01, **kwargs) -> None:
        self._setup_classes(n_classes)
        super().__init__(n_features, lr, **kwargs)

    def _loss_at(self, X, y, W, b):
        Z = F.linear(X, W.T, b)
        return F.cross_entropy(Z, y, reduction="none").mean(0), Z


class FunctionSoftmaxRegression(FunctionTwin, Softmax):
    """Parameters ``weight`` (n, C) and ``bias`` (C,); the loss through :class:`SoftmaxLoss`."""

    Loss = SoftmaxLoss

    def __init__(self, n_features: int, n_classes: int, lr: float = 0.01, **kwargs) -> None:
        self._setup_classes(n_classes)
        super().__init__(n_features, lr, **kwargs)
