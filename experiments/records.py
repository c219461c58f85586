"""What the store holds about every run and sweep, and how it reads back: one schema.

Written here: a run's tags (what the MLflow UI groups by, where it ran, the note with the
command that repeats it), its params (its config, its data's shape and digest) and its record
(the history, through :meth:`Tracker.log_run`); a sweep's parent tags and its dataset inputs.

Read back here: :func:`runs_table` turns runs as MLflow returns them into one typed frame, the
frame a sweep writes as ``runs.csv`` and the analysis reads; :func:`best_lrs` summarises it.
"""

from __future__ import annotations

import getpass
import math
import platform
import re
import subprocess
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import torch

from experiments import datasets
from experiments.config import DatasetConfig, RunConfig, SweepConfig
from experiments.data import load_split, split_digest
from experiments.tracking import Tracker
from experiments.training import RunResult

ROOT = Path(__file__).resolve().parent.parent

# Params that are not strings, and the type each reads back as.
PARAM_TYPES = {
    "lr": float,
    "seed": int,
    "steps": int,
    "val_fraction": float,
    "max_metric_points": int,
    "max_trajectory_values": int,
    "n_train": int,
    "n_val": int,
    "n_features": int,
    "n_classes": int,
    "optimizer.momentum": float,
    "optimizer.eps": float,
    "optimizer.weight_decay": float,
    "check_every_resolved": int,
    "trajectory_every": int,
    "lr_batch": int,
}
# What pairs a run with its autograd twin (the same rule: sgd, adam, no zero_grad, ...).
KEYS = ["dataset", "device", "dtype", "seed", "optimizer", "lr"]
# One best learning rate for each of these groups of runs (and one gradient-error maximum).
BEST_LR_BY = ["dataset", "impl", "optimizer", "device", "dtype"]
# Params of runs recorded before they existed: plain SGD, two classes.
DEFAULTS = {
    "optimizer": "sgd",
    "optimizer.name": "sgd",
    "optimizer.weight_decay": 0.0,
    "optimizer.zero_grad": "True",
    "n_classes": 2,
}
# The columns of a sweep's runs.csv, in reading order (the table has every param and metric).
RUNS_CSV = [
    "dataset",
    "device",
    "impl",
    "optimizer",
    "lr",
    "seed",
    "status",
    "train/loss",
    "val/loss",
    "val/accuracy",
    "check/max_grad_rel_err",
    "check/max_grad_err_vs_terms",
    "time/fit_s",
    "failure",
    "failure_reason",
    "config_key",
    "run_id",
    "start_time",
]


# --- tags -------------------------------------------------------------------------------------
@cache
def environment_tags() -> dict[str, str]:
    """Where every run ran: MLflow's own user, source and commit keys (its UI shows them),
    whether the tree was dirty, and the versions that matter."""
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "mlflow.user": getpass.getuser(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": "python -m experiments",
        **({"mlflow.source.git.commit": commit} if commit else {}),
        "git_commit": commit or "unknown",
        "git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "mlflow_version": _version("mlflow", "mlflow-skinny"),
        "sklearn_version": _version("scikit-learn"),
    }


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(*distributions: str) -> str:
    for name in distributions:  # mlflow, or mlflow-skinny, whose distribution has another name
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    if device == "mps":
        return "Apple MPS"
    return platform.processor() or platform.machine() or "cpu"


def run_tags(config: RunConfig) -> dict[str, str]:
    """What the UI groups and filters by, where the run ran, and its note."""
    model = "softmax" if config.dataset.multiclass else "logistic"
    note = (
        f"Full-batch {config.optimizer.label}, {config.steps} steps, of the **{config.impl}** "
        f"{model} regression on `{config.dataset.label}` (lr {config.lr}, {config.dtype}, "
        f"{config.device}, seed {config.seed}). Per-step history: `history.parquet`; w and dw "
        f"per step: `trajectory.parquet`.\n\nReproduce:\n\n    {config.command()}"
    )
    return {
        # The UI groups runs by a tag: by this one, the runs that differ only in their seed,
        # drawn as one mean curve with a min–max band.
        "setting": config.name.rsplit(" · s", 1)[0] + f" · {config.dtype}",
        "impl": config.impl,
        "dataset": config.dataset.label,
        "device": config.device,
        "lr": str(config.lr),
        "seed": str(config.seed),
        "dtype": config.dtype,
        "optimizer": config.optimizer.label,
        "config_key": config.key,
        "device_name": device_name(config.device),
        **environment_tags(),
        "mlflow.note.content": note,
    }


def sweep_tags(config: SweepConfig, runs: int, command: str) -> dict[str, str]:
    note = (
        f"Sweep of {runs} runs. Running the same command again resumes it; --restart starts "
        f"afresh.\n\nReproduce:\n\n    {command}"
    )
    return {
        "kind": "sweep",
        "sweep_key": config.key,
        **environment_tags(),
        "mlflow.note.content": note,
    }


