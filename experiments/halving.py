"""Successive halving of the learning rates inside one pass (``halving``): every rate trains to
the first rung, the best share of them goes on to the next, and so on until the survivors reach
the full steps (Jamieson & Talwalkar 2016; the rule ASHA and Hyperband run asynchronously).

A setting is every grid point that differs only in lr, seed and implementation, so a rate is
judged on the mean of its metric over the seeds and the implementations (which share data,
split and start), never on one seed, and paired runs stay paired: a rate goes on or stops with
all its seeds and implementations. A setting is therefore one pass: a loop for each seed and
implementation (its rates side by side where they batch), all run to a rung, judged there
together. A rate that stops leaves its batch (:meth:`experiments.lr_batch.LrBatch.keep`), so
it costs nothing more, and its runs end at the rung, whole: tagged ``halving=stopped`` at
``halving_step``. The survivors go on from where they are, the rule's state included: no step
is trained twice. Their runs are ``halving=kept``.

Training is deterministic, so a resumed sweep trains a setting with any run not finished
again, whole, reaches the same decisions, and records only what it had not.
"""

from __future__ import annotations

import math

from experiments.choices import HalvingConfig
from experiments.config import RunConfig, by_setting, rate_means
from experiments.loop import Loop

# The tags of a halving sweep's runs: kept to the full steps, or stopped, and at which step.
HALVING, HALVING_STEP = "halving", "halving_step"


def passes(grid: list[RunConfig], finished: set[str]) -> list[list[RunConfig]]:
    """One pass a setting, whole, for each setting with a grid point not finished yet."""
    return [points for points in by_setting(grid) if any(p.key not in finished for p in points)]


def judge(points: list[RunConfig], values: dict[str, float], halving: HalvingConfig) -> set[float]:
    """The rates that go on: the ⌈keep · rates⌉ with the lowest mean of ``values`` (by config
    key) over their points; a rate with a value missing or not finite (a run that diverged)
    goes last."""
    means = rate_means(points, values)
    n_kept = max(1, math.ceil(halving.keep * len(means)))
    return set(sorted(means, key=lambda lr: (means[lr], lr))[:n_kept])


def run(groups: list[list[RunConfig]], loops: list[Loop], halving: HalvingConfig) -> list[int]:
    """Run each group's loop (its points' rates side by side, or one point) through the rungs,
    stopping the rates judged behind at each; the last row of every point's run, in order."""
    steps = groups[0][0].steps
    alive = [list(range(len(group))) for group in groups]  # the columns still trained
    ends = {p.key: steps for group in groups for p in group}
    for rung in halving.rungs(steps)[:-1]:
        values = {}
        for group, loop, columns in zip(groups, loops, alive, strict=True):
            if columns:
                loop.run_to(rung)  # the rung's row: its metric is known
                metric = loop.at(halving.metric, rung).reshape(-1)
                values |= {group[c].key: float(metric[c]) for c in columns}
        points = [group[c] for group, columns in zip(groups, alive, strict=True) for c in columns]
        kept = judge(points, values, halving)
        for group, loop, columns in zip(groups, loops, alive, strict=True):
            going = [c for c in columns if group[c].lr in kept]
            for c in set(columns) - set(going):
                ends[group[c].key] = rung
            if going and len(going) < len(columns):
                loop.keep([columns.index(c) for c in going])
            columns[:] = going
    for loop, columns in zip(loops, alive, strict=True):
        if columns:
            loop.run_to(steps)
    return [ends[p.key] for group in groups for p in group]


def tags(end: int, steps: int) -> dict[str, str]:
    """What the search says of a run that ended at row ``end``: kept to the full steps, or
    stopped there."""
    return {HALVING: "kept"} if end == steps else {HALVING: "stopped", HALVING_STEP: str(end)}
