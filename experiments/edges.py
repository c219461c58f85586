"""Grids that widen themselves (``extend_edges``): when a setting's best learning rate is the
first or last of its grid, the sweep adds the next rate beyond it and trains it, until the
best is inside the grid, the new rate is worse or diverges, or the user's bound is reached.

A setting is every grid point that differs only in lr, seed and implementation (the same
dataset, rule, device and dtype), so the added rate comes with all its seeds and all its
implementations, and paired runs stay paired. The best rate of each implementation is the
one with the lowest final validation loss averaged over the seeds (the rule ``summary.csv``
uses), or the training loss with ``metric: train/loss``; a setting is widened on a side when
any of its implementations is best there. The next rate keeps the grid's own spacing: the
ratio of the two rates at that edge.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from experiments.choices import EdgeConfig
from experiments.config import RunConfig, by_setting, rate_means
from experiments.records import finals


def beyond(
    points: list[RunConfig], runs: pd.DataFrame, grid_lrs: Iterable[float], edges: EdgeConfig
) -> list[RunConfig]:
    """The points to add to ``points`` (the grid so far, with what was added before), given
    how its runs went (``records.runs_table`` of them); none once every best is inside."""
    grid_lrs = sorted(grid_lrs)
    losses = finals(runs, edges.metric)
    added: list[RunConfig] = []
    for group in by_setting(points):
        rates = sorted({p.lr for p in group})
        impls = {p.impl for p in group}  # the best rate of each: any may stand on an edge
        bests = {_best_lr([p for p in group if p.impl == impl], losses) for impl in impls}
        new = []
        if rates[0] in bests and sum(r < grid_lrs[0] for r in rates) < edges.max_added:
            new.append(_round(rates[0] ** 2 / rates[1]))
        if rates[-1] in bests and sum(r > grid_lrs[-1] for r in rates) < edges.max_added:
            new.append(_round(rates[-1] ** 2 / rates[-2]))
        new = [lr for lr in new if edges.lr_min <= lr <= edges.lr_max and lr not in rates]
        # every (impl, seed) of the setting, its new rates side by side (one pass when batched)
        templates = {(p.impl, p.seed): p for p in group}.values()
        added += [p.model_copy(update={"lr": lr}) for p in templates for lr in new]
    return added


def _best_lr(points: list[RunConfig], losses: dict[str, float]) -> float | None:
    """The rate with the lowest mean final loss over seeds; a rate with a seed that did not
    finish (diverged, failed) cannot be best. None when no rate finished."""
    means = {lr: m for lr, m in rate_means(points, losses).items() if math.isfinite(m)}
    return min(means, key=means.get) if means else None


def _round(lr: float) -> float:
    """Six significant digits: the rate as a person reads it in a run's name."""
    return float(f"{lr:.6g}")
