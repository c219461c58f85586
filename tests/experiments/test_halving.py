"""Successive halving of the learning rates (experiments.halving): rungs, who goes on, what a
stopped run records, what a resumed sweep does, and what the analysis says of it."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.report import build
from analysis.runs import load_sweep as read_sweep
from experiments import findings, halving
from experiments.choices import HalvingConfig
from experiments.cli import CONFIGS
from experiments.config import ConfigError, SweepConfig, load_sweep
from experiments.sweep import run_sweep
from experiments.tracking import Tracker

GRID = {
    "datasets": ["iris"],
    "impls": ["manual", "autograd"],
    "lrs": [0.01, 0.1, 1.0, 10.0],
    "devices": ["cpu"],
    "seeds": [0, 1],
    "steps": 40,
    "dtype": "float64",
}


def test_rungs_grow_by_one_over_keep_up_to_the_full_steps():
    assert HalvingConfig().rungs(1000) == [250, 500, 1000]
    assert HalvingConfig(rounds=4).rungs(1000) == [125, 250, 500, 1000]
    assert HalvingConfig(rounds=3, keep=1 / 3).rungs(100) == [11, 33, 100]
    assert HalvingConfig(rounds=5).rungs(4) == [1, 2, 4]  # no rung of 0 steps, none twice


def judged(losses: dict[tuple[float, int], float | None], keep=0.5) -> list[float]:
    """The rates that go on, given each (lr, seed)'s loss (None: it diverged)."""
    rung = SweepConfig(**{**GRID, "lrs": sorted({lr for lr, _ in losses})}).grid()
    runs = pd.DataFrame(
        {
            "config_key": p.key,
            "status": "FAILED" if losses[p.lr, p.seed] is None else "FINISHED",
            "val/loss": math.nan if losses[p.lr, p.seed] is None else losses[p.lr, p.seed],
            "start_time": 0,
        }
        for p in rung
    )
    kept = halving.judge(rung, runs, HalvingConfig(keep=keep))
    rates = sorted({p.lr for p in rung if p.key in kept})
    assert kept == {p.key for p in rung if p.lr in rates}  # every seed and impl of a rate
    return rates


def test_a_rate_is_judged_on_its_mean_over_the_seeds():
    losses = {(0.01, 0): 0.5, (0.01, 1): 0.5, (0.1, 0): 0.3, (0.1, 1): 0.3}
    losses |= {(1.0, 0): 0.01, (1.0, 1): 0.8, (10.0, 0): 0.2, (10.0, 1): 0.2}  # 1.0: one lucky
    assert judged(losses) == [0.1, 10.0]
    assert judged(losses, keep=0.25) == [10.0]
    assert judged(losses, keep=0.6) == [0.1, 1.0, 10.0]  # ⌈0.6 · 4⌉ = 3


def test_a_rate_with_a_seed_that_diverged_goes_last():
    losses = {(0.01, s): 0.5 for s in (0, 1)} | {(0.1, s): 0.4 for s in (0, 1)}
    losses |= {(1.0, 0): 0.01, (1.0, 1): None, (10.0, 0): None, (10.0, 1): None}
    assert judged(losses) == [0.01, 0.1]


@pytest.fixture(scope="module")
def halved(tmp_path_factory):
    """A halving sweep of GRID (rungs of 10, 20 and 40 steps) and the full grid beside it."""
    tracker = Tracker(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")
    config = SweepConfig(**GRID, name="halving", halving=True)
    first = run_sweep(config, tracker, progress=False)
    full = run_sweep(SweepConfig(**GRID, name="full"), tracker, progress=False)
    return tracker, config, first, full


def test_each_rung_keeps_half_the_rates_and_the_rest_stop_with_their_history(halved):
    tracker, _, first, _ = halved
    runs = first.runs
    rates = runs.groupby(["steps", "status"])["lr"].nunique().to_dict()
    assert rates == {(10, "STOPPED"): 2, (10, "PROMOTED"): 2, (20, "STOPPED"): 1,
                     (20, "PROMOTED"): 1, (40, "FINISHED"): 1}  # fmt: skip
    assert (runs.groupby(["lr", "steps"]).size() == 2 * 2).all()  # 2 seeds × 2 impls a rung
    stopped = runs[runs.status == "STOPPED"]
    assert (stopped.halving_step.astype(int) == stopped.steps).all()
    assert set(runs[runs.status == "FINISHED"].halving) == {"kept"}
    client = MlflowClient(tracker.uri)
    assert {client.get_run(r).info.status for r in stopped.run_id} == {"FINISHED"}
    parent = client.get_run(first.parent_id).data.metrics
    assert parent["sweep/stopped"] == len(stopped)
    # 32 runs × 10 steps + 16 × 20 + 8 × 40, against 32 points × 40 steps
    assert parent["sweep/steps_share"] == pytest.approx(960 / 1280, rel=1e-12, abs=0)
    # A stopped run is the first steps of the run its rate would have trained to the end.
    sweep, whole = read_sweep("halving", tracker.uri), read_sweep("full", tracker.uri)
    whole_runs = whole.runs.set_index(["impl", "lr", "seed"])
    for row in stopped.itertuples():
        ran = sweep.history(row.run_id)
        full_run = whole.history(whole_runs.loc[(row.impl, row.lr, row.seed), "run_id"])
        assert len(ran) == row.steps + 1
        np.testing.assert_allclose(
            ran["train/loss"], full_run["train/loss"][: row.steps + 1], rtol=1e-12, atol=0
        )


def test_a_resumed_halving_sweep_trains_nothing_and_decides_the_same(halved):
    tracker, config, first, _ = halved
    again = run_sweep(config, tracker, progress=False)
    assert again.skipped == len(first.runs) and len(again.runs) == len(first.runs)
    by_key = again.runs.set_index("config_key").status
    assert by_key.to_dict() == first.runs.set_index("config_key").status.to_dict()


def test_the_analysis_holds_the_kept_rate_against_the_grids_best(halved):
    tracker, _, _, full = halved
    sweep, whole = read_sweep("halving", tracker.uri), read_sweep("full", tracker.uri)
    table = build(sweep, whole).tables["halving.csv"].iloc[0]
    best = findings.best_lrs(full.runs)
    assert table.kept_lr == table.grid_best_lr == best.best_lr.iloc[0]
    assert table.kept_vs_grid_best == pytest.approx(0, abs=1e-12)
    assert table.steps_share == pytest.approx(0.75, rel=1e-12, abs=0) and table.rates == 4
    assert "halving.csv" not in build(whole).tables


def test_halving_is_checked_and_leaves_a_sweep_without_it_as_it_was():
    with pytest.raises(ConfigError, match="halving needs at least two lrs"):
        load_sweep(None, {**GRID, "lrs": [0.1], "halving": True})
    with pytest.raises(ConfigError, match="halving and extend_edges: choose one"):
        load_sweep(None, {**GRID, "halving": True, "extend_edges": True})
    with pytest.raises(ConfigError, match=r"halving\.keep"):
        load_sweep(None, {**GRID, "halving": {"keep": 1}})
    assert SweepConfig(**GRID, halving=False).key == SweepConfig(**GRID).key
    assert load_sweep(CONFIGS / "halving.yaml", {}).halving == HalvingConfig()
