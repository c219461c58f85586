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
    """The shared half of the twins: parameters as nn.Parameters, trained by torch.optim.SGD.

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
    ) -> None:
        nn.Module.__init__(self)
        self._check_args(n_features, lr, device, dtype)
        self.grads: dict[str, torch.Tensor] = {}
        self.last_logits: torch.Tensor | None = None
        w, b = _checks.init_parameters(self.n_features, seed, self.device, self.dtype)
        self._build(w, b)
        pairs = zip(self._pairs(), self.lrs, strict=True)
        groups = [{"params": list(pair), "lr": lr} for pair, lr in pairs]
        self.optimizer = torch.optim.SGD(groups, lr=self.lrs[0])

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
        """The post's loop: zero_grad → forward → loss → backward → step. Returns the loss."""
        X = self._X(X)
        y = self._y(y, X, check)
        self._require_autograd()
        with torch.enable_grad():
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
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() turns off; "
                "the manual LogisticRegression runs there"
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
