"""Logistic regression differentiated by hand, and its two autograd twins.

All three share one interface (:class:`GradientDescentModel`), so one training loop drives
them, and the same ``seed`` gives all three the same initial parameters:

- ``LogisticRegression``: the hand-written forward / backward / optimize; no autograd inside.
- ``AutogradLogisticRegression``: nn.Linear + BCEWithLogitsLoss + torch.optim.SGD (the reference).
- ``FunctionLogisticRegression``: a torch.autograd.Function with the hand-written backward,
  stepped by torch.optim.SGD.
"""

from manual_models.compare import Comparison, compare, relative_error
from manual_models.interface import GradientDescentModel
from manual_models.logistic import LogisticRegression, bce_from_logits, bce_gradients, logits
from manual_models.twins import AutogradLogisticRegression, FunctionLogisticRegression, LogisticLoss

__all__ = [
    "IMPLEMENTATIONS",
    "AutogradLogisticRegression",
    "Comparison",
    "FunctionLogisticRegression",
    "GradientDescentModel",
    "LogisticLoss",
    "LogisticRegression",
    "bce_from_logits",
    "bce_gradients",
    "compare",
    "logits",
    "make_model",
    "relative_error",
]

IMPLEMENTATIONS: dict[str, type[GradientDescentModel]] = {
    "manual": LogisticRegression,
    "autograd": AutogradLogisticRegression,
    "function": FunctionLogisticRegression,
}


def make_model(impl: str, n_features: int, lr: float = 0.01, **kwargs) -> GradientDescentModel:
    """Build an implementation by its short name: ``manual``, ``autograd`` or ``function``."""
    if impl not in IMPLEMENTATIONS:
        choices = ", ".join(IMPLEMENTATIONS)
        raise ValueError(f"unknown implementation {impl!r}; choose one of {choices}")
    return IMPLEMENTATIONS[impl](n_features, lr, **kwargs)
