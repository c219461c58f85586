"""scikit-learn's bundled and generated datasets, all offline: binary problems, and with
``classes=all`` the multiclass ones (iris, wine, digits), which softmax regression trains on.

Each entry returns ``(X, y)`` as float64 / int64 NumPy arrays, y in {0, …, C − 1}.
:func:`split` makes the seeded, stratified train/validation split and standardises both
halves with the training statistics only, so nothing about the validation rows leaks into
training.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn import datasets as skd
from sklearn.model_selection import train_test_split


def _breast_cancer():
    X, y = skd.load_breast_cancer(return_X_y=True)
    return X, y


CLASSES = ("binary", "all")


def _check_classes(classes: str) -> None:
    if classes not in CLASSES:
        raise ValueError(f"classes must be one of {', '.join(CLASSES)}, got {classes!r}")


def _iris(classes: str = "binary"):
    _check_classes(classes)
    X, y = skd.load_iris(return_X_y=True)
    if classes == "all":
        return X, y
    keep = y > 0  # versicolor (1) vs virginica (2): the pair no line separates
    return X[keep], y[keep] - 1


def _wine(classes: str = "binary"):
    _check_classes(classes)
    X, y = skd.load_wine(return_X_y=True)
    return X, y if classes == "all" else (y == 0).astype(np.int64)


def _digits(classes: str = "binary"):
    _check_classes(classes)
    X, y = skd.load_digits(return_X_y=True)
    return X, y if classes == "all" else (y >= 5).astype(np.int64)


def _moons(n_samples: int = 1000, noise: float = 0.2, seed: int = 0):
    return skd.make_moons(n_samples=n_samples, noise=noise, random_state=seed)


def _synthetic(
    n_samples: int = 10_000,
    n_features: int = 20,
    n_informative: int = 10,
    class_sep: float = 1.0,
    flip_y: float = 0.01,
    seed: int = 0,
):
    return skd.make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=min(n_informative, n_features),
        n_redundant=0,
        class_sep=class_sep,
        flip_y=flip_y,
        random_state=seed,
    )


@dataclass(frozen=True)
class DatasetSpec:
    loader: Callable[..., tuple[np.ndarray, np.ndarray]]
    description: str

    @property
    def params(self) -> dict[str, object]:
        """The loader's parameters and their defaults (empty for the fixed datasets)."""
        signature = inspect.signature(self.loader)
        return {name: p.default for name, p in signature.parameters.items()}


DATASETS: dict[str, DatasetSpec] = {
    "breast_cancer": DatasetSpec(
        _breast_cancer,
        "569 × 30 tumour measurements, malignant vs benign; linearly separable once standardised",
    ),
    "iris": DatasetSpec(
        _iris,
        "100 × 4, versicolor vs virginica: the non-separable iris pair; classes=all: 150 × 4, "
        "3 species",
    ),
    "wine": DatasetSpec(
        _wine,
        "178 × 13 chemical analyses, cultivar 0 vs the other two; classes=all: 3 cultivars",
    ),
    "digits": DatasetSpec(
        _digits, "1797 × 64 8×8 images, digits 0–4 vs 5–9; classes=all: the 10 digits"
    ),
    "moons": DatasetSpec(_moons, "make_moons: two interleaved half-circles (n_samples, noise)"),
    "synthetic": DatasetSpec(
        _synthetic, "make_classification (n_samples, n_features, n_informative, class_sep, ...)"
    ),
}


def load(name: str, **params) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)``: X float64 of shape (n_samples, n_features), y int64 in {0, …, C − 1}."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    spec = DATASETS[name]
    unknown = sorted(set(params) - set(spec.params))
    if unknown:
        allowed = ", ".join(spec.params) or "none"
        raise ValueError(f"dataset {name!r} takes no parameter {unknown[0]!r}; allowed: {allowed}")
    X, y = spec.loader(**params)
    return np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.int64)


@dataclass(frozen=True)
class Split:
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    mean: np.ndarray
    scale: np.ndarray


def split(X: np.ndarray, y: np.ndarray, *, val_fraction: float = 0.25, seed: int = 0) -> Split:
    """Stratified, seeded split; both halves standardised with the training mean and std."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}")
    X_train, X_val, y_train, y_val = train_test_split(
        X, y, test_size=val_fraction, stratify=y, random_state=seed
    )
    mean = X_train.mean(axis=0)
    scale = X_train.std(axis=0)
    scale[scale == 0] = 1.0  # a constant training column stays 0 instead of becoming NaN
    return Split((X_train - mean) / scale, y_train, (X_val - mean) / scale, y_val, mean, scale)
