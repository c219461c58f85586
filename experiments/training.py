"""One training pass: the grid points that share it, trained in one go, a result for each.

:func:`train_pass` is a pure function of its grid points (their data, models and the loop), so
any engine can run it anywhere; recording the results is the tracking layer's job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from experiments import halving as search
from experiments import lr_batch
from experiments.batches import batches
from experiments.choices import HalvingConfig
from experiments.config import RunConfig
from experiments.data import RunData, run_data
from experiments.loop import History, Loop
from manual_models import Kind, load_kind


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    history: History
    seconds: float  # this run's share of the pass's wall time: steps, metrics, checks
    shape: dict[str, int]  # n_train, n_val, n_features, n_classes
    check_every: int
    lr_batch: int = 1  # how many learning rates shared the pass that trained it
    tags: dict[str, str] = field(default_factory=dict)  # a search's: where it stopped the run
    batching: dict[str, object] = field(default_factory=dict)  # mini-batches: what it saw


def train_pass(
    configs: list[RunConfig], halving: HalvingConfig | None = None, batch: bool = True
) -> list[RunResult]:
    """Train grid points that differ only in lr in one pass, one model per rate side by side
    (a pass of one is an ordinary run). Runs that differ only in ``impl`` share data, split,
    initialisation and seed. With ``halving``, the pass is a whole setting (its points differ
    in lr, seed and impl), its rates judged together at each rung (:mod:`experiments.halving`);
    ``batch``: its rates side by side where the implementation batches."""
    steps = configs[0].steps
    groups = lr_batch.passes(configs, batch) if halving is not None else [configs]
    stops = halving.rungs(steps) if halving is not None else ()
    started = [_start(group, stops) for group in groups]
    loops = [loop for _, loop in started]
    start = time.perf_counter()
    if halving is None:
        loops[0].run_to(steps)
        ends = [steps] * len(configs)
    else:
        ends = search.run(groups, loops, halving)
    histories = [loop.history() for loop in loops]  # on the host: the work is done
    seconds = time.perf_counter() - start
    share = seconds / max(sum(ends), 1)  # a run's share: the rows it was trained
    ends_of = iter(ends)
    results = []
    for group, (data, loop), whole in zip(groups, started, histories, strict=True):
        last = [next(ends_of) for _ in group]
        for config, history, end in zip(group, whole.runs(last), last, strict=True):
            tags = search.tags(end, steps) if halving is not None else {}
            shape, check_every, seconds = data.shape, loop.check_every, share * end
            batching = _batching(loop)
            results.append(
                RunResult(config, history, seconds, shape, check_every, len(group), tags, batching)
            )
    return results


def _batching(loop: Loop) -> dict[str, object]:
    """A mini-batch run's batches, as its params say them: how many an epoch, the last
    one's size (or that it was dropped), the steps between whole-set measurements, and a
    digest of every order drawn (equal for paired runs)."""
    batches = loop.batches
    if batches is None:
        return {}
    last = batches.n - (batches.per_epoch - 1) * batches.size
    return {
        "batches_per_epoch": batches.per_epoch,
        "last_batch": "dropped" if batches.drop_last and batches.n % batches.size else last,
        "eval_every_resolved": loop.eval_every,
        "batch_digest": batches.digest(),
    }


def _start(configs: list[RunConfig], stops) -> tuple[RunData, Loop]:
    """The data and the loop of points that differ only in lr: one model per rate, side by
    side, and the autograd reference the check compares each step's gradient with."""
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
        "kind": None if config.model is None else load_kind(config.model),
    }
    # A kind of one's own may leave its curvature underived: then there is no sharpness.
    curved = new["kind"] is None or new["kind"].hessian_product is not Kind.hessian_product
    model = lr_batch.build(config.impl, data.X.shape[1], lrs, compiled=config.compile, **new)
    # The check compares each step's gradient with autograd's at the same point. Without
    # zero_grad the step uses the sum of all past gradients by design: nothing to check.
    checked = config.impl != "autograd" and config.optimizer.zero_grad
    reference = lr_batch.build("autograd", data.X.shape[1], lrs, **new) if checked else None
    drawn = batches(
        len(data.X), config.batch_size, seed=config.seed, drop_last=config.drop_last,
        device=config.device,
    )  # fmt: skip
    loop = Loop(
        model, data.X, data.y, config.steps, X_val=data.X_val, y_val=data.y_val,
        reference=reference, check_every=config.check_every_for(data.X.numel()),
        max_trajectory_values=config.max_trajectory_values, cuda_graphs=config.cuda_graphs,
        stops=stops, batches=drawn, eval_every=config.eval_every,
        sharpness_every=config.sharpness_every if curved else None,
        sharpness_iterations=config.sharpness_iterations,
    )  # fmt: skip
    return data, loop
