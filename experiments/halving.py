"""Successive halving of the learning rates (``halving``): every rate trains to the first rung,
the best share of them goes on to the next, and so on until the survivors reach the full steps
(Jamieson & Talwalkar 2016; the rule ASHA and Hyperband run asynchronously).

A setting is every grid point that differs only in lr, seed and implementation, so a rate is
judged on the mean of its metric over the seeds and the implementations (which share data,
split and start), never on one seed, and paired runs stay paired: a rate goes on or stops with
all its seeds and implementations. Each rung is its own set of runs (the grid's points with the
rung's steps), trained in the sweep's ordinary passes, K rates at once where they batch: the
stopped rates cost nothing more, the survivors train their rung from the start (deterministic,
so a resumed sweep, which finds the rungs already run, reaches the same decisions). A rung's
run of a rate that went on is tagged ``halving=promoted``; one that stopped there is its rate's
record, ``halving=stopped`` at ``halving_step``; the survivors' full runs are
``halving=kept``.
"""

from __future__ import annotations

import math

import pandas as pd

from experiments.choices import HalvingConfig
from experiments.config import RunConfig
from experiments.findings import by_setting, rate_means
from experiments.records import COMPLETED, HALVING, HALVING_STEP, finals, latest_attempts


def at(points: list[RunConfig], steps: int) -> list[RunConfig]:
    """The points of a rung: ``points`` with ``steps`` (the last rung: the points themselves)."""
    return [p if p.steps == steps else p.model_copy(update={"steps": steps}) for p in points]


def judge(rung: list[RunConfig], runs: pd.DataFrame, halving: HalvingConfig) -> set[str]:
    """The points of ``rung`` whose rate goes on, by config key: per setting, the
    ⌈keep · rates⌉ rates with the lowest mean ``metric`` (a rate with a run that did not
    finish, diverged or failed, goes last)."""
    values = finals(runs, halving.metric)
    kept = set()
    for setting in by_setting(rung):
        means = rate_means(setting, values)
        n_kept = max(1, math.ceil(halving.keep * len(means)))
        best = sorted(means, key=lambda lr: (means[lr], lr))[:n_kept]
        kept.update(p.key for p in setting if p.lr in best)
    return kept


def verdicts(rung: list[RunConfig], runs: pd.DataFrame, kept: set[str]) -> dict[str, dict]:
    """The tags that say what each of the rung's runs did next, by run id: stopped there, or
    promoted (its rate went on). A run that diverged or failed keeps saying so."""
    latest = latest_attempts(runs).set_index("config_key")
    out = {}
    for point in rung:
        if point.key in latest.index and latest.at[point.key, "status"] in COMPLETED:
            verdict = "promoted" if point.key in kept else "stopped"
            out[latest.at[point.key, "run_id"]] = {HALVING: verdict, HALVING_STEP: str(point.steps)}
    return out
