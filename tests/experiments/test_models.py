"""A sweep's best runs as MLflow models: which runs, what the model predicts, how it loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from analysis.runs import load_sweep
from experiments import data, models, records
from experiments.cli import run as experiments_cli
from manual_models import make_model

SWEEP = """
name: served
datasets: [breast_cancer, {name: iris, classes: all}]
impls: [manual, autograd]
lrs: [0.1, 1.0]
seeds: [0, 1]
devices: [cpu]
dtype: float64
steps: 40
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(sweep, uri, models): a float64 sweep of two datasets (two and three classes), two
    implementations, two rates and two seeds, through the CLI; its logged models."""
    folder = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    (folder / "served.yaml").write_text(SWEEP)
    assert (
        experiments_cli(["sweep", str(folder / "served.yaml"), "--tracking-uri", uri, "--quiet"])
        == 0
    )
    sweep = load_sweep("served", uri)
    client = mlflow.MlflowClient(uri)
    logged = client.search_logged_models([sweep.experiment_id])
    return sweep, uri, logged


def test_one_model_per_dataset_and_implementation_from_its_best_run(served):
    sweep, uri, logged = served
    best = models.best_runs(sweep.runs)
    assert len(logged) == len(best) == 4
    by_run = {m.source_run_id: m for m in logged}
    assert set(by_run) == set(best.run_id)
    client = mlflow.MlflowClient(uri)
    for _, run in best.iterrows():
        model = by_run[run.run_id]
        name = {"breast_cancer": "breast_cancer", "iris(classes=all)": "iris_classes_all"}[
            run.dataset
        ]
        assert model.status == "READY" and model.name == f"{name}-{run.impl}"
        outputs = client.get_run(run.run_id).outputs.model_outputs
        assert [o.model_id for o in outputs] == [model.model_id]  # the UI's Models column
        assert client.get_run(run.run_id).data.tags[models.MODEL_TAG] == model.model_id
        # The analysis' rule: the lowest mean validation loss over seeds, then the best seed.
        runs = sweep.runs[(sweep.runs.dataset == run.dataset) & (sweep.runs.impl == run.impl)]
        assert run.lr == runs.groupby("lr")["val/loss"].mean().idxmin()
        assert run["val/loss"] == runs[runs.lr == run.lr]["val/loss"].min()


def test_the_model_predicts_what_the_runs_model_does_from_raw_features(served, monkeypatch):
    """pyfunc on the dataset's raw validation rows = the run's model's ``forward`` at its final
    parameters on the standardised rows, to float64 rounding; the signature names the columns."""
    sweep, uri, logged = served
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # where models:/ URIs are looked up
    best = models.best_runs(sweep.runs).set_index("run_id")
    for model in logged:
        run = best.loc[model.source_run_id]
        split = data.load_split(records.dataset_config(run), int(run.seed), float(run.val_fraction))
        raw = pd.DataFrame(split.X_val * split.scale + split.mean)
        raw.columns = [f"x{j}" for j in range(raw.shape[1])]
        loaded = mlflow.pyfunc.load_model(model.model_uri)
        assert loaded.metadata.get_input_schema().input_names() == list(raw.columns)
        got = loaded.predict(raw)
        classes = int(run.n_classes)
        net = make_model("manual", raw.shape[1], n_classes=classes, dtype=torch.float64)
        theta = sweep.parameters(model.source_run_id)[1][-1]
        W = theta[:-1] if classes == 2 else theta[:-classes].reshape(-1, classes)
        net.set_parameters(
            torch.tensor(W), torch.tensor(theta[-1] if classes == 2 else theta[-classes:])
        )
        forward = net.forward(torch.tensor(split.X_val)).numpy()
        expected = forward if classes > 2 else np.column_stack([1 - forward, forward])
        assert list(got.columns) == [f"p_{k}" for k in range(max(classes, 2))]
        np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-12, atol=1e-15)


def test_a_resumed_sweep_logs_no_model_twice(served, tmp_path):
    sweep, uri, logged = served
    folder = tmp_path
    (folder / "served.yaml").write_text(SWEEP)
    assert (
        experiments_cli(["sweep", str(folder / "served.yaml"), "--tracking-uri", uri, "--quiet"])
        == 0
    )
    client = mlflow.MlflowClient(uri)
    again = client.search_logged_models([sweep.experiment_id])
    assert {m.model_id for m in again} == {m.model_id for m in logged}


@pytest.mark.slow
def test_mlflow_models_predict_serves_it_from_the_command_line(served, tmp_path, monkeypatch):
    """``mlflow models predict --env-manager local``: the model as MLflow's CLI runs it."""
    _sweep, uri, logged = served
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = next(m for m in logged if m.name == "iris_classes_all-manual")
    loaded = mlflow.pyfunc.load_model(model.model_uri)
    example = loaded.input_example
    (tmp_path / "in.csv").write_text(example.to_csv(index=False))
    command = [sys.executable, "-m", "mlflow", "models", "predict", "-m", model.model_uri,
               "-i", str(tmp_path / "in.csv"), "-t", "csv", "-o", str(tmp_path / "out.json"),
               "--env-manager", "local"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=os.environ)  # fmt: skip
    assert done.returncode == 0, done.stderr
    predictions = pd.DataFrame(json.loads((tmp_path / "out.json").read_text())["predictions"])
    np.testing.assert_allclose(
        predictions.to_numpy(), loaded.predict(example).to_numpy(), rtol=1e-15
    )
