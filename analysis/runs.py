"""Read a sweep back from MLflow as tidy pandas: one row per run, and its per-step artifacts.

Works against any tracking URI: the default local SQLite store, another file, or a server.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd
import torch

from experiments.engine import History
from experiments.tracking import Tracker

# Params that are not strings, and the type each is cast back to.
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
    "optimizer.momentum": float,
    "optimizer.eps": float,
    "optimizer.weight_decay": float,
    "check_every_resolved": int,
    "trajectory_every": int,
}
# What pairs a run with its autograd twin (the same rule: sgd, adam, no zero_grad, ...).
KEYS = ["dataset", "device", "dtype", "seed", "optimizer", "lr"]


class AnalysisError(ValueError):
    """Nothing to analyse (unknown or empty experiment); the message is one line."""


@dataclass
class Sweep:
    """The runs of one sweep (the children of one parent run) and where they live."""

    tracker: Tracker
    experiment_id: str
    experiment_name: str
    parent_id: str
    runs: pd.DataFrame  # one row per child run, params as real types, final metrics

    _frames: dict[tuple[str, str], pd.DataFrame] = field(default_factory=dict, repr=False)

    @cached_property
    def _folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="sweep-artifacts-"))

    def _artifact(self, run_id: str, name: str) -> pd.DataFrame:
        """Downloaded and parsed once per sweep: pairs, figures and tables all read them.
        Callers get the cached frame: treat it as read-only."""
        if (run_id, name) not in self._frames:
            local = self._folder / run_id
            local.mkdir(parents=True, exist_ok=True)
            self.tracker.client.download_artifacts(run_id, name, str(local))
            self._frames[run_id, name] = pd.read_parquet(local / name)
        return self._frames[run_id, name]

    def history(self, run_id: str) -> pd.DataFrame:
        """Every step of one run: ``step`` and the metric columns."""
        return self._artifact(run_id, "history.parquet")

    def trajectory(self, run_id: str) -> pd.DataFrame:
        """w and dw per (kept) step: ``step, w_0 …, dw_0 …``."""
        return self._artifact(run_id, "trajectory.parquet")

    def as_history(self, run_id: str) -> History:
        """The run as the engine's :class:`History` (rows kept in ``trajectory.parquet``)."""
        frame, trajectory = self.history(run_id), self.trajectory(run_id)
        rows = frame.set_index("step").loc[trajectory["step"]]
        metrics = {c: torch.tensor(rows[c].to_numpy()) for c in rows.columns}
        w = torch.tensor(trajectory.filter(regex=r"^w_\d+$").to_numpy())
        dw = torch.tensor(trajectory.filter(regex=r"^dw_\d+$").to_numpy())
        run = self.runs.set_index("run_id").loc[run_id]
        classes = int(run["n_classes"])
        if classes == 2:  # w in the trajectory, b as the param/b series
            return History(metrics, w, metrics["param/b"], dw, metrics["grad/b"])
        shape = (len(w), int(run["n_features"]), classes)  # W row by row, then b
        W, b = w[:, :-classes].reshape(shape), w[:, -classes:]
        dW, db = dw[:, :-classes].reshape(shape), dw[:, -classes:]
        return History(metrics, W, b, dW, db)


def load_sweep(
    experiment: str = "default", tracking_uri: str | None = None, parent_id: str | None = None
) -> Sweep:
    """The latest sweep of ``experiment`` (or the one under ``parent_id``)."""
    tracker = Tracker(tracking_uri)
    tracker.open()
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in tracker.client.search_experiments()) or "none"
        raise AnalysisError(f"no experiment {experiment!r} in {tracker.uri}; there are: {names}")
    everything = _search(tracker, found.experiment_id)
    for column in ("tags.kind", "tags.mlflow.parentRunId"):  # absent when no run set them
        if column not in everything:
            everything[column] = None
    parents = everything[everything["tags.kind"] == "sweep"]
    if parent_id is None:
        if parents.empty:
            raise AnalysisError(f"experiment {experiment!r} holds no sweep; run one first")
        parent_id = parents.sort_values("start_time").run_id.iloc[-1]
    children = everything[everything["tags.mlflow.parentRunId"] == parent_id]
    if children.empty:
        raise AnalysisError(f"sweep {parent_id} of {experiment!r} has no runs")
    runs = tidy(children)
    # A resumed sweep holds earlier attempts (KILLED, FAILED) of some grid points: keep each
    # point's FINISHED run if it has one, else its latest attempt.
    runs["_finished"] = runs.status == "FINISHED"
    runs = runs.sort_values(["_finished", "start_time"]).drop_duplicates("config_key", keep="last")
    runs = runs.drop(columns="_finished").sort_values([*KEYS, "impl"]).reset_index(drop=True)
    return Sweep(tracker, found.experiment_id, experiment, parent_id, runs)


def _search(tracker: Tracker, experiment_id: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(tracker.uri)
    return mlflow.search_runs([experiment_id], max_results=50_000, output_format="pandas")


def tidy(raw: pd.DataFrame) -> pd.DataFrame:
    """MLflow's ``params.*``/``metrics.*``/``tags.*`` columns → plain, typed columns."""
    out = pd.DataFrame(
        {
            "run_id": raw["run_id"],
            "run_name": raw.get("tags.mlflow.runName"),
            "status": raw["status"],
            "impl": raw["params.impl"],
            "dataset": raw["tags.dataset"],
            "config_key": raw["tags.config_key"],
            "start_time": raw["start_time"],
            "failure": raw.get("tags.failure", pd.Series(index=raw.index, dtype=object)),
            "failure_reason": raw.get(
                "tags.failure_reason", pd.Series(index=raw.index, dtype=object)
            ),
        }
    )
    for column in raw.columns:
        if column.startswith("params.") and column not in ("params.impl", "params.dataset"):
            name = column.removeprefix("params.")
            cast = PARAM_TYPES.get(name)
            out[name] = raw[column].map(_or_nan(cast)) if cast else raw[column]
        elif column.startswith("metrics."):
            out[column.removeprefix("metrics.")] = raw[column].astype(float)
    out["dataset_name"] = raw["params.dataset"]
    # Runs recorded before these params existed: plain SGD, binary.
    defaults = {"optimizer": "sgd", "optimizer.name": "sgd", "optimizer.weight_decay": 0.0,
                "optimizer.zero_grad": "True", "n_classes": 2}  # fmt: skip
    for name, default in defaults.items():
        out[name] = out[name].fillna(default) if name in out else default
    out["n_classes"] = pd.to_numeric(out["n_classes"]).fillna(2).astype(int)
    out["weight_decay"] = out["optimizer.weight_decay"].astype(float)
    out["zero_grad"] = out["optimizer.zero_grad"].astype(str) == "True"
    return out.sort_values([*KEYS, "impl"]).reset_index(drop=True)


def _or_nan(cast):
    """A param absent from some runs (recorded by an older version) reads as NaN."""
    return lambda value: float("nan") if value is None or value != value else cast(value)


def dataset_config(run: pd.Series):
    """The run's dataset as the sweep config had it (name and loader parameters)."""
    from experiments.config import DatasetConfig

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
