"""Logistic and softmax regression differentiated by hand, their autograd twins, and the
update rules (SGD, momentum, Nesterov, Adam, L2 weight decay) written by hand.

All implementations share one interface (:class:`GradientDescentModel`), so one training loop
drives them, and the same ``seed`` gives all three the same initial parameters. A model is a
:class:`Kind` (the math: ``Logistic``, ``Softmax``, or one of your own) and an implementation
(:class:`HandModel`, :class:`AutogradTwin`, :class:`FunctionTwin`); ``interface.py`` lists what
each must provide.

- ``LogisticRegression`` / ``SoftmaxRegression``: hand-written forward / backward / optimize;
  no autograd inside, the update rule from :mod:`manual_models.optimizers`.
- ``AutogradLogisticRegression`` / ``AutogradSoftmaxRegression``: nn.Linear + BCEWithLogitsLoss
  or CrossEntropyLoss + torch.optim (the reference).
- ``FunctionLogisticRegression`` / ``FunctionSoftmaxRegression``: a torch.autograd.Function
  with the hand-written backward, stepped by torch.optim.
"""

import importlib

import torch

from manual_models.base import HandModel, Model
from manual_models.checks import ModelCheckFailed, check_model
from manual_models.compare import Comparison, compare, relative_error
from manual_models.interface import (
    Evaluation,
    GradientDescentModel,
    Implementation,
    Kind,
    Step,
    weigh,
)
from manual_models.logistic import (
    Logistic,
    LogisticRegression,
    bce_from_logits,
    bce_gradients,
    logits,
)
from manual_models.optimizers import RULES, HandOptimizer, Optimizer
from manual_models.softmax import (
    Softmax,
    SoftmaxRegression,
    cross_entropy_from_logits,
    softmax_gradients,
)
from manual_models.twins import (
    AutogradLogisticRegression,
    AutogradSoftmaxRegression,
    AutogradTwin,
    FunctionLogisticRegression,
    FunctionSoftmaxRegression,
    FunctionTwin,
    LogisticLoss,
    SoftmaxLoss,
    Twin,
)

__all__ = [
    "IMPLEMENTATIONS",
    "MULTICLASS",
    "RULES",
    "AutogradLogisticRegression",
    "AutogradSoftmaxRegression",
    "AutogradTwin",
    "Comparison",
    "Evaluation",
    "FunctionLogisticRegression",
    "FunctionSoftmaxRegression",
    "FunctionTwin",
    "GradientDescentModel",
    "HandModel",
    "HandOptimizer",
    "Implementation",
    "Kind",
    "Logistic",
    "LogisticLoss",
    "LogisticRegression",
    "Model",
    "ModelCheckFailed",
    "Optimizer",
    "Softmax",
    "SoftmaxLoss",
    "SoftmaxRegression",
    "Step",
    "Twin",
    "bce_from_logits",
    "bce_gradients",
    "check_model",
    "compare",
    "cross_entropy_from_logits",
    "implement",
    "load_kind",
    "logits",
    "make_model",
    "relative_error",
    "softmax_gradients",
    "weigh",
]

IMPLEMENTATIONS: dict[str, type[GradientDescentModel]] = {
    "manual": LogisticRegression,
    "autograd": AutogradLogisticRegression,
    "function": FunctionLogisticRegression,
}
MULTICLASS: dict[str, type[GradientDescentModel]] = {
    "manual": SoftmaxRegression,
    "autograd": AutogradSoftmaxRegression,
    "function": FunctionSoftmaxRegression,
}


def make_model(
    impl: str,
    n_features: int,
    lr: float = 0.01,
    *,
    n_classes: int = 2,
    kind: type[Kind] | None = None,
    device=None,
    dtype=torch.float32,
    **kwargs,
) -> GradientDescentModel:
    """Build an implementation by its short name: ``manual``, ``autograd`` or ``function``;
    logistic regression for two classes, softmax regression for more; or ``kind``, a
    :class:`Kind` of your own, built as ``kind(n_features, device=, dtype=)`` for two classes
    and ``kind(n_features, n_classes, device=, dtype=)`` for more, by hand (``manual``) or by
    autograd of its own reference loss (``autograd``). ``kwargs``: ``seed``, ``optimizer``."""
    if impl not in IMPLEMENTATIONS:
        choices = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"unknown implementation {impl!r}; choose one of {choices}")
    options = {"device": device, "dtype": dtype}
    if kind is not None:
        classes = () if n_classes == 2 else (n_classes,)
        return implement(impl, kind(n_features, *classes, **options), lr, **kwargs)
    if n_classes == 2:
        return IMPLEMENTATIONS[impl](n_features, lr, **options, **kwargs)
    return MULTICLASS[impl](n_features, n_classes, lr, **options, **kwargs)


# The autograd.Function whose backward is each built-in kind's derivation (``function``).
LOSSES: dict[type[Kind], type[torch.autograd.Function]] = {
    Logistic: LogisticLoss,
    Softmax: SoftmaxLoss,
}


def implement(impl: str, kind: Kind, lr: float = 0.01, **kwargs) -> GradientDescentModel:
    """A kind, built or weighted already, as the implementation ``impl``: its derivation
    (``manual``), autograd of its reference loss (``autograd``), or the ``autograd.Function``
    of a built-in kind (``function``). ``kwargs``: ``seed``, ``optimizer``."""
    if impl == "manual":
        return HandModel(kind, lr, **kwargs)
    if impl == "autograd":
        return AutogradTwin(kind, lr, **kwargs)
    if impl == "function" and type(kind) in LOSSES:
        return FunctionTwin(kind, LOSSES[type(kind)], lr, **kwargs)
    if impl == "function":
        raise ValueError(
            f"{type(kind).__name__} has no autograd.Function here: a kind of your own trains as "
            "manual and autograd (FunctionTwin(kind, YourLoss) takes one you write)"
        )
    raise ValueError(f"unknown implementation {impl!r}; choose one of {', '.join(IMPLEMENTATIONS)}")


def load_kind(reference: str) -> type[Kind]:
    """``package.module:Class`` → the class, a :class:`Kind` subclass importable from here;
    a ValueError in one line otherwise."""
    module_name, _, name = reference.partition(":")
    if not module_name or not name:
        raise ValueError(f"model {reference!r} must read package.module:Class")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"model {reference!r} cannot be imported: {err}") from None
    if not (isinstance(found, type) and issubclass(found, Kind)):
        raise ValueError(f"model {reference!r} is not a manual_models.Kind subclass")
    return found
