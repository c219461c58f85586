"""``sharpness_every`` from a config to the run's record: the loop measures λ_max(∇²J) at the
cadence, the history and MLflow's charts hold it, and at the default five block steps a
measurement it is the top eigenvalue of the Hessian at the run's own kept θ_t."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from experiments.config import CONFIGS, ConfigError, RunConfig, build
from experiments.config import load_sweep as load_sweep_config
from experiments.data import load_split
from experiments.records import dataset_config
from manual_models import make_model


def test_every_run_logs_its_sharpness_at_the_cadence_and_charts_it(curved_sweep):
    runs, uri = curved_sweep
    client = MlflowClient(uri)
    assert len(runs.runs) == 12
    for run_id in runs.runs.run_id:
        history = runs.history(run_id)
        measured = np.flatnonzero(history["curv/sharpness"].notna().to_numpy())
        assert measured.tolist() == [0, 10, 20, 30, 40, 50, 60]
        lr = float(client.get_run(run_id).data.params["lr"])
        product = history["curv/lr_x_sharpness"].iloc[measured]
        assert np.allclose(product, lr * history["curv/sharpness"].iloc[measured], rtol=1e-14)
        charted = client.get_metric_history(run_id, "curv/sharpness")
        assert sorted(m.step for m in charted) == measured.tolist()


def test_the_logged_sharpness_is_the_top_eigenvalue_at_the_kept_parameters(curved_sweep):
    """Five block steps a measurement from the last one's pair (the first, from random ones,
    takes 50): the median within 1e-9 of eigvalsh on these runs, the worst within 1e-5
    (measured: 2.3e-11 and 3.3e-6; a single power vector's worst was 8.5%, on moons where the
    top two eigenvalues are close); never above, a Ritz value. And at every measurement
    λ_max ≤ max‖x̃ᵢ‖²·J, the bound ŷ(1 − ŷ) ≤ ℓ gives (analysis/implicit_bias.py)."""
    runs, _ = curved_sweep
    errors = []
    for _, run in runs.runs.iterrows():
        history, kept = runs.history(run.run_id), runs.as_history(run.run_id)
        split = load_split(dataset_config(run), int(run["seed"]), float(run["val_fraction"]))
        X = torch.tensor(split.X_train)
        n_classes = int(run["n_classes"])
        y = torch.tensor(split.y_train, dtype=torch.float64 if n_classes == 2 else torch.int64)
        kind = make_model("manual", X.shape[1], n_classes=n_classes, dtype=torch.float64).kind
        for row, t in enumerate(kept.kept.tolist()):
            if t % 10:
                continue
            top = torch.linalg.eigvalsh(kind.hessian_at(X, y, kept.w[row], kept.b[row]))[-1]
            logged = history["curv/sharpness"].iloc[t]
            assert logged <= float(top) * (1 + 1e-12)
            errors.append((float(top) - logged) / float(top))
        measured = history.dropna(subset=["curv/sharpness"])
        reach = float((X.square().sum(1) + 1).max())
        assert (measured["curv/sharpness"] <= reach * measured["train/loss"]).all()
    assert np.median(errors) < 1e-9 and max(errors) < 1e-5


def test_every_run_measures_by_default_and_the_measurement_is_not_in_its_key():
    """On by default; off with null. Measuring changes nothing in a run, so a run's key (and
    a sweep's) is the same at any cadence: sweeps recorded before it resume."""
    base = {"dataset": "iris", "impl": "manual", "lr": 0.1}
    assert RunConfig(**base).sharpness_every == 25
    assert build(RunConfig, {**base, "sharpness_every": None}).sharpness_every is None
    plain = RunConfig(**base).key
    for other in ({"sharpness_every": None}, {"sharpness_every": 5}, {"sharpness_iterations": 2}):
        assert RunConfig(**base, **other).key == plain
    for bad in ({"sharpness_every": 0}, {"sharpness_iterations": 0}, {"sharpness_every": 1.5}):
        with pytest.raises(ConfigError):
            build(RunConfig, {**base, **bad})
    sweep = load_sweep_config(CONFIGS / "quick.yaml", {})
    assert load_sweep_config(CONFIGS / "quick.yaml", {"sharpness_every": None}).key == sweep.key
