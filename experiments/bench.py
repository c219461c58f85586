"""``python -m experiments bench``: how fast a step, a learning-rate batch and a run's tracking
are, each against the limit it should be measured by, side by side in one process (the tables
and the recorded run: :mod:`experiments.bench_report`).

Shared machines are noisy, so nothing here is a single absolute time: every number is the
median of repeats, and every claim is a ratio of two things measured in the same run,
interleaved (A, B, A, B, ...) where they compete for the same disk or cache.

1. **Step time per data size** for the three implementations, against the memory floor: a
   step must read X (m × n) twice (X w, then Xᵀr), so no step beats the time of moving
   2·|X| bytes, which is the time of one copy of X (a copy reads |X| and writes |X|).
2. **K learning rates in one pass** (w of shape (n, K), W of shape (n, C, K)) against one
   rate's run, for logistic regression with SGD and softmax regression with Adam (its moments
   batched too).
3. **Tracking**: what this repo's logging costs per run against MLflow's bare floor (create a
   run, log its params, end it) and against the naive per-step ``log_metric`` loop.
4. **Mini-batches**: a step on b rows picked from X on the device (``index_select``, the
   loop's way), against a full-batch step on b rows of their own (the same arithmetic) and
   against the same batches from a ``torch.utils.data.DataLoader`` (collated on the host and
   copied over, the textbook way).
5. **Sharpness**: a whole run of K rates (``fit``, checked and validated, as a sweep runs it)
   measuring λ_max(∇²J) at the default cadence against the same run without: what the default
   costs, per model.
6. **Memory against steps**: the peak resident memory of one 8-rate pass, trained and recorded
   in a fresh process, at more and more steps: it should stay flat once the trajectory is
   thinned (what is kept is bounded; the steps are not).
"""

from __future__ import annotations

import itertools
import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.reduction import ForkingPickler

import torch

from experiments.batches import Batches
from experiments.config import CONFIGS, RunConfig, build, load_sweep
from experiments.engines import InlineEngine
from experiments.loop import WARMUP, capture, fit, side_stream
from experiments.lr_batch import LrBatch
from experiments.records import charted, run_tags
from experiments.records import write as write_run
from experiments.sweep import run_sweep
from experiments.tracking import Tracker
from experiments.training import train_pass
from experiments.writer import Writer
from manual_models import HandModel, Logistic, Optimizer, make_model
from manual_models.curvature import ITERATIONS, SHARPNESS_EVERY
from manual_models.logistic import BLOCKED_ABOVE

SIZES = [(569, 30), (1797, 64), (100_000, 100), (1_000_000, 100)]
GPU_SIZES = [(4_000_000, 256)]
QUICK_SIZES = [(569, 30), (1797, 64), (100_000, 100)]
KS = [1, 4, 16, 64]


@dataclass(frozen=True)
class Batched:
    """A model and rule whose K-rate pass the bench times, on sizes of its own."""

    label: str  # the table's and the metric key's name
    n_classes: int
    rule: Optimizer


LOGISTIC_SGD = Batched("logistic-sgd", 2, Optimizer())
SOFTMAX_ADAM = Batched("softmax10-adam", 10, Optimizer("adam"))
SOFTMAX_SIZES = [(1797, 64)]  # digits' shape: 10 classes, 64 features
IMPLS = ("manual", "function", "autograd")
# One pass of 8 learning rates on synthetic data, trained and recorded, at more and more steps.
MEMORY = {"n_samples": 2000, "n_features": 2000, "steps": [2_000, 8_000, 100_000]}
QUICK_MEMORY = {"n_samples": 2000, "n_features": 500, "steps": [500, 2_000, 8_000]}


