"""One training pass: the grid points that share it, trained in one go, a result for each.

:func:`train_pass` is a pure function of its grid points (their data, models and the loop), so
any engine can run it anywhere; recording the results is the tracking layer's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from experiments import lr_batch
from experiments.config import RunConfig
from experiments.data import run_data
from experiments.loop import History, fit


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    history: History
    seconds: float  # this run's share of the pass's wall time: steps, metrics, checks
    shape: dict[str, int]  # n_train, n_val, n_features, n_classes
    check_every: int
    lr_batch: int = 1  # how many learning rates shared the pass that trained it


def train_pass(configs: list[RunConfig]) -> list[RunResult]:
    """Train grid points that differ only in lr in one pass, one model per rate side by side
    (a pass of one is an ordinary run). Runs that differ only in ``impl`` share data, split,
    initialisation and seed."""
    config = configs[0]
    if any(c.model_dump(exclude={"lr"}) != config.model_dump(exclude={"lr"}) for c in configs):
        raise ValueError("the runs of one pass must differ in lr only")
    data = run_data(config)
    lrs = [c.lr for c in configs]
    new = {
        "dtype": data.X.dtype,
        "device": config.device,
        "seed": config.seed,
        "n_classes": data.n_classes,
        "optimizer": config.optimizer.rule(),
    }
    model = lr_batch.build(config.impl, data.X.shape[1], lrs, **new)
    # The check compares each step's gradient with autograd's at the same point. Without
    # zero_grad the step uses the sum of all past gradients by design: nothing to check.
    checked = config.impl != "autograd" and config.optimizer.zero_grad
    reference = lr_batch.build("autograd", data.X.shape[1], lrs, **new) if checked else None
    check_every = config.check_every_for(data.X.numel())
    start = time.perf_counter()
    history = fit(
        model,
        data.X,
        data.y,
        config.steps,
        X_val=data.X_val,
        y_val=data.y_val,
        reference=reference,
        check_every=check_every,
        max_trajectory_values=config.max_trajectory_values,
        cuda_graphs=config.cuda_graphs,
    )
    share = (time.perf_counter() - start) / len(configs)  # fit() ends on the host: work done
    return [
        RunResult(c, run, share, data.shape, check_every, len(configs))
        for c, run in zip(configs, history.runs(), strict=True)
    ]
