"""What the store holds about every run and sweep, and how it reads back: one schema.

Written here: a run's tags (what the MLflow UI groups by, where it ran, the note with the
command that repeats it), its params (its config, its data's shape and digest), its metrics
(the chart points of every series, thinned by :func:`thin`) and its artifacts (the whole
history and the kept trajectory as Parquet tables), all in :func:`record`; a sweep's parent
tags and its dataset inputs; how a run ends (:func:`write`, :func:`fail`).

Read back here: :func:`runs_table` turns runs as MLflow returns them into one typed frame, the
frame a sweep writes as ``runs.csv`` and the analysis reads (:mod:`experiments.findings`
concludes from it).
"""

from __future__ import annotations

import fnmatch
import getpass
import math
import platform
import subprocess
from collections.abc import Iterable
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from experiments import datasets
from experiments.choices import DatasetConfig
from experiments.config import RunConfig, SweepConfig
from experiments.data import load_split, split_digest
from experiments.halving import HALVING, HALVING_STEP
from experiments.loop import History
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
KEYS = ["dataset", "device", "dtype", "seed", "optimizer", "batch_size", "lr", "steps"]
# Params of runs recorded before they existed: plain SGD, two classes.
DEFAULTS = {
    "optimizer": "sgd",
    "optimizer.name": "sgd",
    "optimizer.weight_decay": 0.0,
    "optimizer.zero_grad": "True",
    "n_classes": 2,
    "batch_size": "None",  # full-batch descent
    "model": "None",  # the built-in kinds: logistic, softmax
}
# The tag on a run a search added to the grid, naming the search (``extend_edges``).
ADDED_BY = "added_by"
# A stopped run's status in the runs table (MLflow has it FINISHED): not a run of the full steps.
SEARCH_STATUS = {"stopped": "STOPPED"}
COMPLETED = {"FINISHED", *SEARCH_STATUS.values()}  # ran every step it was given
# The columns of a sweep's runs.csv, in reading order (the table has every param and metric).
RUNS_CSV = [
    "dataset",
    "device",
    "impl",
    "optimizer",
    "lr",
    "seed",
    "steps",
    "status",
    "train/loss",
    "val/loss",
    "val/accuracy",
    "check/max_grad_rel_err",
    "check/max_grad_err_vs_terms",
    "time/fit_s",
    "failure",
    "failure_reason",
    "added_by",
    "halving",
    "halving_step",
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


# --- a run's history, as the store holds it -------------------------------------------------
def thin(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` of the steps 0 … n − 1, the first and the last included.

    Up to ``max_points`` steps, every one. Beyond, half the points are spaced evenly (no stretch
    of the curve goes unsampled) and half geometrically, dense at the start, where gradient
    descent moves fastest (a large learning rate's loss falls by orders of magnitude in its
    first steps); the points left where the two coincide bisect the widest gaps.
    """
    if n <= max_points:
        return np.arange(n)
    if max_points <= 2:
        return np.array([n - 1] if max_points == 1 else [0, n - 1])
    even = np.linspace(0, n - 1, max_points // 2)
    early = np.geomspace(1, n, max_points - max_points // 2) - 1
    keep = np.unique(np.round(np.concatenate([even, early])).astype(np.int64))
    while len(keep) < max_points:
        gap = int(np.argmax(np.diff(keep)))
        keep = np.insert(keep, gap + 1, (keep[gap] + keep[gap + 1]) // 2)
    return keep


# The series drawn as curves, sent at up to ``max_metric_points`` points: the losses and
# accuracies, how far each parameter and its gradient are from 0 (``*_norm``: w's, a softmax
# b's, a network's W1's …), and the gradient checks on a log10 scale (the raw checks live near
# the float epsilon, and a linear axis labels them 0, 0, 0). Every other series (a one-number
# bias, the raw checks) goes at its first and last step; every series is whole in
# history.parquet.
CURVES = (
    "train/loss",
    "train/batch_loss",
    "val/loss",
    "train/accuracy",
    "val/accuracy",
    "grad/*_norm",
    "param/*_norm",
    "check/log10_grad_rel_err",
    "check/log10_grad_err_vs_terms",
    "curv/sharpness",
    "curv/lr_x_sharpness",
)
LOG10_FLOOR = 1e-18  # an exact 0 (bit-identical gradients) is drawn at −18


def series(history: History) -> dict[str, np.ndarray]:
    """Every metric as MLflow gets it: the history's, and log10 of each gradient check."""
    out = {name: values.double().numpy() for name, values in history.metrics.items()}
    for name in [n for n in out if n.startswith("check/")]:
        log10 = np.log10(np.maximum(out[name], LOG10_FLOOR))  # NaN (unchecked) stays NaN
        out[name.replace("check/", "check/log10_")] = log10
    return out


def charted(history: History, max_points: int) -> list[tuple[str, float, int]]:
    """(name, value, step) of every point a run sends to MLflow's charts: each of
    :data:`CURVES` at up to ``max_points`` points, every other series at its ends."""
    points = []
    for name, values in series(history).items():
        steps = np.flatnonzero(~np.isnan(values))
        curve = any(fnmatch.fnmatchcase(name, pattern) for pattern in CURVES)
        for i in steps[thin(len(steps), max_points if curve else 2)]:
            points.append((name, float(values[i]), int(i)))
    return points


def history_table(history: History):
    """Every metric at every step, one column each, as an Arrow table (``history.parquet``)."""
    columns = {"step": np.arange(history.steps + 1)}
    columns.update({name: v.double().numpy() for name, v in history.metrics.items()})
    return pa.table(columns)


def trajectory_table(history: History):
    """The kept rows' parameters and gradients by name, as columns ``step``, then each
    parameter's entries (``w[0]``, …, ``b`` for logistic regression; ``w[0,0]``, …, ``b[0]``,
    … for softmax; ``W1[0,0]``, … for a network), then each gradient's (``dw[0]``, …): the loop
    keeps every k-th row and the last, as ``max_trajectory_values`` allows."""
    columns = {"step": history.kept.numpy()}
    for tensors in (history.params, history.grads):
        for name, t in tensors.items():
            values = t.double().numpy()
            for index in np.ndindex(values.shape[1:]):
                label = name if not index else f"{name}[{','.join(map(str, index))}]"
                columns[label] = values[(slice(None), *index)]
    return pa.table(columns)


def read_trajectory(
    frame: pd.DataFrame, *, n_classes: int = 2, history: pd.DataFrame | None = None
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A ``trajectory.parquet`` read back: the kept steps, and each parameter and gradient
    by name in its shape (rows, *shape). Tables written before parameters had names hold
    θ flat as ``w_0 …`` (softmax: W row by row, then b) and its gradient as ``dw_0 …``, with
    logistic regression's b in ``history``'s ``param/b`` and ``grad/b``: read as ``w`` and
    ``b`` all the same."""
    steps = frame["step"].to_numpy()
    columns = [c for c in frame.columns if c != "step"]
    if columns and columns[0] == "w_0":  # the flat layout of the stores before names
        return steps, *_flat_layout(frame, steps, n_classes, history)
    entries: dict[str, list[tuple[tuple[int, ...], str]]] = {}
    for column in columns:  # name, or name[i,j]
        name, _, index = column.partition("[")
        at = tuple(int(i) for i in index.rstrip("]").split(",")) if index else ()
        entries.setdefault(name, []).append((at, column))
    tensors = {}
    for name, found in entries.items():
        shape = tuple(max(at[k] for at, _ in found) + 1 for k in range(len(found[0][0])))
        tensors[name] = frame[[c for _, c in found]].to_numpy().reshape(len(frame), *shape)
    names = list(tensors)
    half = len(names) // 2  # the parameters, then their gradients
    return steps, {n: tensors[n] for n in names[:half]}, {n: tensors[n] for n in names[half:]}


def _flat_layout(frame, steps, n_classes, history):
    theta = frame.filter(regex=r"^w_\d+$").to_numpy()
    grad = frame.filter(regex=r"^dw_\d+$").to_numpy()
    if n_classes == 2:
        if history is None:
            raise ValueError("an old logistic trajectory needs its history for b")
        b, db = (history[name].to_numpy()[steps] for name in ("param/b", "grad/b"))
        return {"w": theta, "b": b}, {"dw": grad, "db": db}
    n = theta.shape[1] // n_classes - 1
    shape = (len(frame), n, n_classes)
    split = n * n_classes
    return (
        {"w": theta[:, :split].reshape(shape), "b": theta[:, split:]},
        {"dw": grad[:, :split].reshape(shape), "db": grad[:, split:]},
    )


# --- a run's record ---------------------------------------------------------------------------
def record(tracker: Tracker, run_id: str, result: RunResult) -> str:
    """Everything about one run, in as few batches as MLflow allows and one upload: its params
    (``trajectory_every``: the spacing of the trajectory's rows, 1 when every step is there),
    its single metrics, its series as :func:`charted` draws them, ``history.parquet`` and
    ``trajectory.parquet``; returns its final status."""
    config, history = result.config, result.history
    params = {
        **config.params(),
        "log10_lr": math.log10(config.lr),  # MLflow's UI has no log axis for params (#6034)
        **result.shape,
        "check_every_resolved": result.check_every,
        "lr_batch": result.lr_batch,
        "data_digest": split_digest(config.dataset, config.seed, config.val_fraction),
        **result.batching,
    }
    steps = max(history.steps, 1)
    metrics = {"time/fit_s": result.seconds, "time/step_ms": 1e3 * result.seconds / steps}
    for name in ("grad_rel_err", "grad_err_vs_terms"):
        values = history.metrics.get(f"check/{name}")
        if values is not None and bool(torch.isfinite(values).any()):
            metrics[f"check/max_{name}"] = float(values[torch.isfinite(values)].max())
    tags, status = dict(result.tags), "FINISHED"
    if history.diverged_at is not None:
        step = history.diverged_at
        reason = f"loss or parameters not finite at step {step}"
        tags |= {"failure": "diverged", "diverged_at_step": str(step), "failure_reason": reason}
        status = "FAILED"
    params["trajectory_every"] = history.every
    tracker.log(
        run_id,
        params=params,
        metrics=metrics,
        tags=tags,
        points=charted(history, config.max_metric_points),
        tables={
            "history.parquet": history_table(history),
            "trajectory.parquet": trajectory_table(history),
        },
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


def describe_sweep(
    tracker: Tracker, parent: str, config: SweepConfig, grid: list[RunConfig]
) -> None:
    """A new sweep's params, config file and data on its parent, written once its driver holds
    it (a driver that loses the race to create the sweep writes nothing but the run it
    deletes)."""
    tracker.log(parent, params=config.params(), metrics={"sweep/runs": len(grid)})
    tracker.log_text(parent, config.to_yaml(), "config.yaml")
    log_inputs(tracker, parent, grid)


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
        parts = {"train": (split.X_train, split.y_train), "val": (split.X_val, split.y_val)}
        tracker.log_dataset(run_id, key, f"{dataset.label} s{key[1]}", loader, parts)


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
    for name in KEYS:  # runs that failed before their params were written have none
        frame[name] = frame.get(name)
    frame["n_classes"] = pd.to_numeric(frame["n_classes"]).fillna(2).astype(int)
    frame["weight_decay"] = frame["optimizer.weight_decay"].astype(float)
    frame["zero_grad"] = frame["optimizer.zero_grad"].astype(str) == "True"
    return frame.sort_values([*KEYS, "impl", "start_time"]).reset_index(drop=True)


def _row(run) -> dict[str, object]:
    info, tags, params = run.info, run.data.tags, run.data.params
    row: dict[str, object] = {
        "run_id": info.run_id,
        "run_name": info.run_name,
        # a halving sweep's run that stopped early, or one whose rate went on to a longer run
        "status": SEARCH_STATUS.get(tags.get(HALVING), info.status),
        "start_time": info.start_time,
        "impl": tags.get("impl"),
        "dataset": tags.get("dataset"),  # the label: name and loader parameters
        "dataset_name": params.get("dataset"),
        "config_key": tags.get("config_key"),
        "failure": tags.get("failure", ""),
        "failure_reason": tags.get("failure_reason", ""),
        ADDED_BY: tags.get(ADDED_BY, ""),  # a search added it to the grid (experiments.edges)
        HALVING: tags.get(HALVING, ""),
        HALVING_STEP: tags.get(HALVING_STEP, ""),
    }
    for name, value in params.items():
        if name not in ("impl", "dataset"):
            row[name] = PARAM_TYPES[name](value) if name in PARAM_TYPES else value
    row.update(run.data.metrics)
    return row


def finals(runs: pd.DataFrame, metric: str) -> dict[str, float]:
    """Each completed grid point's final ``metric``, by its config key (its latest attempt)."""
    if runs.empty or metric not in runs:
        return {}
    finished = latest_attempts(runs)
    finished = finished[finished.status.isin(COMPLETED)]
    return dict(zip(finished["config_key"], finished[metric].astype(float), strict=True))


def latest_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """Each grid point's latest attempt (a resumed sweep holds earlier KILLED or FAILED ones)."""
    if runs.empty:
        return runs
    return runs.sort_values("start_time").drop_duplicates("config_key", keep="last")


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
