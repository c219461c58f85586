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

from experiments import datasets, lr_batch
from experiments.config import RunConfig, SweepConfig
from experiments.engine import History, fit
from experiments.executors import Engine
from experiments.interrupts import shielded
from experiments.tracking import Tracker, device_name, digest

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
    seconds: float  # this run's share of the loop's wall time: steps, metrics, checks
    shape: dict[str, int]
    check_every: int
    lr_batch: int = 1  # how many learning rates shared the pass that trained it


def train_point(config: RunConfig) -> RunResult:
    """Train one grid point; runs that differ only in ``impl`` share data, split, init, seed."""
    return train_group([config])[0]


def train_group(configs: list[RunConfig]) -> list[RunResult]:
    """Train grid points that differ only in ``lr`` in one pass (one model with K rates);
    a group of one is an ordinary run. Each gets its own result."""
    config = configs[0]
    if any(c.model_dump(exclude={"lr"}) != config.model_dump(exclude={"lr"}) for c in configs):
        raise ValueError("a group's runs must differ in lr only")
    split = load_split(config.dataset, config.seed, config.val_fraction)
    dtype = getattr(torch, config.dtype)
    # Binary labels in the model's dtype; class indices (int64) for softmax regression.
    label = torch.int64 if config.dataset.multiclass else dtype
    X, y, X_val, y_val = (
        torch.tensor(split[k], dtype=dtype if k.startswith("X") else label, device=config.device)
        for k in ("X_train", "y_train", "X_val", "y_val")
    )
    n_features = X.shape[1]
    n_classes = int(split["y_train"].max()) + 1 if config.dataset.multiclass else 2
    lrs = [c.lr for c in configs]
    new = {"dtype": dtype, "device": config.device, "seed": config.seed, "n_classes": n_classes,
           "optimizer": config.optimizer.rule()}  # fmt: skip
    model = lr_batch.build(config.impl, n_features, lrs, **new)
    # The check compares each step's gradient with autograd's at the same point. Without
    # zero_grad the step uses the sum of all past gradients by design: nothing to check.
    checked = config.impl != "autograd" and config.optimizer.zero_grad
    reference = lr_batch.build("autograd", n_features, lrs, **new) if checked else None
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
        cuda_graphs=config.cuda_graphs,
    )
    seconds = time.perf_counter() - start  # fit() ends by copying to the host: work is done
    shape = {"n_train": X.shape[0], "n_val": X_val.shape[0], "n_features": n_features,
             "n_classes": n_classes}  # fmt: skip
    share = seconds / len(configs)
    return [
        RunResult(c, h, share, shape, check_every, len(configs))
        for c, h in zip(configs, history.runs(), strict=True)
    ]


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
        "mlflow_version": mlflow_version(),
        "sklearn_version": version("scikit-learn"),
    }


def mlflow_version() -> str:
    import mlflow  # the full package, or mlflow-skinny (whose distribution has another name)

    return mlflow.__version__


def run_tags(config: RunConfig) -> dict[str, str]:
    model = "softmax" if config.dataset.multiclass else "logistic"
    return {
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
        "mlflow.note.content": (
            f"Full-batch {config.optimizer.label}, {config.steps} steps, of the "
            f"**{config.impl}** {model} regression on `{config.dataset.label}` (lr {config.lr}, "
            f"{config.dtype}, {config.device}, seed {config.seed}). Per-step history: "
            f"`history.parquet`; w and dw per step: `trajectory.parquet`.\n\nReproduce:\n\n"
            f"    {config.command()}"
        ),
    }


# --- the sweep -------------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    experiment_id: str
    parent_id: str | None
    runs: pd.DataFrame  # one row per run of this sweep (every attempt), from the store
    seconds: float
    train_seconds: float  # inside train_point in this invocation; the rest is tracking
    skipped: int  # grid points already FINISHED by an earlier invocation of the same sweep


