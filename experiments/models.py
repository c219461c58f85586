"""A sweep's best runs as MLflow models: the UI's Models column links to them, and
``mlflow.pyfunc.load_model`` / ``mlflow models predict`` / ``mlflow models serve`` use them.

One model per dataset × implementation, from its best run by the analysis' own rule (the
rate with the lowest mean final validation loss over seeds, :func:`experiments.findings.best_lrs`;
the best of the update rules, devices and dtypes; the seed whose run ends lowest): not one per
run, since the runs table shows an experiment's newest 50 models only.

The flavor is a pyfunc logged from code (``served_model.py``, copied into the model): its
parameters are a ``.npz`` of numpy arrays, and it needs numpy and pandas to load, not torch or
this repository. (The scikit-learn flavor would pickle a class of this repository, or, with
skops, ask whoever loads it to trust its types.) The requirements are given, not inferred:
inferring them starts a subprocess per model (measured ~10 s, against ~0.1 s for the model).
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import data, findings, records
from experiments.tracking import Tracker

CODE = Path(__file__).with_name("served_model.py")
MODEL_TAG = "model_id"  # on a run: the model logged from it (a resumed sweep logs it once)
EXAMPLE_ROWS = 5
NOT_IN_NAMES = re.compile(r"[^\w.-]+")  # iris(classes=all) → iris_classes_all


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × implementation, the run its model comes from (see the module's doc)."""
    if len(runs):  # the served model's link is σ or softmax: the built-in kinds only
        runs = runs[runs["model"] == "None"]
    finished = runs[runs.status == "FINISHED"] if len(runs) else runs
    if finished.empty:
        return finished
    best = findings.best_lrs(runs)
    best = best.loc[best.groupby(["dataset", "impl"])["val_loss_mean"].idxmin()]
    keys = [*findings.BEST_LR_BY, "lr"]
    chosen = finished.merge(best.rename(columns={"best_lr": "lr"})[keys], on=keys)
    return chosen.loc[chosen.groupby(["dataset", "impl"])["val/loss"].idxmin()]


def log_best(tracker: Tracker, experiment_id: str, runs: pd.DataFrame) -> dict[str, float]:
    """Log the model of each best run that has none yet; the count and the seconds it took,
    as the sweep's metrics."""
    start, logged = time.perf_counter(), 0
    for _, run in best_runs(runs).iterrows():
        if tracker.run(run.run_id).data.tags.get(MODEL_TAG):
            continue
        model_id = log_model(tracker, experiment_id, run)
        tracker.log(run.run_id, tags={MODEL_TAG: model_id})
        logged += 1
    return {"sweep/models_logged": logged, "sweep/models_seconds": time.perf_counter() - start}


def log_model(tracker: Tracker, experiment_id: str, run: pd.Series) -> str:
    """The run's final parameters as a LoggedModel linked to it (its step 0 output); returns
    the model's id. The input is the dataset's raw features ``x0 … x{n−1}``; the example is
    five validation rows, unstandardised."""
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri
    from mlflow.types import ColSpec, Schema

    split = data.load_split(records.dataset_config(run), int(run.seed), float(run.val_fraction))
    W, b = final_parameters(tracker, run)
    columns = [f"x{j}" for j in range(W.shape[0])]
    example = pd.DataFrame(split.X_val[:EXAMPLE_ROWS] * split.scale + split.mean, columns=columns)
    classes = max(int(run.n_classes), 2)
    signature = ModelSignature(
        inputs=Schema([ColSpec("double", name) for name in columns]),
        outputs=Schema([ColSpec("double", f"p_{k}") for k in range(classes)]),
    )
    requirements = [f"{m.__name__}=={m.__version__}" for m in (mlflow, np, pd)]
    # MLflow's fluent API (what logs a model) pointed at the sweep's store, and back after.
    with tempfile.TemporaryDirectory() as tmp, _use_tracking_uri(tracker.uri):
        parameters = Path(tmp) / "parameters.npz"
        np.savez(parameters, mean=split.mean, scale=split.scale, W=W, b=b)
        # Created here, in the run's experiment (Model.log alone would use the fluent one).
        model = tracker.client.create_logged_model(
            experiment_id,
            name=f"{NOT_IN_NAMES.sub('_', run.dataset).strip('_')}-{run.impl}",
            source_run_id=run.run_id,
            params=tracker.run(run.run_id).data.params,
        )
        info = Model.log(
            artifact_path=None,
            flavor=mlflow.pyfunc,
            model_id=model.model_id,
            run_id=run.run_id,
            python_model=str(CODE),
            artifacts={"parameters": str(parameters)},
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )
    return info.model_id


def final_parameters(tracker: Tracker, run: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) at the run's last step: the last row of ``trajectory.parquet``, W (n, C) and
    b (C,) for C classes, w (n,) and b () for two."""
    with tempfile.TemporaryDirectory() as tmp:
        path = tracker.client.download_artifacts(run.run_id, "trajectory.parquet", tmp)
        history = tracker.client.download_artifacts(run.run_id, "history.parquet", tmp)
        _, params, _ = records.read_trajectory(
            pd.read_parquet(path), n_classes=int(run.n_classes), history=pd.read_parquet(history)
        )
    return params["w"][-1], np.asarray(params["b"][-1])
