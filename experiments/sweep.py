"""A sweep: expand the grid, train every point with the engine, record each run with the tracker.

This is the one module that knows both the engine (plain PyTorch, :mod:`experiments.engine`) and
the tracker (:mod:`experiments.tracking`); :func:`train_point` is a pure function of one
:class:`RunConfig`, so the grid points can be handed to any executor.
"""

from __future__ import annotations

import contextlib
import getpass
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

import click
import numpy as np
import pandas as pd
import torch

from experiments import datasets
from experiments.config import RunConfig, SweepConfig
from experiments.engine import History, fit
from experiments.tracking import Tracker, device_name
from manual_models import make_model

ROOT = Path(__file__).resolve().parent.parent


@cache
def load_split(dataset, seed: int, val_fraction: float) -> dict[str, np.ndarray]:
    """The seeded, stratified, standardised split; every run with this key shares it."""
    X, y = datasets.load(dataset.name, **dataset.params)
    s = datasets.split(X, y, val_fraction=val_fraction, seed=seed)
    return {"X_train": s.X_train, "y_train": s.y_train, "X_val": s.X_val, "y_val": s.y_val}


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    history: History
    seconds: float  # wall time of the whole loop: steps, metrics and gradient checks
    shape: dict[str, int]
    check_every: int


def train_point(config: RunConfig) -> RunResult:
    """Train one grid point; runs that differ only in ``impl`` share data, split, init, seed."""
    split = load_split(config.dataset, config.seed, config.val_fraction)
    dtype = getattr(torch, config.dtype)
    X, y, X_val, y_val = (
        torch.tensor(split[k], dtype=dtype, device=config.device)
        for k in ("X_train", "y_train", "X_val", "y_val")
    )
    n_features = X.shape[1]
    new = {"dtype": dtype, "device": config.device, "seed": config.seed}
    model = make_model(config.impl, n_features, config.lr, **new)
    reference = None if config.impl == "autograd" else make_model("autograd", n_features, **new)
    check_every = config.check_every_for(X.numel())
    start = time.perf_counter()
    history = fit(
        model,
        X,
        y,
        config.steps,
        X_val=X_val,
        y_val=y_val,
        reference=reference,
        check_every=check_every,
    )
    seconds = time.perf_counter() - start  # fit() ends by copying to the host: work is done
    shape = {"n_train": X.shape[0], "n_val": X_val.shape[0], "n_features": n_features}
    return RunResult(config, history, seconds, shape, check_every)