def run_grid(
    config: SweepConfig,
    tracker: Tracker,
    *,
    experiment: str | None = None,
    command: str = "",
    nested: bool = True,
    progress: bool = True,
    engine: Engine | None = None,
    restart: bool = False,
) -> SweepOutcome:
    """Open the store, then train and record every grid point not finished yet.

    Running the same sweep again resumes it: the parent run is reopened, grid points whose
    config key already FINISHED under it are skipped, and runs left RUNNING by a killed
    process are marked KILLED and run again. ``restart`` starts a fresh parent instead.
    """
    grid = config.grid()
    tracker.open()
    experiment_id = tracker.experiment(experiment or config.name)
    start = time.perf_counter()
    parent_id, finished = None, set()
    if nested:
        with shielded():  # an interrupt waits until parent_id is known (and marked KILLED)
            parent_id, finished = open_parent(tracker, experiment_id, config, command, restart)
    todo = [point for point in grid if point.key not in finished]
    groups = lr_batch.passes(todo, config.batch_lrs)
    in_flight: dict[str, RunConfig] = {}  # run id → config, for runs started and not ended
    started: list[str] = []
    train_seconds = 0.0

    def start_runs(group: list[RunConfig]) -> list[str]:
        run_ids = []
        for point in group:
            with shielded():  # the run exists in the store only together with in_flight
                run_id = tracker.start_run(
                    experiment_id, point.name, tags=run_tags(point), parent_id=parent_id
                )
                in_flight[run_id] = point
            started.append(run_id)
            run_ids.append(run_id)
        return run_ids

    def failed(run_id: str, reason: str) -> None:
        if tracker.status(run_id) != "RUNNING":  # ended before its group failed: it stands
            return
        tracker.log(run_id, tags={"failure": "error", "failure_reason": reason[:500]})
        tracker.finish(run_id, "FAILED")

    bar = (
        click.progressbar(
            length=len(todo),
            label=f"{config.name}: {len(todo)} of {len(grid)} runs to do",
            file=sys.stderr,
        )
        if progress
        else contextlib.nullcontext(None)
    )
    try:
        with bar as shown:
            if engine is None:
                for group in groups:
                    run_ids = start_runs(group)
                    try:
                        train_seconds += execute_group(tracker, run_ids, group,
                                                       inputs=parent_id is None)  # fmt: skip
                    except Exception as err:  # one run's crash does not end the sweep
                        for run_id in run_ids:
                            failed(run_id, _first_line(err))
                    for run_id in run_ids:
                        in_flight.pop(run_id)
                    if shown is not None:
                        shown.update(len(group))
            else:
                train_seconds = _on_engine(engine, tracker, groups, start_runs, failed,
                                           in_flight, shown, parent_id is None)  # fmt: skip
    except BaseException:
        # Ctrl-C, SIGTERM, or a failure of the tracking itself: nothing is left RUNNING.
        for run_id in [*in_flight, *([parent_id] if parent_id else [])]:
            with contextlib.suppress(Exception):
                if tracker.status(run_id) == "RUNNING":  # a worker may have ended it already
                    tracker.finish(run_id, "KILLED")
        raise
    runs = sweep_runs(tracker, experiment_id, parent_id, started)
    seconds = time.perf_counter() - start
    if parent_id is not None:
        tracker.log_text(parent_id, runs.to_csv(index=False), "runs.csv")
        done = runs[runs.status == "FINISHED"]
        if len(done):
            tracker.log_text(parent_id, summarize(done).to_csv(index=False), "summary.csv")
        timing = {"sweep/seconds": seconds, "sweep/train_seconds": train_seconds}
        status = latest_attempts(runs).status.value_counts()
        counts = {f"sweep/{k.lower()}": v for k, v in status.items()}
        tracker.log(parent_id, metrics={**timing, **counts})
        tracker.finish(parent_id)
    return SweepOutcome(
        experiment_id, parent_id, runs, seconds, train_seconds, len(grid) - len(todo)
    )


