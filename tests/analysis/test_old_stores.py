"""A store written before parameters had names (``trajectory.parquet`` holding θ flat as
``w_0 …`` and its gradient as ``dw_0 …``, logistic regression's b only in the history) reads
back and analyses exactly as the same store written today."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import compare
from analysis.runs import load_sweep
from experiments.cli import CONFIGS, run
from experiments.records import read_trajectory

OVERRIDES = {
    "datasets": ["iris", {"name": "iris", "classes": "all"}],
    "lrs": [0.3, 3.0],
    "steps": 20,
    "dtype": "float64",
    "name": "old",
}


def as_before_names(frame: pd.DataFrame) -> pd.DataFrame:
    """The layout of the stores before names: w (W row by row, then b for softmax), flat."""
    steps, params, grads = read_trajectory(frame)
    logistic = params["b"].ndim == 1  # one b a row: it lived in param/b
    parts = [(params["w"], grads["dw"])] + ([] if logistic else [(params["b"], grads["db"])])
    theta = np.hstack([p.reshape(len(steps), -1) for p, _ in parts])
    grad = np.hstack([g.reshape(len(steps), -1) for _, g in parts])
    old = {"step": steps}
    old.update({f"w_{j}": theta[:, j] for j in range(theta.shape[1])})
    old.update({f"dw_{j}": grad[:, j] for j in range(grad.shape[1])})
    return pd.DataFrame(old)


def test_a_store_from_before_names_analyses_as_it_did(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sets = [f"{k}={v}" for k, v in OVERRIDES.items()]
    args = ["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]
    assert run([*args, *(x for s in sets for x in ("--set", s))]) == 0
    today = load_sweep("old", uri)
    pairs, theta = compare.pairs(today), today.parameters(today.runs.run_id.iloc[0])

    files = list(tmp_path.rglob("trajectory.parquet"))
    assert len(files) == len(today.runs) == 12
    for path in files:
        as_before_names(pd.read_parquet(path)).to_parquet(path)
    before = load_sweep("old", uri)
    assert list(before.trajectory(before.runs.run_id.iloc[0]).columns[:2]) == ["step", "w_0"]
    pd.testing.assert_frame_equal(compare.pairs(before), pairs)
    again = before.parameters(before.runs.run_id.iloc[0])
    assert np.array_equal(again[0], theta[0]) and np.array_equal(again[1], theta[1])
