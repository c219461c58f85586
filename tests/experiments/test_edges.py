"""extend_edges: a grid whose best rate is on its edge widens itself (experiments.edges)."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from experiments import edges, sweep
from experiments.choices import EdgeConfig
from experiments.cli import CONFIGS
from experiments.config import ConfigError, SweepConfig, load_sweep
from experiments.sweep import run_sweep
from experiments.tracking import Tracker
from experiments.writer import Writer

GRID = {
    "datasets": ["iris"],
    "impls": ["manual", "autograd"],
    "lrs": [0.1, 1.0],
    "devices": ["cpu"],
    "seeds": [0, 1],
    "steps": 5,
}


def points_and_runs(losses: dict[float, float | None], status=None) -> tuple[list, pd.DataFrame]:
    """The grid at ``losses``' rates and a runs table with that validation loss at each rate
    (every impl and seed); None: the rate's runs diverged (FAILED)."""
    config = SweepConfig(**{**GRID, "lrs": sorted(losses)})
    points = config.grid()
    rows = [
        {
            "config_key": p.key,
            "status": "FAILED" if losses[p.lr] is None else "FINISHED",
            "val/loss": math.nan if losses[p.lr] is None else losses[p.lr] + p.seed * 1e-3,
            "start_time": 0,
        }
        for p in points
    ]
    return points, pd.DataFrame(rows)


def added_rates(losses, grid_lrs=(0.1, 1.0), **bounds) -> list[float]:
    points, runs = points_and_runs(losses)
    added = edges.beyond(points, runs, grid_lrs, EdgeConfig(**bounds))
    rates = sorted({p.lr for p in added})
    # every rate added comes with every implementation and seed of the setting
    assert sorted((p.impl, p.seed, p.lr) for p in added) == sorted(
        (impl, seed, lr) for impl in GRID["impls"] for seed in GRID["seeds"] for lr in rates
    )
    return rates


def test_a_best_rate_on_an_edge_adds_the_next_rate_at_the_grids_spacing():
    assert added_rates({0.1: 0.5, 1.0: 0.2}) == [10.0]
    assert added_rates({0.1: 0.2, 1.0: 0.5}) == [0.01]
    assert added_rates({0.1: 0.3, 0.5: 0.2}, grid_lrs=(0.1, 0.5)) == [2.5]


def test_an_interior_best_a_worse_or_diverged_new_rate_or_a_bound_adds_nothing():
    assert added_rates({0.1: 0.5, 1.0: 0.2, 10.0: 0.3}) == []  # the new rate is worse
    assert added_rates({0.1: 0.5, 1.0: 0.2, 10.0: None}) == []  # it diverged
    assert added_rates({0.1: 0.5, 1.0: 0.2}, lr_max=5) == []
    assert added_rates({0.1: 0.2, 1.0: 0.5}, lr_min=0.05) == []
    # the 2 rates beyond the grid's 1.0 are as many as max_added allows
    assert added_rates({0.1: 0.5, 1.0: 0.2, 10.0: 0.1, 100.0: 0.05}, max_added=2) == []
    assert added_rates({0.1: 0.5, 1.0: 0.2, 10.0: 0.1, 100.0: 0.05}, max_added=3) == [1000.0]


def test_the_metric_that_judges_a_rate_is_the_users():
    points, runs = points_and_runs({0.1: 0.5, 1.0: 0.2})
    runs["train/loss"] = [0.1 if p.lr == 0.1 else 0.3 for p in points]  # the rows' order
    by_train = edges.beyond(points, runs, (0.1, 1.0), EdgeConfig(metric="train/loss"))
    assert {p.lr for p in by_train} == {0.01}  # by val/loss it would be 10


def test_a_rate_one_seed_of_which_diverged_is_not_best():
    points, runs = points_and_runs({0.1: 0.5, 1.0: 0.2})
    top = [p.key for p in points if p.lr == 1.0 and p.seed == 1]
    runs.loc[runs.config_key.isin(top), ["status", "val/loss"]] = ["FAILED", math.nan]
    added = edges.beyond(points, runs, (0.1, 1.0), EdgeConfig())
    assert {p.lr for p in added} == {0.01}  # 0.1, the lower edge, is now the best


@pytest.mark.slow  # 12 s; the rules above are unit-tested in make test
def test_a_sweep_widens_until_the_best_is_inside_and_a_resume_trains_nothing(tmp_path, monkeypatch):
    def writer_up(self):  # every run recorded by the background writer, across the rounds
        if self.writer is None:
            self.writer = Writer(self.tracker.uri)
            while not self.writer.ready():
                time.sleep(0.05)

    monkeypatch.setattr(sweep.Sweep, "_record_aside", writer_up)
    tracker = Tracker(f"sqlite:///{tmp_path / 'edges.db'}")
    config = SweepConfig(**GRID, name="edges", extend_edges={"max_added": 2})
    first = run_sweep(config, tracker, progress=False)
    runs = first.runs
    added = runs[runs.added_by == "extend_edges"]
    assert sorted(added.lr.unique()) == [10.0, 100.0]  # iris at 5 steps: the larger, the better
    assert len(added) == 2 * len(GRID["impls"]) * len(GRID["seeds"])
    assert (runs[runs.added_by == ""].lr.isin(GRID["lrs"])).all()
    assert (runs.status == "FINISHED").all()
    parent = MlflowClient(tracker.uri).get_run(first.parent_id)
    assert parent.data.metrics["sweep/added"] == len(added)
    again = run_sweep(config, tracker, progress=False)
    assert again.skipped == len(runs) and len(again.runs) == len(runs)


def test_extend_edges_is_checked_and_leaves_a_sweep_without_it_as_it_was():
    with pytest.raises(ConfigError, match="extend_edges needs at least two lrs"):
        load_sweep(None, {**GRID, "lrs": [0.1], "extend_edges": True})
    with pytest.raises(ConfigError, match=r"lr_min \(2\) must be below lr_max"):
        load_sweep(None, {**GRID, "extend_edges": {"lr_min": 2, "lr_max": 1}})
    with pytest.raises(ConfigError, match="valid keys: metric, max_added, lr_min, lr_max"):
        load_sweep(None, {**GRID, "extend_edges": {"max": 2}})
    plain = SweepConfig(**GRID)
    assert SweepConfig(**GRID, extend_edges=False).key == plain.key
    assert SweepConfig(**GRID, extend_edges=True).extend_edges == EdgeConfig()
    assert SweepConfig(**GRID, extend_edges=True).key != plain.key
    assert load_sweep(CONFIGS / "edges.yaml", {}).extend_edges.max_added == 4