class Timer:
    """Median seconds per call of ``fn``: ``repeats`` timings of ``inner`` calls each, with
    ``inner`` chosen so that one timing lasts at least ``min_s`` (timer and launch noise)."""

    def __init__(self, device: torch.device, repeats: int, min_s: float = 0.02) -> None:
        self.device, self.repeats, self.min_s = device, repeats, min_s

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object], inner: int) -> float:
        self.sync()
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        self.sync()
        return (time.perf_counter() - start) / inner

    def __call__(self, fn: Callable[[], object]) -> float:
        first = self.once(fn, 1)  # also the warm-up
        inner = max(1, min(1000, math.ceil(self.min_s / max(first, 1e-7))))
        return statistics.median(self.once(fn, inner) for _ in range(self.repeats))

    def interleaved(self, fns: dict[str, Callable[[], object]]) -> dict[str, float]:
        """Medians of several functions timed in turns, so drift hits them alike."""
        inner = {}
        for name, fn in fns.items():
            first = self.once(fn, 1)
            inner[name] = max(1, min(1000, math.ceil(self.min_s / max(first, 1e-7))))
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(self.repeats):
            for name, fn in fns.items():
                times[name].append(self.once(fn, inner[name]))
        return {name: statistics.median(values) for name, values in times.items()}


