"""The contract, both sides of it: what the training loop may use of a model
(:class:`GradientDescentModel`), and what whoever adds a model fills in (:class:`Kind` for a new
kind of model, :class:`Implementation` for a new way to compute its gradient).

How to add a model (docs/design.md says it with an example):

1. A kind is the math: subclass :class:`Kind`, name its parameters (``parameter_names``) and
   write its abstract methods (labels, the seeded start, the link, the logits, the loss, the
   gradient by hand, accuracy, the size of the gradient's terms). The reference is autograd
   of its own loss, or of ``reference_loss_at`` where it writes one (the built-in kinds do).
2. ``HandModel(kind, lr)`` trains it with the gradient you derived, ``AutogradTwin(kind, lr)``
   with autograd's, ``FunctionTwin(kind, Loss, lr)`` through an ``autograd.Function``. All three
   satisfy :class:`GradientDescentModel`, so the loop, K learning rates in one pass
   (``experiments.lr_batch``) and the per-step gradient check take them as they are.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Mapping
from functools import cached_property
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from manual_models.optimizers import Optimizer
from manual_models.validation import check_count, check_dtype, check_X, resolve_device


class Evaluation(NamedTuple):
    """The loss, its gradient by name (``{"dw", "db"}``: "d" and each parameter's name) and the
    logits, at one set of parameters."""

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

    ``params`` maps each parameter's name to its current value, a plain tensor (no graph), in
    the kind's order (:attr:`Kind.parameter_names`): w (n_features,) and b () for logistic
    regression, W (n_features, C) and b (C,) for softmax regression, W1, b1, W2, b2 for a
    two-layer network. ``grads`` holds "d" + each name in the same shapes, from the last step;
    with
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
    params: dict[str, torch.Tensor]

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

    def set_parameters(self, *params: torch.Tensor) -> None: ...


def weigh(terms: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Each sample's terms (dim 0) times its weight; as they are without weights."""
    return terms if weights is None else terms * weights.view(-1, *(1,) * (terms.ndim - 1))


class Kind(ABC):
    """A kind of model: its labels, its seeded start, and its math as functions of the
    parameters. Subclass it and write every abstract method; nothing else is asked.

    Every function takes the parameters as arguments after the data, in the order of
    :attr:`parameter_names` (``loss_at(X, y, w, b)`` here, ``loss_at(X, y, W1, b1, W2, b2)``
    for a two-layer network), and reduces over the samples (dim 0) only, so each parameter
    may carry a trailing axis of K models side by side (w (n, K), b (K,) for a kind whose own
    w is (n,)): each column is then exactly the model it would be alone. That is all K
    learning rates in one pass needs of a kind.
    """

    # The parameters' names, in the order every function takes them; the gradient of each is
    # "d" + its name. ``decays``: those L2 weight decay applies to (the weights, not biases).
    parameter_names: tuple[str, ...] = ("w", "b")
    decays: tuple[str, ...] = ("w",)
    n_classes: int = 2
    # rᵢ = m sᵢ / Σ s, per sample (mean 1), or None: set by :meth:`weighted`. A kind's math
    # multiplies each sample's term by it (:func:`weigh`) before it takes the mean.
    weights: torch.Tensor | None = None
    weighs_samples = False  # a kind that does so says it: a weighted kind that did not would lie

    def __init__(
        self,
        n_features: int,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.n_features = check_count("n_features", n_features)
        self.device = resolve_device(device)
        self.dtype = check_dtype(dtype)

    # --- what a kind writes --------------------------------------------------------------------
    @abstractmethod
    def labels(self, y: object, n_samples: int, *, check: bool = True) -> torch.Tensor:
        """y checked (its values only with ``check``: reading them syncs a GPU) and cast."""

    @abstractmethod
    def initial_parameters(self, seed: int) -> tuple[torch.Tensor, ...]:
        """The parameters in :attr:`parameter_names`' order, drawn from ``seed`` alone, the
        same on every device and in every implementation
        (``manual_models.initialisation.init_linear``: nn.Linear's draw)."""

    @abstractmethod
    def link(self, z: torch.Tensor) -> torch.Tensor:
        """The prediction from the logits: σ(z), softmax(Z), …"""

    @abstractmethod
    def logits_at(self, X: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        """z at the parameters (w, b here)."""

    @abstractmethod
    def loss_at(self, X, y, *params) -> torch.Tensor:
        """J at the parameters, as written by hand: one loss, or one per trailing column."""

    @abstractmethod
    def gradients_at(self, X, y, *params) -> Evaluation:
        """J, its gradient derived by hand ({"dw", "db"}: "d" + each name), and z, at the
        parameters, from one pass."""

    @abstractmethod
    def accuracy(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The fraction predicted right from the logits (one per trailing column)."""

    @abstractmethod
    def summands_at(self, X, y, z, *params) -> dict[str, torch.Tensor]:
        """The gradient's sums taken over absolute values, by name as the gradient: what a
        correct gradient's rounding is relative to, however much its terms cancel. ``z``: the
        logits at the parameters, computed already (a linear kind needs no more; a network
        needs its weights to carry the terms back)."""

    # --- the reference: autograd of the kind's own forward, unless it says more -------------
    def reference_loss_at(self, X, y, *params) -> tuple[torch.Tensor, torch.Tensor]:
        """(J, z) at the parameters, one loss per trailing column, for autograd to
        differentiate: the kind's own ``loss_at``, so a kind of your own writes no reference.
        The built-in kinds write theirs through torch's own functions (``F.linear`` and the
        textbook criterion), so the reference shares no line with the derivation."""
        return self.loss_at(X, y, *params), self.logits_at(X, *params)

    def criterion(self) -> nn.Module | None:
        """The textbook loss module on ``nn.Linear``'s outputs (the post's ``criterion``), for
        a kind that is one ``nn.Linear`` and a loss: then the autograd twin is the post's
        model. None: the twin holds the kind's own parameters and differentiates
        :meth:`reference_loss_at`."""
        return None

    def from_linear(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The parameters as views of ``nn.Linear(n_features, n_outputs)``'s weight and bias
        (with :meth:`criterion`)."""
        raise NotImplementedError(f"{type(self).__name__} is not one nn.Linear")

    # --- curvature, by hand where a kind derives it (the built-in kinds do) -------------------
    def hessian_product(self, X, y, w, b, weight_decay: float = 0.0):
        """v ↦ H v, H the Hessian of J + (λ/2)‖w‖² at the parameters (here w, b), v a tuple in
        their shapes (v_w, v_b), without forming
        H (a trailing axis of K models too): what depends on θ alone (the logits) computed
        once, for the many products an eigenvalue estimate takes."""
        raise NotImplementedError(f"{type(self).__name__} has no Hessian-vector product by hand")

    def hvp_at(self, X, y, w, b, v_w, v_b, weight_decay: float = 0.0):
        """(H v)_w, (H v)_b: one product (:meth:`hessian_product`)."""
        return self.hessian_product(X, y, w, b, weight_decay)((v_w, v_b))

    def hessian_at(self, X, y, w, b, weight_decay: float = 0.0) -> torch.Tensor:
        """∇²(J + (λ/2)‖w‖²) at one model's (w, b), over θ = (w flattened, b), for small
        problems (and to check :meth:`hvp_at`)."""
        raise NotImplementedError(f"{type(self).__name__} has no Hessian by hand")

    def hessian_trace_at(self, X, y, w, b, weight_decay: float = 0.0) -> torch.Tensor:
        """tr ∇²(J + (λ/2)‖w‖²) (one per trailing column)."""
        raise NotImplementedError(f"{type(self).__name__} has no Hessian trace by hand")

    # --- written once from the above -----------------------------------------------------------
    def weighted(self, sample_weight: object) -> Kind:
        """The same kind with the loss Σᵢ sᵢ ℓᵢ / Σᵢ sᵢ: what repeating row i sᵢ times would
        give (scikit-learn's ``sample_weight``), for data of exactly len(sample_weight) rows.

        Stored as rᵢ = m sᵢ / Σ s, so the mean of rᵢ ℓᵢ is that loss, and every mean the kind
        takes (loss, gradient, curvature) is weighted the same way by multiplying one term."""
        if not self.weighs_samples:
            raise NotImplementedError(
                f"{type(self).__name__} does not weigh its samples: multiply each sample's "
                "term by self.weights (manual_models.weigh) before every mean, then set "
                "weighs_samples = True"
            )
        s = torch.as_tensor(sample_weight, dtype=self.dtype, device=self.device)
        if s.ndim != 1 or s.numel() == 0:
            raise ValueError(f"sample_weight must be 1-D and not empty, got shape {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or not bool(s.sum() > 0):
            raise ValueError("sample_weight must be finite and non-negative, with a positive sum")
        kind = copy.copy(self)
        kind.weights = s * (s.numel() / s.sum())
        return kind

    @cached_property
    def gradient_names(self) -> tuple[str, ...]:
        """ "d" + each parameter's name, in order: the keys of ``gradients_at``'s grads."""
        return tuple(f"d{name}" for name in self.parameter_names)

    @cached_property
    def decayed(self) -> tuple[bool, ...]:
        """Per parameter, in order: whether weight decay applies to it."""
        return tuple(name in self.decays for name in self.parameter_names)

    def initial(self, seed: int) -> dict[str, torch.Tensor]:
        """:meth:`initial_parameters` by name."""
        return self.named(self.initial_parameters(seed))

    def named(self, params) -> dict[str, torch.Tensor]:
        """Parameters in the kind's order, by name (a mapping: checked for the kind's names)."""
        names = self.parameter_names
        if isinstance(params, Mapping):
            if set(params) != set(names):
                raise ValueError(f"parameters {sorted(params)}; {type(self).__name__} has {names}")
            return {name: params[name] for name in names}
        params = tuple(params)
        if len(params) != len(names):
            raise ValueError(
                f"{type(self).__name__} has {len(names)} parameters {names}, got {len(params)}"
            )
        return dict(zip(names, params, strict=True))

    def features(self, X: object) -> torch.Tensor:
        """X checked: a 2-D tensor of n_features columns on the kind's device and dtype."""
        return check_X(X, self.n_features, self.device, self.dtype)

    def inputs(
        self, X: object, y: object, *, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """X and y checked together: y's length is X's rows."""
        X = self.features(X)
        if self.weights is not None and self.weights.shape[0] != X.shape[0]:
            raise ValueError(
                f"this kind weighs {self.weights.shape[0]} samples; X has {X.shape[0]} rows"
            )
        return X, self.labels(y, X.shape[0], check=check)

    def __repr__(self) -> str:
        classes = "" if self.n_classes == 2 else f", n_classes={self.n_classes}"
        return f"{type(self).__name__}(n_features={self.n_features}{classes})"


@runtime_checkable
class Implementation(GradientDescentModel, Protocol):
    """A model as K learning rates in one pass and the per-step check use it: the loop's
    contract, the kind it trains, its update rule, and where its loss and gradient at any
    parameters come from (the derivation, an ``autograd.Function``, or autograd)."""

    kind: Kind
    rule: Optimizer

    def loss_at(self, X, y, *params) -> torch.Tensor: ...

    def evaluate_at(self, X, y, *params) -> Evaluation: ...
