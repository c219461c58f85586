from __future__ import annotations

import numpy as np
import pytest
from sklearn.svm import LinearSVC

from experiments import DATASETS, load, split


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_is_binary_and_offline(name):
    params = {"n_samples": 500} if name in ("moons", "synthetic") else {}
    X, y = load(name, **params)
    assert X.dtype == np.float64 and X.ndim == 2 and len(X) == len(y)
    assert set(np.unique(y)) == {0, 1}
    assert DATASETS[name].description


def test_shapes_of_the_bundled_sets():
    assert load("breast_cancer")[0].shape == (569, 30)
    assert load("iris")[0].shape == (100, 4)
    assert load("wine")[0].shape == (178, 13)
    assert load("digits")[0].shape == (1797, 64)
    assert load("synthetic", n_samples=300, n_features=7)[0].shape == (300, 7)


def test_split_is_stratified_seeded_and_standardised_on_train_only():
    X, y = load("breast_cancer")
    s = split(X, y, val_fraction=0.25, seed=1)
    assert len(s.y_val) == 143 and len(s.y_train) == 426
    assert abs(s.y_train.mean() - s.y_val.mean()) < 0.01
    np.testing.assert_allclose(s.X_train.mean(axis=0), 0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(s.X_train.std(axis=0), 1, rtol=0, atol=1e-12)
    assert np.abs(s.X_val.mean(axis=0)).max() > 1e-3  # validation rows were not used
    again = split(X, y, val_fraction=0.25, seed=1)
    np.testing.assert_array_equal(s.X_val, again.X_val)
    assert not np.array_equal(s.X_val, split(X, y, val_fraction=0.25, seed=2).X_val)


def test_separability_of_the_named_pairs():
    """breast_cancer (standardised) is separable; iris versicolor vs virginica is not."""

    def separable(X, y):
        X = (X - X.mean(0)) / X.std(0)
        return LinearSVC(C=1e6, max_iter=200_000, tol=1e-8).fit(X, y).score(X, y) == 1.0

    assert separable(*load("breast_cancer"))
    assert not separable(*load("iris"))


def test_bad_names_and_parameters():
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; choose one of breast_cancer"):
        load("mnist")
    with pytest.raises(ValueError, match="allowed: n_samples, noise, seed"):
        load("moons", n_features=3)
    with pytest.raises(ValueError, match="allowed: classes"):
        load("iris", n_samples=3)