# --- a run's record ---------------------------------------------------------------------------
def record(tracker: Tracker, run_id: str, result: RunResult) -> str:
    """Everything about one run, in one batch and one upload; returns its final status."""
    config, history = result.config, result.history
    params = {
        **config.params(),
        "log10_lr": math.log10(config.lr),  # MLflow's UI has no log axis for params (#6034)
        **result.shape,
        "check_every_resolved": result.check_every,
        "lr_batch": result.lr_batch,
        "data_digest": split_digest(config.dataset, config.seed, config.val_fraction),
    }
    steps = max(history.steps, 1)
    metrics = {"time/fit_s": result.seconds, "time/step_ms": 1e3 * result.seconds / steps}
    for name in ("grad_rel_err", "grad_err_vs_terms"):
        values = history.metrics.get(f"check/{name}")
        if values is not None and bool(torch.isfinite(values).any()):
            metrics[f"check/max_{name}"] = float(values[torch.isfinite(values)].max())
    tags, status = {}, "FINISHED"
    if history.diverged_at is not None:
        step = history.diverged_at
        reason = f"loss or parameters not finite at step {step}"
        tags = {"failure": "diverged", "diverged_at_step": str(step), "failure_reason": reason}
        status = "FAILED"
    tracker.log_run(
        run_id,
        history,
        max_points=config.max_metric_points,
        params=params,
        metrics=metrics,
        tags=tags,
    )
    return status


def write(tracker: Tracker, run_id: str, result: RunResult, *, inputs: bool, guard: bool) -> None:
    """Record a trained run and end it: FINISHED, or FAILED if it diverged. ``inputs``: log its
    data too (a run without a parent). ``guard``: a run the driver has ended meanwhile (KILLED
    on an interrupt) keeps that status."""
    status = record(tracker, run_id, result)
    if inputs:
        log_inputs(tracker, run_id, [result.config])
    if not guard or tracker.status(run_id) == "RUNNING":
        tracker.finish(run_id, status)


def fail(tracker: Tracker, run_id: str, reason: str) -> None:
    """End a run FAILED with its reason, unless it has ended already (then it stands)."""
    if tracker.status(run_id) != "RUNNING":
        return
    tracker.log(run_id, tags={"failure": "error", "failure_reason": reason[:500]})
    tracker.finish(run_id, "FAILED")


def log_inputs(tracker: Tracker, run_id: str, configs: list[RunConfig]) -> None:
    """Each distinct split among ``configs`` as MLflow dataset inputs of ``run_id`` (a sweep
    logs them once, on its parent; every child names its split by ``data_digest``)."""
    for key in dict.fromkeys((c.dataset, c.seed, c.val_fraction) for c in configs):
        dataset = key[0]
        try:
            split = load_split(*key)
        except Exception:  # its runs fail with the reason; the sweep goes on
            continue
        loader = datasets.DATASETS[dataset.name].loader.__name__.lstrip("_")
        tracker.log_dataset(run_id, key, dataset.label, loader, split)


# --- reading runs back --------------------------------------------------------------------------
def runs_table(runs: Iterable) -> pd.DataFrame:
    """MLflow runs as one row each: params as their types, every metric, the tags that say
    what and how the run went, sorted by what pairs runs (:data:`KEYS`) and start time."""
    rows = [_row(run) for run in runs]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    for name, default in DEFAULTS.items():
        frame[name] = frame[name].fillna(default) if name in frame else default
    frame["n_classes"] = pd.to_numeric(frame["n_classes"]).fillna(2).astype(int)
    frame["weight_decay"] = frame["optimizer.weight_decay"].astype(float)
    frame["zero_grad"] = frame["optimizer.zero_grad"].astype(str) == "True"
    return frame.sort_values([*KEYS, "impl", "start_time"]).reset_index(drop=True)


def _row(run) -> dict[str, object]:
    info, tags, params = run.info, run.data.tags, run.data.params
    row: dict[str, object] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        "status": info.status,
        "start_time": info.start_time,
        "impl": tags.get("impl"),
        "dataset": tags.get("dataset"),  # the label: name and loader parameters
        "dataset_name": params.get("dataset"),
        "config_key": tags.get("config_key"),
        "failure": tags.get("failure", ""),
        "failure_reason": tags.get("failure_reason", ""),
    }
    for name, value in params.items():
        if name not in ("impl", "dataset"):
            row[name] = PARAM_TYPES[name](value) if name in PARAM_TYPES else value
    row.update(run.data.metrics)
    return row


def latest_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """Each grid point's latest attempt (a resumed sweep holds earlier KILLED or FAILED ones)."""
    if runs.empty:
        return runs
    return runs.sort_values("start_time").drop_duplicates("config_key", keep="last")