# --- what every run records about where it ran ----------------------------------------------
@cache
def environment_tags() -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {
        # MLflow's own keys, which its UI shows as the run's user, source and git commit:
        "mlflow.user": getpass.getuser(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "python -m experiments",
        **({"mlflow.source.git.commit": commit} if commit else {}),
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "mlflow_version": version("mlflow"),
        "sklearn_version": version("scikit-learn"),
    }


def run_tags(config: RunConfig) -> dict[str, str]:
    return {
        "impl": config.impl,
        "dataset": config.dataset.label,
        "device": config.device,
        "lr": str(config.lr),
        "seed": str(config.seed),
        "dtype": config.dtype,
        "config_key": config.key,
        "device_name": device_name(config.device),
        **environment_tags(),
        "mlflow.note.content": (
            f"Full-batch gradient descent, {config.steps} steps, of the **{config.impl}** "
            f"logistic regression on `{config.dataset.label}` (lr {config.lr}, {config.dtype}, "
            f"{config.device}, seed {config.seed}). Per-step history: `history.parquet`; w and "
            f"dw per step: `trajectory.parquet`.\n\nReproduce:\n\n    {config.command()}"
        ),
    }


# --- the sweep -------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    experiment_id: str
    parent_id: str | None
    runs: pd.DataFrame  # one row per run
    seconds: float
    train_seconds: float  # inside train_point; the rest is tracking (and the progress bar)


def run_grid(
    config: SweepConfig,
    tracker: Tracker,
    *,
    experiment: str | None = None,
    command: str = "",
    nested: bool = True,
    progress: bool = True,
) -> SweepOutcome:
    """Open the store, then train and record every grid point (under one parent run)."""
    grid = config.grid()
    tracker.open()
    experiment_id = tracker.experiment(experiment or config.name)
    start = time.perf_counter()
    parent_id = None
    if nested:
        stamp = time.strftime("%Y-%m-%d %H:%M")
        parent_id = tracker.start_run(
            experiment_id,
            f"sweep · {config.name} · {len(grid)} runs · {stamp}",
            tags={
                "kind": "sweep",
                **environment_tags(),
                "mlflow.note.content": f"Sweep of {len(grid)} runs.\n\nReproduce:\n\n    {command}",
            },
        )
        tracker.log(parent_id, params=sweep_params(config), metrics={"sweep/runs": len(grid)})
        tracker.log_text(parent_id, config_yaml(config), "config.yaml")

    rows, current, train_seconds = [], None, 0.0
    try:
        with (
            click.progressbar(
                grid,
                label=f"{config.name}: {len(grid)} runs",
                item_show_func=lambda c: c.name if c else None,
                file=sys.stderr,
            )
            if progress
            else contextlib.nullcontext(grid) as bar
        ):
            for run_config in bar:
                current = tracker.start_run(
                    experiment_id, run_config.name, tags=run_tags(run_config), parent_id=parent_id
                )
                result = train_point(run_config)
                train_seconds += result.seconds
                record(tracker, current, result)
                tracker.finish(current)
                rows.append(summary_row(result, current))
                current = None
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED"
        for run_id in (current, parent_id):
            if run_id is not None:
                tracker.finish(run_id, status)
        raise
    runs = pd.DataFrame(rows)
    if parent_id is not None:
        tracker.log_text(parent_id, runs.to_csv(index=False), "runs.csv")
        tracker.log_text(parent_id, summarize(runs).to_csv(index=False), "summary.csv")
    seconds = time.perf_counter() - start
    if parent_id is not None:
        timing = {"sweep/seconds": seconds, "sweep/train_seconds": train_seconds}
        tracker.log(parent_id, metrics=timing)
        tracker.finish(parent_id)
    return SweepOutcome(experiment_id, parent_id, runs, seconds, train_seconds)


def record(tracker: Tracker, run_id: str, result: RunResult) -> None:
    config = result.config
    every = tracker.log_history(
        run_id, result.history, config.max_metric_points, config.max_trajectory_values
    )
    params = {
        **config.params(),
        **result.shape,
        "check_every_resolved": result.check_every,
        "trajectory_every": every,
    }
    steps = result.history.steps
    metrics = {"time/fit_s": result.seconds, "time/step_ms": 1e3 * result.seconds / steps}
    tracker.log(run_id, params=params, metrics=metrics)
    split = load_split(config.dataset, config.seed, config.val_fraction)
    key = (config.dataset.label, config.seed, config.val_fraction)
    loader = datasets.DATASETS[config.dataset.name].loader.__name__.lstrip("_")
    tracker.log_dataset(run_id, key, config.dataset.label, loader, split)


def summary_row(result: RunResult, run_id: str) -> dict[str, object]:
    config, m = result.config, result.history.metrics

    def worst(name: str) -> float:
        return float(np.nanmax(m[name].double().numpy())) if name in m else np.nan

    return {
        "dataset": config.dataset.label,
        "device": config.device,
        "impl": config.impl,
        "lr": config.lr,
        "seed": config.seed,
        "train_loss": float(m["train/loss"][-1]),
        "val_loss": float(m["val/loss"][-1]),
        "val_accuracy": float(m["val/accuracy"][-1]),
        "max_grad_rel_err": worst("check/grad_rel_err"),
        "max_grad_err_vs_terms": worst("check/grad_err_vs_terms"),
        "seconds": result.seconds,
        "run_id": run_id,
    }


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × device × impl: the lr with the lowest mean final validation loss, and the
    largest gradient disagreement over all its runs."""
    group = ["dataset", "device", "impl"]
    by_lr = (
        runs.groupby([*group, "lr"], sort=False)
        .agg(
            val_loss=("val_loss", "mean"),
            val_accuracy=("val_accuracy", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    best = by_lr.loc[by_lr.groupby(group, sort=False)["val_loss"].idxmin()]
    worst = runs.groupby(group, sort=False)[["max_grad_rel_err", "max_grad_err_vs_terms"]].max()
    best = best.rename(columns={"lr": "best_lr"})
    return best.join(worst, on=group).reset_index(drop=True)


def sweep_params(config: SweepConfig) -> dict[str, str]:
    dumped = config.model_dump(mode="json")
    dumped["datasets"] = [d.label for d in config.datasets]
    dumped["devices"] = config.resolved_devices()
    return {k: str(v) for k, v in dumped.items()}


def config_yaml(config: SweepConfig) -> str:
    import yaml

    data = config.model_dump(mode="json")
    data["datasets"] = [
        d["name"] if not d["params"] else {"name": d["name"], **d["params"]}
        for d in data["datasets"]
    ]
    return yaml.safe_dump(data, sort_keys=False)
