"""What a sweep logs is what its parameters score: every row of every run, read back from the
store, is rebuilt from the logged w and b with a fresh model on the run's own split.

The float64 sweep covers both kinds of model, the K-rate passes and the single runs, and the
three implementations; a loss logged after the step instead of before it, or validation
metrics scored on the training data, fail here at the first row.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from experiments.cli import CONFIGS, run
from experiments.config import load_sweep
from experiments.data import run_data
from experiments.records import read_trajectory
from manual_models import make_model

OVERRIDES = {
    "datasets": ["iris", {"name": "iris", "classes": "all"}],
    "lrs": [0.3, 3.0],
    "steps": 25,
    "dtype": "float64",
    "name": "rows",
}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """The sweep through the real CLI; each run's config, params and two artifacts."""
    folder = tmp_path_factory.mktemp("rows")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    sets = [f"{k}={v}" for k, v in OVERRIDES.items()]
    args = ["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]
    assert run([*args, *(x for s in sets for x in ("--set", s))]) == 0
    grid = {point.key: point for point in load_sweep(CONFIGS / "quick.yaml", OVERRIDES).grid()}
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("rows").experiment_id
    runs = []
    children = "tags.mlflow.parentRunId != ''"
    for found in client.search_runs([experiment], children, max_results=100):
        local = Path(client.download_artifacts(found.info.run_id, "", str(folder)))
        history = pd.read_parquet(local / "history.parquet")
        trajectory = pd.read_parquet(local / "trajectory.parquet")
        runs.append((grid[found.data.tags["config_key"]], found.data.params, history, trajectory))
    assert len(runs) == len(grid) == 2 * 2 * 3
    return runs


def test_every_logged_row_is_what_its_parameters_score(logged):
    for config, params, history, trajectory in logged:
        data = run_data(config)
        n_features, n_classes = data.X.shape[1], data.n_classes
        fresh = make_model(config.impl, n_features, n_classes=n_classes, dtype=torch.float64)
        steps, theta, _ = read_trajectory(trajectory)
        assert list(steps) == list(history.step) == list(range(config.steps + 1))
        assert list(theta) == ["w", "b"]
        for t in range(config.steps + 1):
            row = history.iloc[t]
            fresh.set_parameters(*(torch.tensor(p[t]) for p in theta.values()))
            if n_classes == 2:
                assert row["param/b"] == float(theta["b"][t])
            for name, X, y in (("train", data.X, data.y), ("val", data.X_val, data.y_val)):
                loss = float(fresh.loss(X, y))
                where = (config.name, t, name)
                # K rates in one pass sum in another order than one model: relative 1e-12.
                assert abs(row[f"{name}/loss"] - loss) <= 1e-12 * loss, where
                assert row[f"{name}/accuracy"] == float(fresh.accuracy(fresh.logits(X), y)), where
        assert params["lr_batch"] == ("1" if config.impl == "autograd" else "2")