def open_parent(tracker, experiment_id, config, command, restart) -> tuple[str, set[str]]:
    """The sweep's parent run, reopened if this sweep ran before, and the keys it finished."""
    previous = None if restart else tracker.find_sweep(experiment_id, config.key)
    if previous is not None:
        parent_id = previous.info.run_id
        tracker.reopen(parent_id)
        finished = set()
        for child in tracker.children(experiment_id, parent_id):
            if child.info.status == "FINISHED":
                finished.add(child.data.tags.get("config_key"))
            elif child.info.status == "RUNNING":  # its process was killed (SIGKILL, lost node)
                stale = {"failure": "killed", "failure_reason": "its process ended mid-run"}
                tracker.log(child.info.run_id, tags=stale)
                tracker.finish(child.info.run_id, "KILLED")
        return parent_id, finished
    grid = config.grid()
    stamp = time.strftime("%Y-%m-%d %H:%M")
    parent_id = tracker.start_run(
        experiment_id,
        f"sweep · {config.name} · {len(grid)} runs · {stamp}",
        tags={
            "kind": "sweep",
            "sweep_key": config.key,
            **environment_tags(),
            "mlflow.note.content": (
                f"Sweep of {len(grid)} runs. Running the same command again resumes it; "
                f"--restart starts afresh.\n\nReproduce:\n\n    {command}"
            ),
        },
    )
    tracker.log(parent_id, params=sweep_params(config), metrics={"sweep/runs": len(grid)})
    tracker.log_text(parent_id, config_yaml(config), "config.yaml")
    log_inputs(tracker, parent_id, grid)
    return parent_id, set()


def _on_engine(engine, tracker, groups, start_runs, failed, in_flight, shown, inputs) -> float:
    """Groups of grid points on ``engine``'s workers; each logs its own runs straight to the
    store.

    The driver creates the runs before handing a group out, so a group whose worker raises, or
    whose process dies, is marked FAILED here and the sweep goes on (a resume runs it again).
    An engine that a dead worker breaks (the local pool: every future still pending fails, and
    so does a submit) takes no new group until those futures are in; then it is renewed, and a
    group it refused goes to the new one under the runs already created for it.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    pending, futures, train_seconds = list(groups), {}, 0.0
    refused = None  # (group, run ids): runs created that the broken engine would not take
    lost = False  # the engine broke: submit nothing until the work in flight has drained
    try:
        while pending or refused or futures:
            while (refused or pending) and not lost and len(futures) < engine.capacity():
                if refused:
                    (group, run_ids), refused = refused, None
                else:
                    group = pending.pop(0)
                    run_ids = start_runs(group)
                args = (tracker.uri, run_ids, group, inputs, engine.guard)
                try:
                    future = engine.submit(_work, *args, gpu=group[0].device == "cuda")
                except Exception as err:  # the engine broke after the last wait returned
                    if not engine.lost_worker(err):
                        raise
                    refused = group, run_ids  # its runs wait for the renewed engine
                    lost = True
                    break
                futures[future] = run_ids
            done = wait(futures, return_when=FIRST_COMPLETED).done if futures else set()
            for future in done:
                run_ids = futures.pop(future)
                try:
                    train_seconds += future.result()
                except Exception as err:
                    died = engine.lost_worker(err)
                    lost = lost or (died and engine.breaks)
                    reason = "its worker process died" if died else _first_line(err)
                    for run_id in run_ids:
                        failed(run_id, reason)
                for run_id in run_ids:
                    in_flight.pop(run_id, None)
                if shown is not None:
                    shown.update(len(run_ids))
            if lost and not futures:
                engine.renew()
                lost = False
    except BaseException:
        engine.stop()  # before the driver marks the runs in flight KILLED
        raise
    engine.close()
    return train_seconds


_worker_trackers: dict[str, Tracker] = {}


def _work(uri: str, run_ids: list[str], configs: list[RunConfig], inputs: bool,
          guard: bool) -> float:  # fmt: skip
    """A worker's job: grid points trained together, recorded under the runs the driver
    created."""
    if uri not in _worker_trackers:
        _worker_trackers[uri] = Tracker(uri)
    return execute_group(_worker_trackers[uri], run_ids, configs, inputs=inputs, guard=guard)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"


def sweep_runs(
    tracker: Tracker, experiment_id: str, parent_id: str | None, started
) -> pd.DataFrame:
    """Every run of this sweep as the store has it, one row per attempt (without a parent:
    the runs this invocation started)."""
    if parent_id is not None:
        found = tracker.children(experiment_id, parent_id)
    else:
        found = [tracker.client.get_run(run_id) for run_id in started]
    rows = []
    for run in found:
        tags, metrics = run.data.tags, run.data.metrics
        rows.append(
            {
                "dataset": tags.get("dataset"),
                "device": tags.get("device"),
                "impl": tags.get("impl"),
                "optimizer": tags.get("optimizer", "sgd"),
                "lr": float(tags.get("lr", "nan")),
                "seed": int(tags.get("seed", -1)),
                "status": run.info.status,
                "train_loss": metrics.get("train/loss", np.nan),
                "val_loss": metrics.get("val/loss", np.nan),
                "val_accuracy": metrics.get("val/accuracy", np.nan),
                "max_grad_rel_err": metrics.get("check/max_grad_rel_err", np.nan),
                "max_grad_err_vs_terms": metrics.get("check/max_grad_err_vs_terms", np.nan),
                "seconds": metrics.get("time/fit_s", np.nan),
                "failure": tags.get("failure", ""),
                "failure_reason": tags.get("failure_reason", ""),
                "config_key": tags.get("config_key"),
                "run_id": run.info.run_id,
                "start_time": run.info.start_time,
            }
        )
    columns = ["dataset", "device", "optimizer", "impl", "lr", "seed"]
    frame = pd.DataFrame(rows)
    return frame.sort_values([*columns, "start_time"]).reset_index(drop=True) if rows else frame


def latest_attempts(runs: pd.DataFrame) -> pd.DataFrame:
    """Each grid point's latest attempt (``runs`` is in start order within a point)."""
    return runs.drop_duplicates("config_key", keep="last") if len(runs) else runs


