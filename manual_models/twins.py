"""The autograd twins of :class:`manual_models.LogisticRegression`: same interface, same init.

- :class:`AutogradLogisticRegression` is the reference: ``nn.Linear`` + ``BCEWithLogitsLoss`` +
  ``torch.optim.SGD``, trained by the post's loop ``zero_grad → forward → loss → backward → step``.
- :class:`FunctionLogisticRegression` is what "overriding backward" means in PyTorch: the loss is
  a ``torch.autograd.Function`` (:class:`LogisticLoss`) whose ``backward`` is the hand derivation,
  and ``torch.optim.SGD`` applies it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from manual_models import _checks
from manual_models.logistic import bce_from_logits, bce_gradients, column, logits
from manual_models.optimizers import Optimizer, check_rule
from manual_models.softmax import cross_entropy_from_logits, one_hot, softmax_gradients


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


class _TorchOptimModel(_checks.CheckedModel, nn.Module):
    """The shared half of the twins: parameters as nn.Parameters, trained by ``torch.optim``
    (``SGD``, with momentum or Nesterov, or ``Adam``: the ``optimizer`` rule).

    With ``lr`` a list of K rates the twin is K independent models, each with its own
    parameters in its own ``SGD`` param group at its own rate, evaluated in one pass: the
    loss is their K losses, and ``loss.sum().backward()`` gives each model exactly its own
    gradient (no model's loss depends on another's parameters).
    """

    def __init__(
        self,
        n_features: int,
        lr: float | Sequence[float] = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._check_args(n_features, lr, device, dtype)
        self.rule = check_rule(optimizer)
        self.grads: dict[str, torch.Tensor] = {}
        self.last_logits: torch.Tensor | None = None
        w, b = _checks.init_parameters(self.n_features, seed, self.device, self.dtype)
        self._build(w, b)
        pairs = zip(self._pairs(), self.lrs, strict=True)
        groups = [{"params": list(pair), "lr": lr} for pair, lr in pairs]
        self.optimizer = self.rule.torch_optimizer(groups, self.device)

    # Each twin says how it holds w and b and how it computes the loss with a graph.
    def _build(self, w: torch.Tensor, b: torch.Tensor) -> None:
        raise NotImplementedError

    def _pairs(self) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(weight, bias) of each model, in the order of ``lrs``."""
        raise NotImplementedError

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss with its autograd graph (inputs already checked); (K,) for K models."""
        raise NotImplementedError

    def objective_at(self, X, y, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The K models' losses at w (n, K) and b (K,), stacked from their parameters."""
        raise NotImplementedError

    def _stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = self._pairs()
        return (
            self._stack([w for w, _ in pairs], (self.n_features,)),
            self._stack([b for _, b in pairs], ()),
        )

    def _stack(self, tensors: list[torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        if not self.batch_shape:
            return tensors[0].view(shape)
        return torch.stack([t.view(shape) for t in tensors], dim=-1)

    # --- the common interface -----------------------------------------------------------
    @property
    def w(self) -> torch.Tensor:
        """(n,) — a live view of the parameter — or (n, K), a stacked copy."""
        return self._stack([w.detach() for w, _ in self._pairs()], (self.n_features,))

    @property
    def b(self) -> torch.Tensor:
        return self._stack([b.detach() for _, b in self._pairs()], ())

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """ŷ = σ(X w + b), shape (n_samples,), or (n_samples, K)."""
        return torch.sigmoid(self.logits(self._X(X)))

    def logits(self, X: torch.Tensor) -> torch.Tensor:
        return logits(X, *self._stacked())

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
            if self.batch_shape:  # differentiate at the stacked (n, K) and (K,) directly
                w, b = self._stacked()
                dw, db = torch.autograd.grad(self.objective_at(X, y, w, b).sum(), (w, b))
                return {"dw": dw, "db": db}
            dw, db = torch.autograd.grad(self.objective(X, y), self._pairs()[0])
        return self._grads([dw], [db])

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """The post's loop: zero_grad → forward → loss → backward → step. Returns the loss.
        (Without zero_grad when the rule says so: then ``.grad`` sums every step's gradient.)"""
        X = self._X(X)
        y = self._y(y, X, check)
        self._require_autograd()
        with torch.enable_grad():
            if self.rule.zero_grad:
                self.optimizer.zero_grad()
            loss = self.objective(X, y)
            (loss.sum() if self.batch_shape else loss).backward()  # K models: each its own
            self.optimizer.step()
        pairs = self._pairs()
        self.grads = self._grads([w.grad for w, _ in pairs], [b.grad for _, b in pairs])
        return loss.detach()

    def _grads(self, dws, dbs) -> dict[str, torch.Tensor]:
        return {"dw": self._stack(list(dws), (self.n_features,)), "db": self._stack(list(dbs), ())}

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        new = {"device": self.device, "dtype": self.dtype}
        w = torch.as_tensor(w).to(**new).reshape(self.n_features, *self.batch_shape)
        b = torch.as_tensor(b).to(**new).reshape(self.batch_shape)
        pairs = self._pairs()
        targets = [p for pair in pairs for p in pair]
        if self.batch_shape:
            sources = [t for k in range(len(pairs)) for t in (w[:, k], b[k])]
        else:
            sources = [w, b]
        with torch.no_grad():  # one fused copy for all K models (a step's check does this)
            torch._foreach_copy_(
                targets, [s.reshape(t.shape) for s, t in zip(sources, targets, strict=True)]
            )

    def _require_autograd(self) -> None:
        _require_autograd(self)


def _require_autograd(model) -> None:
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{type(model).__name__} needs autograd, which torch.inference_mode() turns off; "
            "the manual models (LogisticRegression, SoftmaxRegression) run there"
        )


class AutogradLogisticRegression(_TorchOptimModel):
    """The reference: ``nn.Linear(n_features, 1)`` + ``nn.BCEWithLogitsLoss`` + ``optim.SGD``.

    With K rates: K ``nn.Linear`` models whose outputs are computed by one ``F.linear`` on
    their stacked weights, each scored by ``BCEWithLogitsLoss`` on its own column.
    """

    def _build(self, w, b):
        # skip_init: the parameters come from the shared seed, not from torch's global RNG.
        def linear():
            layer = nn.utils.skip_init(
                nn.Linear, self.n_features, 1, device=self.device, dtype=self.dtype
            )
            with torch.no_grad():
                layer.weight.copy_(w.view(1, -1))
                layer.bias.copy_(b.view(1))
            return layer

        if self.batch_shape:
            self.linears = nn.ModuleList(linear() for _ in self.lrs)
            self.criterion = nn.BCEWithLogitsLoss(reduction="none")
        else:
            self.linear = linear()
            self.criterion = nn.BCEWithLogitsLoss()

    def _pairs(self):
        layers = self.linears if self.batch_shape else [self.linear]
        return [(layer.weight, layer.bias) for layer in layers]

    def logits(self, X):
        if self.batch_shape:
            return super().logits(X)
        return self.linear(X).squeeze(-1)

    def objective(self, X, y):
        if self.batch_shape:
            return self.objective_at(X, y, *self._stacked())
        outputs = self.logits(X)
        self.last_logits = outputs.detach()  # the engine reads the accuracy off these
        return self.criterion(outputs, y)

    def objective_at(self, X, y, w, b):
        outputs = nn.functional.linear(X, w.T, b)  # the K nn.Linear layers side by side
        self.last_logits = outputs.detach()
        return self.criterion(outputs, y.unsqueeze(1).expand_as(outputs)).mean(0)


class FunctionLogisticRegression(_TorchOptimModel):
    """Parameters ``weight`` (n,) and ``bias`` (), the loss through :class:`LogisticLoss`.

    With K rates: K (weight, bias) pairs, stacked into w (n, K), b (K,) for one
    :class:`LogisticLoss` call, whose backward hands each pair its own gradient.
    """

    def _build(self, w, b):
        if self.batch_shape:
            self.weights = nn.ParameterList(nn.Parameter(w.clone()) for _ in self.lrs)
            self.biases = nn.ParameterList(nn.Parameter(b.clone()) for _ in self.lrs)
        else:
            self.weight = nn.Parameter(w)
            self.bias = nn.Parameter(b)

    def _pairs(self):
        if self.batch_shape:
            return list(zip(self.weights, self.biases, strict=True))
        return [(self.weight, self.bias)]

    def objective(self, X, y):
        if self.batch_shape:
            return self.objective_at(X, y, *self._stacked())
        return LogisticLoss.apply(X, self.weight, self.bias, y)

    def objective_at(self, X, y, w, b):
        return LogisticLoss.apply(X, w, b, y)


# --- softmax regression's twins ----------------------------------------------------------------
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


class _SoftmaxTwin(_checks.CheckedModel, nn.Module):
    """The shared half of the softmax twins: (weight, bias) as nn.Parameters, stepped by
    ``torch.optim``; ``w`` is W (n, C) and ``b`` (C,), as for :class:`SoftmaxRegression`."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        nn.Module.__init__(self)
        self._check_multiclass_args(n_features, n_classes, lr, device, dtype)
        self.rule = check_rule(optimizer)
        self.grads: dict[str, torch.Tensor] = {}
        self.last_logits: torch.Tensor | None = None
        W, b = self._initial_parameters(seed)
        self._build(W, b)
        group = {"params": [self.weight, self.bias], "lr": self.lr}
        self.optimizer = self.rule.torch_optimizer([group], self.device)

    # Each twin says how it holds W and how it computes the loss with a graph.
    def _build(self, W: torch.Tensor, b: torch.Tensor) -> None:
        raise NotImplementedError

    def _as_W(self, weight: torch.Tensor) -> torch.Tensor:
        return weight

    def objective(self, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def w(self) -> torch.Tensor:
        return self._as_W(self.weight.detach())

    @property
    def b(self) -> torch.Tensor:
        return self.bias.detach()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits(self._X(X), self.w, self.b), dim=1)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        X = self._X(X)
        y = self._y(y, X, check)
        with torch.no_grad():
            return self.objective(X, y)

    def gradients(self, X, y, *, check: bool = True) -> dict[str, torch.Tensor]:
        X = self._X(X)
        y = self._y(y, X, check)
        _require_autograd(self)
        with torch.enable_grad():
            dweight, db = torch.autograd.grad(self.objective(X, y), (self.weight, self.bias))
        return {"dw": self._as_W(dweight), "db": db}

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        """zero_grad → forward → loss → backward → step (zero_grad skipped if the rule says)."""
        X = self._X(X)
        y = self._y(y, X, check)
        _require_autograd(self)
        with torch.enable_grad():
            if self.rule.zero_grad:
                self.optimizer.zero_grad()
            loss = self.objective(X, y)
            loss.backward()
            self.optimizer.step()
        self.grads = {"dw": self._as_W(self.weight.grad), "db": self.bias.grad}
        return loss.detach()

    def set_parameters(self, w: torch.Tensor, b: torch.Tensor) -> None:
        new = {"device": self.device, "dtype": self.dtype}
        W = torch.as_tensor(w).to(**new).reshape(self.w_shape)
        with torch.no_grad():
            self._as_W(self.weight).copy_(W)
            self.bias.copy_(torch.as_tensor(b).to(**new).reshape(self.n_classes))


class AutogradSoftmaxRegression(_SoftmaxTwin):
    """The reference: ``nn.Linear(n_features, n_classes)`` + ``nn.CrossEntropyLoss`` +
    ``torch.optim``; its weight (C, n) is Wᵀ."""

    def _build(self, W, b):
        self.linear = nn.utils.skip_init(
            nn.Linear, self.n_features, self.n_classes, device=self.device, dtype=self.dtype
        )
        with torch.no_grad():
            self.linear.weight.copy_(W.T)
            self.linear.bias.copy_(b)
        self.weight, self.bias = self.linear.weight, self.linear.bias
        self.criterion = nn.CrossEntropyLoss()

    def _as_W(self, weight):
        return weight.T

    def objective(self, X, y):
        outputs = self.linear(X)
        self.last_logits = outputs.detach()
        return self.criterion(outputs, y)


class FunctionSoftmaxRegression(_SoftmaxTwin):
    """Parameters ``weight`` (n, C) and ``bias`` (C,); the loss through :class:`SoftmaxLoss`."""

    def _build(self, W, b):
        self.weight = nn.Parameter(W)
        self.bias = nn.Parameter(b)

    def objective(self, X, y):
        return SoftmaxLoss.apply(X, self.weight, self.bias, y)