def best_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × impl × update rule × device × dtype: the lr with the lowest mean final
    validation loss over seeds, flagged ``on_edge`` at the end of the grid, beside autograd's
    own best (compare implementations each at its own best lr)."""
    runs = runs[runs.status == "FINISHED"]
    group = BEST_LR_BY
    per_lr = (
        runs.groupby([*group, "lr"])
        .agg(
            val_loss_mean=("val/loss", "mean"),
            val_loss_std=("val/loss", "std"),
            val_accuracy_mean=("val/accuracy", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    grid = runs.groupby(group)["lr"].agg(lr_min="min", lr_max="max", lrs="nunique")
    best = per_lr.loc[per_lr.groupby(group)["val_loss_mean"].idxmin()].join(grid, on=group)
    edge = (best["lr"] == best["lr_min"]) | (best["lr"] == best["lr_max"])
    best["on_edge"] = (best["lrs"] > 1) & edge
    best = best.rename(columns={"lr": "best_lr"}).drop(columns=["lr_min", "lr_max"])
    same = ["dataset", "optimizer", "device", "dtype"]
    autograd = best[best.impl == "autograd"].set_index(same)
    joined = best.join(autograd[["best_lr", "val_loss_mean"]].add_suffix("_autograd"), on=same)
    joined["val_loss_vs_autograd"] = joined["val_loss_mean"] - joined["val_loss_mean_autograd"]
    return joined.reset_index(drop=True)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """A sweep's ``summary.csv``: :func:`best_lrs`, and the largest gradient disagreement of
    each implementation over all its runs."""
    group = BEST_LR_BY
    checks = [c for c in ("check/max_grad_rel_err", "check/max_grad_err_vs_terms") if c in runs]
    finished = runs[runs.status == "FINISHED"]
    worst = finished.groupby(group)[checks].max() if checks else None
    best = best_lrs(runs)
    return best if worst is None else best.join(worst, on=group)


# How far a run may end from its autograd twin, by dtype: measured, 1,000 steps on
# breast_cancer put them 1.2e-7 (float32) and 3.3e-16 (float64) apart (docs/proof.md).
TOLERANCES = {"float32": 1e-5, "float64": 1e-12}
ENDS = ["train/loss", "val/loss", "param/w_norm"]  # where a run ends, as the store has it


def headline(runs: pd.DataFrame) -> dict[str, float]:
    """The sweep's answer, as metrics of its parent run (the runs list alone then says it):

    - ``sweep/pairs``: manual and function runs beside an autograd twin;
      ``sweep/pairs_end_together``: how many end where the twin ends (training and validation
      loss and ‖w‖ within the dtype's tolerance; the report compares every step);
    - ``sweep/max_grad_err_vs_terms``: the largest gradient disagreement at any checked step
      of any run (``sweep/max_grad_rel_err`` beside it);
    - ``sweep/best_lr.<dataset>.<impl>``: each implementation's best learning rate per dataset
      (and per rule, device and dtype where the sweep has several).
    """
    finished = runs[runs.status == "FINISHED"] if len(runs) else runs
    if finished.empty:
        return {}
    twins = finished[finished.impl == "autograd"][[*KEYS, *ENDS]]
    pairs = finished[finished.impl != "autograd"].merge(twins, on=KEYS, suffixes=("", "_twin"))
    agree = pd.Series(True, index=pairs.index)
    for name in ENDS if len(pairs) else ():  # no pairs without autograd runs
        gap = (pairs[name] - pairs[f"{name}_twin"]).abs().astype(float)
        agree &= gap <= pairs["dtype"].map(TOLERANCES)
    out = {"sweep/pairs": len(pairs), "sweep/pairs_end_together": int(agree.sum())}
    for name in ("grad_rel_err", "grad_err_vs_terms"):
        if f"check/max_{name}" in finished:
            out[f"sweep/max_{name}"] = float(finished[f"check/max_{name}"].max())
    best = best_lrs(finished)
    varying = [k for k in ("optimizer", "device", "dtype") if best[k].nunique() > 1]
    for row in best.itertuples():  # one chart section (sweep/), not one per dataset
        path = [row.dataset, *(getattr(row, k) for k in varying), row.impl]
        out["sweep/best_lr." + ".".join(_metric_name(str(part)) for part in path)] = row.best_lr
    return out


def _metric_name(text: str) -> str:
    """A label as MLflow takes it in a name: ``wine(classes=all)`` → ``wine_classes_all``."""
    return re.sub(r"[^\w.\- ]+", "_", text).strip("_")


def dataset_config(run: pd.Series) -> DatasetConfig:
    """A run's dataset as its config had it: the name and the loader parameters."""
    params = {
        k.removeprefix("dataset."): _number(v)
        for k, v in run.items()
        if isinstance(k, str) and k.startswith("dataset.") and isinstance(v, str)
    }
    return DatasetConfig(name=run["dataset_name"], params=params)


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)
