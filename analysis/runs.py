"""Read a sweep back from MLflow as tidy pandas: one row per run, and its per-step artifacts.

Works against any tracking URI: the default local SQLite store, another file, or a server.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from experiments.loop import History
from experiments.records import KEYS, read_trajectory, runs_table
from experiments.tracking import Tracker
from manual_models import Kind, load_kind


class AnalysisError(ValueError):
    """Nothing to analyse (unknown or empty experiment); the message is one line."""


@dataclass
class Sweep:
    """The runs of one sweep (the children of one parent run) and where they live."""

    tracker: Tracker
    experiment_id: str
    experiment_name: str
    parent_id: str
    runs: pd.DataFrame  # one row per grid point, params as real types, final metrics
    set_aside: int = 0  # earlier attempts of resumed grid points (KILLED, FAILED), not in runs

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
        """The parameters and gradients per (kept) step, as stored: ``step, w[0] …, dw[0] …``
        (:func:`~experiments.records.trajectory_table`; :meth:`named` reads it)."""
        return self._artifact(run_id, "trajectory.parquet")

    def named(self, run_id: str) -> tuple[np.ndarray, dict[str, np.ndarray], dict]:
        """(steps, parameters, gradients) by name in their shapes, of the kept rows, from a
        store of any age (:func:`~experiments.records.read_trajectory`)."""
        classes = int(self.runs.set_index("run_id").loc[run_id, "n_classes"])
        return read_trajectory(
            self.trajectory(run_id), n_classes=classes, history=self.history(run_id)
        )

    def parameters(self, run_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, θ): the kept rows' parameters flat, one row each, in the kind's order, each
        row by row: w (W row by row), then b, as the Hessian by hand orders them."""
        steps, params, _ = self.named(run_id)
        return steps, np.hstack([p.reshape(len(steps), -1) for p in params.values()])

    def as_history(self, run_id: str) -> History:
        """The run as the engine's :class:`History`: every row's metrics, and the parameters
        of the rows kept in ``trajectory.parquet``."""
        frame = self.history(run_id)
        metrics = {c: torch.tensor(frame[c].to_numpy()) for c in frame.columns if c != "step"}
        steps, params, grads = self.named(run_id)
        every = int(self.runs.set_index("run_id").loc[run_id, "trajectory_every"])
        params, grads = ({n: torch.tensor(t) for n, t in d.items()} for d in (params, grads))
        return History(metrics, params, grads, torch.tensor(steps), every)


def run_kind(run: pd.Series) -> type[Kind] | None:
    """The kind of model a run trained: None for the built-in ones, else its ``model:``
    class (imported again, from where the sweep found it)."""
    model = run.get("model", "None")
    return None if model in ("None", None) or pd.isna(model) else load_kind(model)


def step_loss(history: pd.DataFrame) -> pd.Series:
    """The loss each step took, from a run's ``history.parquet``: on its batch with
    mini-batches (whose whole-set ``train/loss`` is there at a cadence only), else the whole
    set's."""
    return history["train/batch_loss" if "train/batch_loss" in history else "train/loss"]


def load_sweep(
    experiment: str = "default", tracking_uri: str | None = None, parent_id: str | None = None
) -> Sweep:
    """The latest sweep of ``experiment`` (or the one under ``parent_id``), its runs in the
    one schema a sweep records them in (:func:`experiments.records.runs_table`)."""
    tracker = Tracker(tracking_uri)
    tracker.open()
    found = tracker.client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(e.name for e in tracker.client.search_experiments()) or "none"
        raise AnalysisError(f"no experiment {experiment!r} in {tracker.uri}; there are: {names}")
    if parent_id is None:
        parent = tracker.latest_sweep(found.experiment_id)
        if parent is None:
            raise AnalysisError(f"experiment {experiment!r} holds no sweep; run one first")
        parent_id = parent.info.run_id
    children = tracker.children(found.experiment_id, parent_id)
    if not children:
        raise AnalysisError(f"sweep {parent_id} of {experiment!r} has no runs")
    runs, set_aside = one_attempt_each(runs_table(children))
    return Sweep(tracker, found.experiment_id, experiment, parent_id, runs, set_aside)


def one_attempt_each(runs: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Each grid point once: its FINISHED run if it has one, else its latest attempt (a
    resumed sweep holds earlier KILLED or FAILED attempts of some points); and how many
    attempts that set aside."""
    finished = runs.assign(_finished=runs.status == "FINISHED")
    kept = finished.sort_values(["_finished", "start_time"])
    kept = kept.drop_duplicates("config_key", keep="last").drop(columns="_finished")
    return kept.sort_values([*KEYS, "impl"]).reset_index(drop=True), len(runs) - len(kept)
