"""Successive halving of the learning rates inside one pass (experiments.halving): rungs, who
goes on, what a stopped run records, that survivors go on as if never judged, what a resumed
sweep does, and what the analysis says of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from analysis.report import build
from analysis.runs import load_sweep as read_sweep
from experiments import findings, halving, lr_batch, records
from experiments.choices import HalvingConfig
from experiments.cli import CONFIGS
from experiments.config import ConfigError, SweepConfig, load_sweep
from experiments.sweep import run_sweep
from experiments.tracking import Tracker
from experiments.training import train_pass

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
    points = SweepConfig(**{**GRID, "lrs": sorted({lr for lr, _ in losses})}).grid()
    values = {p.key: losses[p.lr, p.seed] for p in points if losses[p.lr, p.seed] is not None}
    return sorted(halving.judge(points, values, HalvingConfig(keep=keep)))


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


def test_the_rates_behind_stop_at_each_rung_with_their_history(halved):
    tracker, _, first, full = halved
    runs = first.runs
    assert len(runs) == len(full.runs)  # one run a grid point, however far it went
    ends = runs.groupby("lr")[["status", "halving_step"]].agg(set)
    assert all(len(s) == 1 for s in ends.status) and all(len(s) == 1 for s in ends.halving_step)
    outcome = ends.map(lambda s: next(iter(s))).value_counts().to_dict()
    assert outcome == {("STOPPED", "10"): 2, ("STOPPED", "20"): 1, ("FINISHED", ""): 1}
    assert set(runs[runs.status == "FINISHED"].halving) == {"kept"}
    stopped = runs[runs.status == "STOPPED"]
    client = MlflowClient(tracker.uri)
    assert {client.get_run(r).info.status for r in stopped.run_id} == {"FINISHED"}
    parent = client.get_run(first.parent_id).data.metrics
    assert parent["sweep/stopped"] == len(stopped)
    # Per seed and implementation: 2 rates × 10 steps + 1 × 20 + 1 × 40, of 4 rates × 40 steps.
    assert parent["sweep/steps_share"] == pytest.approx(80 / 160, rel=1e-12, abs=0)
    # A stopped run is the first steps of the run its rate trains to the end; a kept one
    # goes on from where it was (its rule's state too) and is the run of the full grid.
    sweep, whole = read_sweep("halving", tracker.uri), read_sweep("full", tracker.uri)
    whole_runs = whole.runs.set_index(["impl", "lr", "seed"])
    for row in runs.itertuples():
        ran = sweep.history(row.run_id)
        full_run = whole.history(whole_runs.loc[(row.impl, row.lr, row.seed), "run_id"])
        rows = int(row.halving_step or row.steps) + 1
        assert len(ran) == rows
        for name in ("train/loss", "val/loss", "grad/w_norm"):
            np.testing.assert_allclose(ran[name], full_run[name][:rows], rtol=1e-12, atol=0)


@pytest.mark.parametrize("rule", ["adam", "nesterov"])
@pytest.mark.parametrize("impls", [["manual", "function"], ["autograd"]], ids=["batched", "alone"])
def test_survivors_go_on_with_their_rules_state_as_if_never_judged(rule, impls):
    """In one pass, a setting's rates stop at the rungs and the rest shrink their batch; each
    run is the run its rate trains alone, to where it stopped (Adam's moments and momentum's
    buffer shrink with the batch)."""
    config = SweepConfig(**{**GRID, "impls": impls, "optimizers": [rule]}, halving=True)
    setting = config.grid()
    searched = train_pass(setting, config.halving)
    alone = [r for group in lr_batch.passes(setting) for r in train_pass(group)]
    ends = [int(r.tags.get(halving.HALVING_STEP, r.config.steps)) for r in searched]
    assert sorted(set(ends)) == [10, 20, 40]
    for result, reference, end in zip(searched, alone, ends, strict=True):
        assert result.history.steps == end and result.config == reference.config
        for name, values in result.history.metrics.items():
            expected = reference.history.metrics[name][: end + 1]
            # The check's errors are rounding itself (~1e-16): they move with the batch's width.
            atol = 1e-14 if name.startswith("check/") else 0
            torch.testing.assert_close(values, expected, rtol=1e-12, atol=atol, equal_nan=True)
        kept = reference.history.kept <= end
        torch.testing.assert_close(result.history.w, reference.history.w[kept], rtol=1e-12, atol=0)


def test_a_resumed_halving_sweep_trains_nothing_and_decides_the_same(halved):
    tracker, config, first, _ = halved
    again = run_sweep(config, tracker, progress=False)
    assert again.skipped == len(first.runs) and len(again.runs) == len(first.runs)
    by_key = again.runs.set_index("config_key").status
    assert by_key.to_dict() == first.runs.set_index("config_key").status.to_dict()


def test_a_setting_cut_short_is_trained_again_whole_and_only_its_lost_runs_recorded(tmp_path):
    """A run left KILLED (an interrupt) is trained again with its whole setting, for the same
    decisions; the runs that finished before stay as they are."""
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    config = SweepConfig(**{**GRID, "impls": ["manual"]}, name="cut", halving=True)
    first = run_sweep(config, tracker, progress=False).runs.set_index("config_key")
    lost = first[first.halving_step == "20"].index[0]
    MlflowClient(tracker.uri).set_terminated(first.at[lost, "run_id"], "KILLED")
    again = run_sweep(config, tracker, progress=False)
    assert again.skipped == len(first) - 1
    latest = records.latest_attempts(again.runs).set_index("config_key")
    assert latest.loc[lost, ["status", "halving_step"]].tolist() == ["STOPPED", "20"]
    assert latest.drop(lost).run_id.to_dict() == first.drop(lost).run_id.to_dict()


def test_the_analysis_holds_the_kept_rate_against_the_grids_best(halved):
    tracker, _, _, full = halved
    sweep, whole = read_sweep("halving", tracker.uri), read_sweep("full", tracker.uri)
    table = build(sweep, whole).tables["halving.csv"].iloc[0]
    best = findings.best_lrs(full.runs)
    assert table.kept_lr == table.grid_best_lr == best.best_lr.iloc[0]
    assert table.kept_vs_grid_best == pytest.approx(0, abs=1e-12)
    assert table.steps_share == pytest.approx(0.5, rel=1e-12, abs=0) and table.rates == 4
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
