"""The hand-differentiated models as a scikit-learn classifier, for ``Pipeline``,
``cross_val_score`` and ``GridSearchCV``.

``ManualLogisticRegression(impl="manual")`` fits by full-batch gradient descent with the
gradient derived by hand; ``impl="autograd"`` and ``"function"`` fit the same objective from the
same seeded start with autograd's gradient or the ``autograd.Function``. Two classes are
logistic regression, more are softmax regression; labels of any type are mapped to
``classes_``. The objective, with λ = ``weight_decay`` and sample weights s (1 without them):

    J(w, b) = Σᵢ sᵢ ℓᵢ(w, b) / Σᵢ sᵢ + (λ/2)‖w‖²

which is scikit-learn's ``LogisticRegression`` objective with C = 1/(λ Σᵢ sᵢ) (C = 1/(λm)
unweighted): both reach the same minimiser when λ > 0. With λ = 0 on linearly separable data
there is none, and the fit is where ``steps`` steps of gradient descent got to.

The fitted state is numpy (``coef_``, ``intercept_``), so a model fitted on a GPU pickles and
predicts on a machine without one; predicting is one product in numpy, no torch.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit, log_expit, log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from manual_models import implement
from manual_models.logistic import Logistic
from manual_models.optimizers import Optimizer
from manual_models.softmax import Softmax
from manual_models.validation import DTYPES, check_count, check_lr, check_seed

IMPLS = ("manual", "autograd", "function")


class ManualLogisticRegression(ClassifierMixin, BaseEstimator):
    """Logistic (two classes) or softmax regression (more), fitted by ``steps`` full-batch
    steps of the update rule ``rule`` at learning rate ``lr``, its gradient from ``impl``.

    Parameters are plain values (strings for ``impl``, ``rule``, ``dtype`` and ``device``),
    checked when ``fit`` runs, as scikit-learn's own estimators do. ``seed`` draws the start
    (``nn.Linear``'s, the same in every implementation). Attributes after ``fit``: ``classes_``,
    ``coef_`` (1, n) or (C, n), ``intercept_`` (1,) or (C,), ``n_iter_`` (= ``steps``),
    ``n_features_in_`` and, for a DataFrame, ``feature_names_in_``.
    """

    def __init__(
        self,
        impl: str = "manual",
        *,
        rule: str = "sgd",
        steps: int = 1000,
        lr: float = 0.1,
        weight_decay: float = 0.0,
        dtype: str = "float64",
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        self.impl = impl
        self.rule = rule
        self.steps = steps
        self.lr = lr
        self.weight_decay = weight_decay
        self.dtype = dtype
        self.device = device
        self.seed = seed

    def fit(self, X, y, sample_weight=None) -> ManualLogisticRegression:
        """Gradient descent from the seeded start; ``sample_weight`` weighs each row's loss as
        repeating it that many times would."""
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"this classifier needs samples of at least 2 classes; y has 1 class: "
                             f"{self.classes_[0]!r}")  # fmt: skip
        sample_weight = _check_sample_weight(sample_weight, X, dtype=np.float64)
        model = self._model(X.shape[1], len(self.classes_), sample_weight)
        Xt = torch.tensor(X, dtype=model.dtype, device=model.device)  # a copy: X may be read-only
        yt = torch.as_tensor(codes, device=model.device)
        if len(self.classes_) == 2:
            yt = yt.to(model.dtype)
        for _ in range(plain(self.steps)):
            model.train_step(Xt, yt, check=False)
        w, b = (t.detach().cpu().double().numpy() for t in (model.w, model.b))
        self.coef_ = w.reshape(1, -1) if w.ndim == 1 else w.T.copy()
        self.intercept_ = b.reshape(-1)
        self.n_iter_ = plain(self.steps)
        return self

    def decision_function(self, X) -> np.ndarray:
        """The logits: z = X w + b (n,) for two classes, Z = X Wᵀ + b (n, C) for more."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        scores = X.astype(np.float64, copy=False) @ self.coef_.T + self.intercept_
        return scores[:, 0] if scores.shape[1] == 1 else scores

    def predict(self, X) -> np.ndarray:
        scores = self.decision_function(X)
        index = (scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(1)
        return self.classes_[index]

    def predict_proba(self, X) -> np.ndarray:
        """σ(z) for two classes (columns 1 − σ, σ), softmax(Z) for more: the models' link."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            p = expit(scores)
            return np.column_stack([1 - p, p])
        return softmax(scores, axis=1)

    def predict_log_proba(self, X) -> np.ndarray:
        """log σ(±z) and log softmax(Z), computed as such (no log of a rounded 0)."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return np.column_stack([log_expit(-scores), log_expit(scores)])
        return log_softmax(scores, axis=1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags

    def _model(self, n_features: int, n_classes: int, sample_weight: np.ndarray):
        """The implementation ``impl`` of the kind for ``n_classes``, its loss weighted by
        ``sample_weight`` (ones weigh nothing: the unweighted model, to the bit)."""
        if self.impl not in IMPLS:
            raise ValueError(f"unknown impl {self.impl!r}; choose one of {', '.join(IMPLS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        check_count("steps", plain(self.steps))
        rule = Optimizer(self.rule, weight_decay=plain(self.weight_decay))  # checks both
        lr, seed = check_lr(plain(self.lr)), check_seed(plain(self.seed))
        options = {"device": self.device, "dtype": DTYPES[self.dtype]}
        kind = (
            Logistic(n_features, **options)
            if n_classes == 2
            else Softmax(n_features, n_classes, **options)
        )
        if np.any(sample_weight != 1):
            kind = kind.weighted(sample_weight)
        return implement(self.impl, kind, lr, seed=seed, optimizer=rule)


def plain(value):
    """A numpy scalar (a grid search may pass one) as the Python number it holds."""
    return value.item() if isinstance(value, np.generic) else value


__all__ = ["IMPLS", "ManualLogisticRegression"]
