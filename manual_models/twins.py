"""The autograd twins of the hand-differentiated models: the same interface, the same seeded
start, the gradient from PyTorch. Each reads like d2l's concise version beside its scratch one.

- ``Autograd*`` is the reference: ``nn.Linear`` + ``nn.BCEWithLogitsLoss`` (two classes) or
  ``nn.CrossEntropyLoss`` (C classes) + ``torch.optim``, trained by the post's loop
  ``zero_grad → forward → loss → backward → step``.
- ``Function*`` is what "overriding backward" means in PyTorch: the loss is a
  ``torch.autograd.Function`` (:class:`LogisticLoss`, :class:`SoftmaxLoss`) whose ``backward``
  is the hand derivation, and ``torch.optim`` applies it.

Both are one :class:`Twin`: ``nn.Linear`` trained by ``torch.optim`` through the post's loop,
given the loop's contract by a few lines of adapter. The two differ in one method, the loss;
the kind (``Logistic``, ``Softmax``, or a kind of your own) brings the labels, the start, the
link and the criterion. Nothing of a twin comes from the hand-written model.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from manual_models.base import Model
from manual_models.interface import Evaluation, Kind, Step, weigh
from manual_models.logistic import Logistic, bce_from_logits, bce_gradients, column, logits
from manual_models.optimizers import Optimizer
from manual_models.softmax import (
    Softmax,
    cross_entropy_from_logits,
    one_hot,
    softmax_gradients,
)
from manual_models.softmax import logits as class_logits


class LogisticLoss(torch.autograd.Function):
    """J(X, w, b, y) = mean(softplus(z) − y z), z = X w + b, with the hand-written backward.

    backward (g = ∂output/∂J, usually 1):
        ∂J/∂w = g Xᵀ(ŷ − y)/m     ∂J/∂b = g mean(ŷ − y)
        ∂J/∂X = g (ŷ − y) wᵀ/m    ∂J/∂y = −g z/m
    With K columns (w (n, K), b (K,)) J is (K,), one loss per column, and g is (K,): the
    formulas hold column by column, and X and y, shared by all columns, sum their K parts.
    The backward is itself written in differentiable ops, so double backward
    (``create_graph=True``, ``gradgradcheck``) works: there it recomputes z from the inputs.
    ``weights`` (optional, no gradient): each sample's term times rᵢ (``Kind.weighted``).
    """

    @staticmethod
    def forward(ctx, X, w, b, y, weights=None):
        z = logits(X, w, b)
        ctx.save_for_backward(X, w, b, y)
        ctx.z, ctx.weights = z, weights
        return bce_from_logits(z, y, weights=weights)

    @staticmethod
    def backward(ctx, grad_output):
        X, w, b, y = ctx.saved_tensors
        # With create_graph=True grad mode is on: rebuild z so the graph reaches w and b.
        z = logits(X, w, b) if torch.is_grad_enabled() else ctx.z
        y_hat = torch.sigmoid(z)
        need_X, need_w, need_b, need_y = ctx.needs_input_grad[:4]
        r = ctx.weights
        dX = dw = db = dy = None
        if need_w or need_b:
            grads = bce_gradients(X, y_hat, y, r)
            dw = grad_output * grads["dw"] if need_w else None
            db = grad_output * grads["db"] if need_b else None
        m = X.shape[0]
        if need_X:
            residual = weigh(y_hat - column(y, z), r) * grad_output
            dX = (torch.outer(residual, w) if z.ndim == 1 else residual @ w.T) / m
        if need_y:
            dy = -weigh(grad_output * z if z.ndim == 1 else z @ grad_output, r) / m
        return (dX, dw, db, dy, None)[: len(ctx.needs_input_grad)]


class SoftmaxLoss(torch.autograd.Function):
    """J(X, W, b, y) = mean(log Σ_k e^{Z_k} − Z_y), Z = X W + b, with the hand-written backward.

    backward (g = ∂output/∂J):
        ∂J/∂W = g Xᵀ(P − Y)/m     ∂J/∂b = g mean(P − Y)     ∂J/∂X = g (P − Y) Wᵀ/m
    With K models (W (n, C, K), b (C, K)) J and g are (K,), and the formulas hold model by
    model. y holds class indices: no gradient. The backward is written in differentiable ops, so
    double backward works (it rebuilds Z from the inputs when grad mode is on). ``weights``
    (optional, no gradient): each sample's term times rᵢ.
    """

    @staticmethod
    def forward(ctx, X, W, b, y, weights=None):
        Z = class_logits(X, W, b)
        ctx.save_for_backward(X, W, b, y)
        ctx.Z, ctx.weights = Z, weights
        return cross_entropy_from_logits(Z, y, weights)

    @staticmethod
    def backward(ctx, grad_output):
        X, W, b, y = ctx.saved_tensors
        Z = class_logits(X, W, b) if torch.is_grad_enabled() else ctx.Z
        P = torch.softmax(Z, dim=1)
        need_X, need_W, need_b = ctx.needs_input_grad[:3]
        dX = dW = db = None
        if need_W or need_b:
            grads = softmax_gradients(X, P, y, ctx.weights)
            dW = grad_output * grads["dw"] if need_W else None
            db = grad_output * grads["db"] if need_b else None
        if need_X:  # summed over the classes (and the K models, for W (n, C, K))
            residual = (grad_output * weigh(P - one_hot(y, P), ctx.weights)).flatten(1)
            dX = residual @ W.flatten(1).T / X.shape[0]
        return (dX, dW, db, None, None)[: len(ctx.needs_input_grad)]


class Twin(Model, nn.Module):
    """d2l's concise model with the loop's contract: a module's parameters, a loss,
    ``torch.optim``, trained by the post's loop. A twin says where its parameters live
    (:meth:`hold`, :meth:`as_kind`: by default as the kind shapes them) and what its loss is
    (:meth:`objective` on the own parameters, :meth:`loss_graph_at` on any); ``params`` are
    live views of them in the kind's shapes, without their graph."""

    def __init__(
        self, kind: Kind, lr: float = 0.01, *, seed: int = 0, optimizer: Optimizer | None = None
    ) -> None:
        nn.Module.__init__(self)
        Model.__init__(self, kind, lr, optimizer)
        self.leaves = self.hold(*kind.initial_parameters(seed))
        # Live views: the optimizer updates the parameters in place, so params follow, and
        # writing them writes the parameters.
        self.params = kind.named(view.detach() for view in self.as_kind(*self.leaves))
        self.optimizer = self.rule.torch_optimizer(self.leaves, kind.decayed, self.lr, self.device)

    def hold(self, *params: torch.Tensor) -> tuple[nn.Parameter, ...]:
        """Make the module's parameters, started at the kind's; return them. Here each as
        the kind shapes it."""
        self.held = nn.ParameterList(nn.Parameter(p) for p in params)
        return tuple(self.held)

    def as_kind(self, *leaves) -> tuple[torch.Tensor, ...]:
        """The module's parameters (or their gradients) as views in the kind's shapes."""
        return leaves

    @abstractmethod
    def objective(self, X, y) -> tuple[torch.Tensor, torch.Tensor]:
        """The post's ``outputs = model(inputs); loss = criterion(outputs, labels)``: the loss
        with its graph, and the logits."""

    @abstractmethod
    def loss_graph_at(self, X, y, *params) -> tuple[torch.Tensor, torch.Tensor]:
        """The same loss at any parameters, with its graph (one per trailing column), and z."""

    def train_step(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> Step:
        """The post's loop: zero_grad → forward → loss → backward → step. (Without zero_grad
        when the rule says so: then ``.grad`` sums every step's gradient.)"""
        X, y = self.kind.inputs(X, y, check=check)
        self._require_autograd()
        with torch.enable_grad():
            if self.rule.zero_grad:
                self.optimizer.zero_grad()
            loss, outputs = self.objective(X, y)
            loss.backward()
            self.optimizer.step()
        self.grads = self._by_name(self.as_kind(*(p.grad for p in self.leaves)))
        return Step(loss.detach(), outputs.detach())

    def loss(self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True) -> torch.Tensor:
        X, y = self.kind.inputs(X, y, check=check)
        with torch.no_grad():
            return self.objective(X, y)[0]

    def gradients(
        self, X: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """The gradient by autograd at the current parameters; ``.grad`` is left alone."""
        X, y = self.kind.inputs(X, y, check=check)
        self._require_autograd()
        with torch.enable_grad():
            grads = torch.autograd.grad(self.objective(X, y)[0], self.leaves)
        return self._by_name(self.as_kind(*grads))

    def loss_at(self, X, y, *params) -> torch.Tensor:
        with torch.no_grad():
            return self.loss_graph_at(X, y, *params)[0]

    def evaluate_at(self, X, y, *params) -> Evaluation:
        """The loss, its gradient by autograd, and the logits at any parameters (one loss, or
        one per trailing column: the gradient of their sum is each column's own)."""
        self._require_autograd()
        params = tuple(p.detach().requires_grad_() for p in params)
        with torch.enable_grad():
            loss, z = self.loss_graph_at(X, y, *params)
            grads = torch.autograd.grad(loss.sum(), params)
        return Evaluation(loss.detach(), self._by_name(grads), z.detach())

    def _by_name(self, grads) -> dict[str, torch.Tensor]:
        return dict(zip(self.kind.gradient_names, grads, strict=True))

    def _require_autograd(self) -> None:
        if torch.is_inference_mode_enabled():
            raise RuntimeError(
                f"{type(self).__name__} needs autograd, which torch.inference_mode() turns off; "
                "the manual models (LogisticRegression, SoftmaxRegression) run there"
            )


class AutogradTwin(Twin):
    """The reference. The textbook model for a kind that is one ``nn.Linear`` and a loss (its
    :meth:`~Kind.criterion`): ``nn.Linear`` + the kind's criterion, the post's loop. Any other
    kind (a network of your own): its own parameters, and autograd of its own forward
    (:meth:`~Kind.reference_loss_at`), stepped by ``torch.optim``."""

    def __init__(self, kind: Kind, lr: float = 0.01, **kwargs) -> None:
        self.linear = None
        super().__init__(kind, lr, **kwargs)
        self.criterion = kind.criterion()

    def hold(self, *params):
        if self.kind.criterion() is None:
            return super().hold(*params)
        # skip_init: the parameters come from the shared seed, not from torch's global RNG.
        outputs = params[1].numel()  # b: one per output
        self.linear = nn.utils.skip_init(
            nn.Linear, self.n_features, outputs, device=self.device, dtype=self.dtype
        )
        views = self.as_kind(self.linear.weight, self.linear.bias)
        with torch.no_grad():
            for view, start in zip(views, params, strict=True):
                view.copy_(start)
        return self.linear.weight, self.linear.bias

    def as_kind(self, *leaves):
        return leaves if self.linear is None else self.kind.from_linear(*leaves)

    def objective(self, X, y):
        if self.linear is None:
            return self.loss_graph_at(X, y, *self.leaves)
        outputs = self.linear(X).squeeze(-1)  # the logits: (m,) for one output, (m, C) for C
        return self.criterion(outputs, y), outputs

    def loss_graph_at(self, X, y, *params):
        return self.kind.reference_loss_at(X, y, *params)


class FunctionTwin(Twin):
    """The same, with the loss replaced by an ``autograd.Function`` whose backward is the
    hand derivation (``Loss.apply(X, *params, y)``, and the kind's weights after y when it has
    them); its parameters are held in the kind's shapes, as the Function takes them (no view
    between them and the loss)."""

    def __init__(
        self, kind: Kind, Loss: type[torch.autograd.Function], lr: float = 0.01, **kwargs
    ) -> None:
        super().__init__(kind, lr, **kwargs)
        self.Loss = Loss

    def objective(self, X, y):
        return self.loss_graph_at(X, y, *self.leaves)

    def loss_graph_at(self, X, y, *params):
        with torch.no_grad():  # for the accuracy: the Function keeps its own logits inside
            z = self.kind.logits_at(X, *params)
        weights = () if self.kind.weights is None else (self.kind.weights,)
        return self.Loss.apply(X, *params, y, *weights), z


class AutogradLogisticRegression(AutogradTwin):
    """The reference: ``nn.Linear(n_features, 1)`` + ``nn.BCEWithLogitsLoss`` + ``optim.SGD``."""

    def __init__(
        self, n_features: int, lr: float = 0.01, *, device=None, dtype=torch.float32, **kw
    ):
        super().__init__(Logistic(n_features, device=device, dtype=dtype), lr, **kw)


class FunctionLogisticRegression(FunctionTwin):
    """``nn.Linear(n_features, 1)``; the loss through :class:`LogisticLoss`."""

    def __init__(
        self, n_features: int, lr: float = 0.01, *, device=None, dtype=torch.float32, **kw
    ):
        super().__init__(Logistic(n_features, device=device, dtype=dtype), LogisticLoss, lr, **kw)


class AutogradSoftmaxRegression(AutogradTwin):
    """The reference: ``nn.Linear(n_features, n_classes)`` + ``nn.CrossEntropyLoss`` +
    ``torch.optim``; its weight (C, n) is Wᵀ."""

    def __init__(
        self, n_features: int, n_classes: int, lr: float = 0.01, *, device=None,
        dtype=torch.float32, **kw,
    ) -> None:  # fmt: skip
        super().__init__(Softmax(n_features, n_classes, device=device, dtype=dtype), lr, **kw)


class FunctionSoftmaxRegression(FunctionTwin):
    """``nn.Linear(n_features, n_classes)``; the loss through :class:`SoftmaxLoss`."""

    def __init__(
        self, n_features: int, n_classes: int, lr: float = 0.01, *, device=None,
        dtype=torch.float32, **kw,
    ) -> None:  # fmt: skip
        kind = Softmax(n_features, n_classes, device=device, dtype=dtype)
        super().__init__(kind, SoftmaxLoss, lr, **kw)
