from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.engine import History
from experiments.tracking import digest, thin, trajectory_table


@pytest.mark.parametrize(("n", "k"), [(1, 200), (200, 200), (201, 200), (1001, 200), (10**6, 7)])
def test_thinning_keeps_first_and_last_and_at_most_k(n, k):
    kept = thin(n, k)
    assert kept[0] == 0 and kept[-1] == n - 1
    assert len(kept) == min(n, k) and np.all(np.diff(kept) > 0)


def test_one_point_is_the_last():
    assert thin(1001, 1).tolist() == [1000] and thin(1, 1).tolist() == [0]


def test_trajectory_is_thinned_only_above_the_limit():
    rows, n = 1001, 5
    w, b = torch.arange(rows * n).view(rows, n).double(), torch.zeros(rows)
    history = History({}, w, b, torch.zeros(rows, n), b)
    table, every = trajectory_table(history, max_values=10**7)
    frame = table.to_pandas()
    assert every == 1 and len(frame) == rows
    table, every = trajectory_table(history, max_values=1000)
    frame = table.to_pandas()
    assert every == 11 and frame["step"].iloc[-1] == 1000 and len(frame) * 2 * n <= 1000 + 2 * n
    assert frame["w_0"].tolist() == [5.0 * s for s in frame["step"]]


def test_digest_sees_every_value():
    X = np.zeros((100_000, 10))
    before = digest(X, np.zeros(100_000))
    X[50_000, 3] = 1e-300
    assert digest(X, np.zeros(100_000)) != before
    assert digest(X.reshape(10, -1), np.zeros(100_000)) != digest(X, np.zeros(100_000))