def problem(
    m: int, n: int, device: torch.device, dtype=torch.float32, seed: int = 0, n_classes: int = 2
):
    """A seeded problem of m samples, n features: labels from a noisy plane (two classes), or
    the largest of C noisy linear scores (class indices)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    X = torch.randn(m, n, generator=generator, device=device, dtype=dtype)
    if n_classes > 2:
        W = torch.randn(n, n_classes, generator=generator, device=device, dtype=dtype)
        noise = torch.randn(m, n_classes, generator=generator, device=device, dtype=dtype)
        return X, (X @ W / math.sqrt(n) + noise).argmax(1)
    w = torch.randn(n, generator=generator, device=device, dtype=dtype) / math.sqrt(n)
    noise = torch.randn(m, generator=generator, device=device, dtype=dtype)
    return X, (X @ w + noise > 0).to(dtype)


def graphed(step: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """The step as the loop replays it: warmed up on a side stream, captured as a CUDA graph."""
    with side_stream(device):
        for _ in range(WARMUP):
            step()
    graph, _ = capture(step)
    return graph.replay


def step_times(
    device: torch.device, sizes, timer: Timer, blocked_above: float = BLOCKED_ABOVE
) -> list[dict]:
    """Seconds per ``train_step`` of each implementation, and the floors, per size; the manual
    step on an X of more than ``blocked_above`` bytes on the CPU timed blocked and not."""
    compiled_manual(*problem(64, 5, device), blocked_above)  # torch.compile's one-time start
    return [step_row(m, n, device, timer, blocked_above) for m, n in sizes]


def step_row(m: int, n: int, device: torch.device, timer: Timer, blocked_above: float) -> dict:
    X, y = problem(m, n, device)
    floors = memory_floors(X, timer)
    compiled, compile_s = compiled_manual(X, y, blocked_above)
    steps = {}
    for impl in IMPLS:
        steps[impl] = stepper(timed_model(impl, n, device, blocked_above), X, y)
        if impl == "manual" and device.type == "cpu" and row_bytes(X) > blocked_above:
            steps["manual (unblocked)"] = stepper(timed_model(impl, n, device, math.inf), X, y)
        if device.type == "cuda":
            again = stepper(timed_model(impl, n, device, blocked_above), X, y)
            steps[f"{impl} (CUDA graph)"] = graphed(again, device)
    steps["manual (compiled)"] = stepper(compiled, X, y)
    if device.type == "cuda":
        steps["manual (compiled, CUDA graph)"] = graphed(stepper(compiled, X, y), device)
    times = timer.interleaved(steps)
    row = {"m": m, "n": n, "bytes": row_bytes(X)}
    row.update({f"{name}_ms": 1e3 * t for name, t in times.items()})
    row["two_read_floor_ms"] = 1e3 * floors["copy"]  # 2|X| bytes moved = two reads of X
    row["one_read_ms"] = 1e3 * floors["sum"]  # X.sum(): one read
    row["copy_GBps"] = 2 * row["bytes"] / floors["copy"] / 1e9
    for name, t in times.items():
        row[f"{name}_vs_floor"] = t / floors["copy"]
    row["manual_vs_one_read"] = times["manual"] / floors["sum"]
    row["compiled_vs_one_read"] = times["manual (compiled)"] / floors["sum"]
    row["manual_vs_autograd"] = times["manual"] / times["autograd"]
    # What compile costs a run: its first step compiles; it pays back after this many steps.
    row["compile_s"] = compile_s
    saved = times["manual"] - times["manual (compiled)"]
    row["compile_pays_after_steps"] = compile_s / saved if saved > 0 else math.inf
    return row


def compiled_manual(X: torch.Tensor, y: torch.Tensor, blocked_above: float):
    """The manual model with its loss and gradient through ``torch.compile`` (``compile:
    true``), and the seconds its first step took: the compile of this shape, as a first sweep
    pays it (inductor's caches off; a later process finds it cached)."""
    from torch._inductor import config as inductor

    model = timed_model("manual", X.shape[1], X.device, blocked_above).compile_gradients()
    start = time.perf_counter()
    with inductor.patch(force_disable_caches=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "dynamo_pgo force disabled": as asked
        model.train_step(X, y, check=False)
    if X.device.type == "cuda":
        torch.cuda.synchronize(X.device)
    return model, time.perf_counter() - start


def memory_floors(X: torch.Tensor, timer: Timer) -> dict[str, float]:
    """Seconds to copy X (moves 2|X| bytes: the two-read floor) and to sum it (one read)."""
    destination = torch.empty_like(X)
    return timer.interleaved({"copy": lambda: destination.copy_(X), "sum": lambda: X.sum()})


def row_bytes(X: torch.Tensor) -> int:
    return X.numel() * X.element_size()


def timed_model(impl: str, n: int, device: torch.device, blocked_above: float):
    """The implementation at lr 1e-3; the manual one as ``make_model`` builds it, with row
    blocks above ``blocked_above`` bytes (``math.inf``: X read twice, as before blocking)."""
    if impl != "manual":
        return make_model(impl, n, 1e-3, device=device)
    return HandModel(Logistic(n, device=device, blocked_above=blocked_above), 1e-3)


def stepper(model, X: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    return lambda: model.train_step(X, y, check=False)


def rates(k: int) -> list[float]:
    return [1e-3 * 1.5**i for i in range(k)]


def lr_batching(
    device: torch.device, sizes, ks, timer: Timer, run_steps: int, case: Batched = LOGISTIC_SGD
) -> list[dict]:
    """K rates in one model against one rate, timed in turns: per step, and per whole run
    (``fit`` with validation and the per-step gradient check, as a sweep runs it) on the
    smallest size; ``case``: the model and its rule."""

    def model(impl: str, n: int, lrs: list[float]):
        built = make_model(impl, n, lrs[0], device=device, **new)
        return built if len(lrs) == 1 else LrBatch(built, lrs)

    new = {"n_classes": case.n_classes, "optimizer": case.rule}
    rows = []
    for m, n in sizes:
        X, y = problem(m, n, device, n_classes=case.n_classes)
        for impl in ("manual", "function"):
            for k in ks:
                steps = {"one": stepper(model(impl, n, rates(1)), X, y)}
                steps["K"] = stepper(model(impl, n, rates(k)), X, y)
                times = timer.interleaved(steps)
                rows.append(batch_row(case, "step", impl, m, n, k, times["one"], times["K"]))
    m, n = sizes[0]
    X, y = problem(m, n, device, n_classes=case.n_classes)
    X_val, y_val = problem(max(m // 4, 1), n, device, seed=1, n_classes=case.n_classes)
    whole_runs = Timer(device, 3, min_s=0)

    def run(impl: str, lrs: list[float]):
        trained, reference = model(impl, n, lrs), model("autograd", n, lrs)
        return lambda: fit(trained, X, y, run_steps, X_val=X_val, y_val=y_val, reference=reference)

    for impl in ("manual", "function"):
        for k in ks:
            times = whole_runs.interleaved({"one": run(impl, rates(1)), "K": run(impl, rates(k))})
            what = f"run ({run_steps} steps, checked)"
            rows.append(batch_row(case, what, impl, m, n, k, times["one"], times["K"]))
    return rows


def batch_row(
    case: Batched, what: str, impl: str, m: int, n: int, k: int, one: float, t: float
) -> dict:
    return {
        "model": case.label,
        "what": what,
        "impl": impl,
        "m": m,
        "n": n,
        "K": k,
        "one_ms": 1e3 * one,
        "K_at_once_ms": 1e3 * t,
        "K_at_once_vs_one": t / one,
        "speedup_per_lr": k * one / t,
    }


RUN = {"dataset": "breast_cancer", "impl": "manual", "lr": 0.1, "device": "cpu"}  # tracked


MINIBATCH_DATA = (100_000, 100)
MINIBATCH_SIZES = [32, 256, 4096]


def minibatch_steps(device: torch.device, sizes: list[int], timer: Timer) -> list[dict]:
    """Per batch size b, seconds per manual step: on b rows of X picked on the device, as the
    loop takes them; on b rows of their own; and from a DataLoader over the same samples."""
    m, n = MINIBATCH_DATA
    X, y = problem(m, n, device)
    return [minibatch_row(X, y, b, timer) for b in sizes]


def minibatch_row(X: torch.Tensor, y: torch.Tensor, b: int, timer: Timer) -> dict:
    from torch.utils.data import BatchSampler, DataLoader, SubsetRandomSampler, TensorDataset

    (m, n), device = X.shape, X.device
    model = make_model("manual", n, 0.01, device=device)
    drawn, steps = Batches(m, b, seed=0, device=device), itertools.count()
    alone = (X[:b].clone(), y[:b].clone())  # b rows of their own: a full-batch step of size b
    order = SubsetRandomSampler(range(m), torch.Generator().manual_seed(0))
    loader = DataLoader(
        TensorDataset(X.cpu(), y.cpu()), batch_sampler=BatchSampler(order, b, False)
    )
    batches = iter(())

    def picked():
        rows = drawn.at(next(steps))
        return model.train_step(X.index_select(0, rows), y.index_select(0, rows))

    def loaded():
        nonlocal batches
        batch = next(batches, None)
        if batch is None:  # the next epoch: a new order, as the loop draws it
            batches = iter(loader)
            batch = next(batches)
        return model.train_step(*(part.to(device) for part in batch))

    times = timer.interleaved(
        {"picked": picked, "alone": lambda: model.train_step(*alone), "loader": loaded}
    )
    return {
        "m": m, "n": n, "batch": b, **{f"{k}_ms": 1e3 * v for k, v in times.items()},
        "picked_vs_alone": times["picked"] / times["alone"],
        "loader_vs_picked": times["loader"] / times["picked"],
    }  # fmt: skip


def tracking(repeats: int, naive_sample: int = 200) -> dict:
    """Per-run tracking cost on a scratch SQLite store, for a 1,000-step breast_cancer run:
    MLflow's floor (create a run, log its params, end it); this repo's record of the run, in
    turn (as a worker records it) and handed to a background writer (as a sweep's own process
    does once its writer is up); and the naive loop, one ``log_metric`` per value of the run's
    history at every step (timed on a sample, scaled, plus the floor it also pays)."""
    config = build(RunConfig, RUN)
    (result,) = train_pass([config])
    values = sum(int(torch.isfinite(v).sum()) for v in result.history.metrics.values())
    sent = len(charted(result.history, config.max_metric_points))
    with tempfile.TemporaryDirectory() as folder:
        tracker = Tracker(f"sqlite:///{folder}/bench.db")
        tracker.open()
        experiment = tracker.experiment("bench")

        def floor():
            run_id = tracker.start_run(experiment, "floor", tags={})
            tracker.log(run_id, params=config.params())
            tracker.finish(run_id)

        def ours():
            run_id = tracker.start_run(experiment, "ours", tags=run_tags(config))
            write_run(tracker, run_id, result, inputs=False, guard=False)

        naive_run = tracker.start_run(experiment, "naive", tags={})
        series = result.history.metrics["train/loss"].tolist()
        counter = iter(range(10**9))

        def naive_points():  # naive_sample points of the per-step loop: MLflow's own call,
            # one at a time, past the tracking layer on purpose (it is what is measured)
            for _ in range(naive_sample):
                i = next(counter)
                tracker.client.log_metric(naive_run, "train/loss", series[i % len(series)], step=i)

        timer = Timer(torch.device("cpu"), repeats, min_s=0)
        times = timer.interleaved({"floor": floor, "ours": ours, "naive": naive_points})
        handover = handed_over(tracker, experiment, result, repeats)
    per_point = times["naive"] / naive_sample
    naive = times["floor"] + per_point * values
    return {
        "run": f"breast_cancer, {config.steps} steps, {len(result.history.metrics)} series "
        f"({values} values; {sent} points charted, max_metric_points="
        f"{config.max_metric_points})",
        "floor_ms": 1e3 * times["floor"],
        "ours_ms": 1e3 * times["ours"],
        "handover_ms": 1e3 * handover,
        "naive_ms_estimated": 1e3 * naive,
        "naive_ms_per_point": 1e3 * per_point,
        "ours_vs_floor": times["ours"] / times["floor"],
        "naive_vs_ours": naive / times["ours"],
        "naive_vs_handover": naive / handover,
    }


def handed_over(tracker: Tracker, experiment: str, result, repeats: int) -> float:
    """Median seconds to hand a trained run to a writer that is up: what the training
    process pays for the run's record once a sweep records in the background (the queue
    pickles a run on a thread of the training process: that is timed too)."""
    writer = Writer(tracker.uri)
    try:
        while not writer.ready():
            time.sleep(0.05)
        times = []
        for _ in range(repeats):
            run_id = tracker.start_run(experiment, "handed over", tags={})
            start = time.perf_counter()
            ForkingPickler.dumps((run_id, result, False, False))  # what the queue's thread does
            writer.write(run_id, result, inputs=False, guard=False)
            times.append(time.perf_counter() - start)
        assert writer.drain() == set(), "the writer lost a run"
    finally:
        writer.close()
    return statistics.median(times)


def sweep_share(config_file: str) -> dict:
    """A whole sweep on the CPU into a scratch store (this process trains, as ``make sweep``
    does): its wall time, the time inside the passes, and the share that is tracking."""
    config = load_sweep(CONFIGS / config_file, {"devices": ["cpu"]})
    with tempfile.TemporaryDirectory() as folder:
        tracker = Tracker(f"sqlite:///{folder}/sweep.db")
        outcome = run_sweep(config, tracker, engine=InlineEngine(), progress=False)
    share = (outcome.seconds - outcome.train_seconds) / outcome.seconds
    return {
        "config": config_file,
        "runs": len(outcome.runs),
        "seconds": outcome.seconds,
        "train_seconds": outcome.train_seconds,
        "tracking_share": share,
    }


def sharpness_cost(
    device: torch.device, cases: list[tuple[Batched, tuple[int, int]]], k: int, run_steps: int
) -> list[dict]:
    """Per model: a checked run of ``k`` rates with the sharpness measured every
    ``SHARPNESS_EVERY`` steps (``ITERATIONS`` block steps each) against the same run without,
    timed in turns."""
    timer = Timer(device, 3, min_s=0)
    return [sharpness_row(case, m, n, k, run_steps, device, timer) for case, (m, n) in cases]


def sharpness_row(
    case: Batched, m: int, n: int, k: int, run_steps: int, device: torch.device, timer: Timer
) -> dict:
    X, y = problem(m, n, device, n_classes=case.n_classes)
    X_val, y_val = problem(max(m // 4, 1), n, device, seed=1, n_classes=case.n_classes)
    new = {"n_classes": case.n_classes, "optimizer": case.rule, "device": device}

    def model(impl: str):
        return LrBatch(make_model(impl, n, rates(1)[0], **new), rates(k))

    def run(every: int | None):
        return lambda: fit(model("manual"), X, y, run_steps, X_val=X_val, y_val=y_val,
                           reference=model("autograd"), sharpness_every=every)  # fmt: skip

    times = timer.interleaved({"off": run(None), "on": run(SHARPNESS_EVERY)})
    return {"model": case.label, "m": m, "n": n, "K": k, "steps": run_steps,
            "every": SHARPNESS_EVERY, "iterations": ITERATIONS,
            "off_ms": 1e3 * times["off"], "on_ms": 1e3 * times["on"],
            "on_vs_off": times["on"] / times["off"]}  # fmt: skip


def memory_by_steps(device: str, spec: dict, max_values: int) -> list[dict]:
    """Each step count in a fresh process (peak RSS is per process), one after the other, all
    recording into one scratch store whose schema is made first (a probe measures its pass and
    its records, not MLflow's migrations)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        uri = f"sqlite:///{folder}/memory.db"
        Tracker(uri).open()
        for steps in spec["steps"]:
            probe = {**spec, "steps": steps, "max_values": max_values, "device": device}
            code = f"from experiments.bench import memory_probe; memory_probe({probe!r}, {uri!r})"
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    for row in rows:
        row["peak_vs_first"] = row["peak_rss_mb"] / rows[0]["peak_rss_mb"]
    return rows


def memory_probe(probe: dict, uri: str) -> None:
    """Train one pass of 8 rates and record its runs in the store at ``uri``; print the peak."""
    lrs = [0.001 * 2**k for k in range(8)]
    dataset = {"name": "synthetic", "n_samples": probe["n_samples"]}
    dataset["n_features"] = probe["n_features"]
    common = {"steps": probe["steps"], "max_trajectory_values": probe["max_values"]}
    configs = [
        RunConfig(dataset=dataset, impl="manual", lr=lr, device=probe["device"], **common)
        for lr in lrs
    ]
    started = time.perf_counter()
    results = train_pass(configs)
    tracker = Tracker(uri)
    experiment = tracker.experiment("memory")
    for result in results:
        run_id = tracker.start_run(experiment, result.config.name, tags={})
        write_run(tracker, run_id, result, inputs=False, guard=False)
    history = results[0].history
    width = 2 * sum(t[0].numel() for t in history.params.values()) + len(history.metrics) + 1
    row = {
        "steps": probe["steps"],
        "n": f"{probe['n_samples']} × {probe['n_features']}",
        "kept_rows": len(history.kept),
        "trajectory_every": history.every,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # What a loop that kept every step's parameters would have held, for the 8 runs.
        "every_step_buffer_mb": (probe["steps"] + 1) * width * 8 * 4 / 2**20,
        "seconds": time.perf_counter() - started,
    }
    if probe["device"] == "cuda":
        row["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(row))


def machine(device: torch.device) -> dict:
    info = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_bench(device: str = "cpu", quick: bool = False, tracking_part: bool = True) -> dict:
    dev = torch.empty(0, device=device).device
    repeats = 3 if quick else 7
    timer = Timer(dev, repeats)
    sizes = list(QUICK_SIZES if quick else SIZES)
    if dev.type == "cuda" and not quick:
        sizes += GPU_SIZES
    ks = [1, 4, 16] if quick else KS
    batch_sizes = [sizes[0], sizes[-1]] if not quick else [sizes[0]]
    started = time.perf_counter()
    report = {"machine": machine(dev), "quick": quick, "repeats": repeats}
    report["step"] = step_times(dev, sizes, timer)
    run_steps = 20 if quick else 1000
    report["lr_batch"] = lr_batching(dev, batch_sizes, ks, timer, run_steps)
    report["lr_batch"] += lr_batching(dev, SOFTMAX_SIZES, ks, timer, run_steps, SOFTMAX_ADAM)
    report["minibatch"] = minibatch_steps(
        dev, MINIBATCH_SIZES[:2] if quick else MINIBATCH_SIZES, timer
    )
    cases = [(LOGISTIC_SGD, SOFTMAX_SIZES[0]), (SOFTMAX_ADAM, SOFTMAX_SIZES[0])]
    report["sharpness"] = sharpness_cost(dev, cases, 8, run_steps)
    if tracking_part:
        report["tracking"] = tracking(10 if quick else 30)
        report["sweep"] = sweep_share("quick.yaml" if quick else "default.yaml")
        limit = 10**6 if quick else RunConfig.model_fields["max_trajectory_values"].default
        report["memory"] = memory_by_steps(device, QUICK_MEMORY if quick else MEMORY, limit)
    report["seconds"] = time.perf_counter() - started
    return report