def execute_group(
    tracker: Tracker,
    run_ids: list[str],
    configs: list[RunConfig],
    *,
    inputs: bool = False,
    guard: bool = False,
) -> float:
    """Train grid points in one pass and record each under its run: FINISHED, or FAILED if
    it diverged. Returns the training time. With ``guard``, a run the driver has ended
    meanwhile (KILLED on an interrupt) keeps that status."""
    results = train_group(configs)
    for run_id, result in zip(run_ids, results, strict=True):
        status = record(tracker, run_id, result)
        if inputs:
            log_inputs(tracker, run_id, [result.config])
        if not guard or tracker.status(run_id) == "RUNNING":
            tracker.finish(run_id, status)
    return sum(result.seconds for result in results)


@cache
def split_digest(dataset, seed: int, val_fraction: float) -> str:
    split = load_split(dataset, seed, val_fraction)
    return digest(*(split[k] for k in ("X_train", "y_train", "X_val", "y_val")))


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


def record(tracker: Tracker, run_id: str, result: RunResult) -> str:
    """Everything about one run, in one batch and one upload; returns its final status."""
    config, history = result.config, result.history
    params = {
        **config.params(),
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
        tags = {"failure": "diverged", "diverged_at_step": str(step),
                "failure_reason": f"loss or parameters not finite at step {step}"}  # fmt: skip
        status = "FAILED"
    tracker.log_run(run_id, history, max_points=config.max_metric_points,
                    max_values=config.max_trajectory_values, params=params, metrics=metrics,
                    tags=tags)  # fmt: skip
    return status


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × device × optimizer × impl: the lr with the lowest mean final validation
    loss, and the largest gradient disagreement over all its runs."""
    group = ["dataset", "device", "optimizer", "impl"]
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
