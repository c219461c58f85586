"""The training loop: one loop for every model, plain PyTorch, no tracking.

It drives any :class:`manual_models.GradientDescentModel` through the model's own methods, and
never asks which model it holds. What happened comes back as a :class:`History`; writing it
anywhere (MLflow, files) is the tracking layer's job.

The history is preallocated on the model's device and filled by tensor copies, never with
``.item()``, so on a GPU the loop queues work without waiting for the host; it crosses to the
CPU once, at the end. It holds what will be kept, no more: the metrics of every step (a dozen
numbers a run), and the parameters and gradients of every k-th step, k chosen before the loop
from ``max_trajectory_values``. A run's memory is its data plus what it keeps, however many
steps it takes.

With mini-batches (:class:`experiments.batches.Batches`) each step is the post's loop over
one batch: the step, its loss (``train/batch_loss``), its gradient and its check are the
batch's, and the whole training set and the validation set are measured at a cadence
(``eval_every``, the rows between them NaN), with how far the batch gradient was from the full
one there (``grad/batch_dev_sq``). Without, every step is on the whole set, as before.

A model may train several runs side by side (``experiments.lr_batch``): then its loss, and
every value it returns, has a trailing axis with one entry per run, and so does the history
(:meth:`History.runs` takes it apart). The loop reads that axis off the loss and needs nothing
else to know about it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import torch

from experiments.batches import Batches
from manual_models import GradientDescentModel
from manual_models.curvature import FIRST_ITERATIONS, ITERATIONS, Pair, sharpness
from manual_models.validation import check_count

T = TypeVar("T")
WARMUP = 3  # ordinary steps before a capture: CUDA graphs want their kernels warmed up

# Per-step scalars, named as the tracking UI groups them (prefix/name). ``grad/*`` and
# ``param/*`` stand for one series per parameter: a parameter of one number per run as it is
# (grad/b, param/b), any other by its norm (param/w_norm, param/W1_norm, softmax's b_norm).
# ``train/batch_loss`` and ``grad/batch_dev_sq`` are a mini-batch run's only; ``curv/*`` a run's
# that measures its sharpness.
METRICS = (
    "train/loss",
    "train/batch_loss",
    "val/loss",
    "train/accuracy",
    "val/accuracy",
    "grad/*",
    "grad/batch_dev_sq",
    "param/*",
    "check/grad_rel_err",
    "check/grad_err_vs_terms",
    "curv/sharpness",
    "curv/lr_x_sharpness",
)


@dataclass(frozen=True)
class History:
    """What happened in gradient descent, on the CPU.

    Row t (0 ≤ t ≤ steps) describes the parameters θ_t: the loss and accuracies there, the
    gradient g_t there (on step t's batch, with mini-batches), and θ_t itself. For t < steps,
    θ_{t+1} = θ_t − lr·g_t (plain SGD); the last row is the final state, where no step was
    taken. ``metrics`` maps names in :data:`METRICS` to (steps + 1,) tensors, every row;
    ``check/*`` is NaN on rows that were not checked, and with mini-batches the whole-set
    ``train/*`` and ``val/*`` on rows not measured; ``val/*`` and ``check/*`` are present only
    when asked for. ``params`` and ``grads`` hold each parameter and its gradient ("d" + its
    name) by name, in the model's shapes, for the rows in ``kept`` only: 0, every, 2·every, …
    and the last.
    """

    metrics: dict[str, torch.Tensor]
    # name → (kept rows, *shape): w (kept rows, n_features), b (kept rows,) for logistic
    # regression; W (kept rows, n_features, C) and b (kept rows, C) for softmax; …
    params: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]  # "d" + name → the same shapes
    kept: torch.Tensor  # (kept rows,) int64: the row of each parameter's values
    every: int = 1  # the kept rows' spacing
    # Per row: the loss and every parameter finite (from the loop; None when read back from a
    # store, where a run that diverged is cut already and the loss says as much).
    finite: torch.Tensor | None = None

    # The built-in kinds' parameters by their names.
    w = property(lambda self: self.params["w"])
    b = property(lambda self: self.params["b"])
    dw = property(lambda self: self.grads["dw"])
    db = property(lambda self: self.grads["db"])

    @property
    def steps(self) -> int:
        return self.loss.shape[0] - 1

    @property
    def loss(self) -> torch.Tensor:
        """The loss of every row's step: on the whole set, or on its batch with mini-batches
        (whose whole-set ``train/loss`` is measured at a cadence only). The last row takes no
        step: its loss is the whole set's either way."""
        return self.metrics.get("train/batch_loss", self.metrics["train/loss"])

    @cached_property
    def diverged_at(self) -> int | None:
        """The first row whose loss or parameters are not finite, or None (one run)."""
        finite = torch.isfinite(self.loss) if self.finite is None else self.finite
        return None if bool(finite.all()) else int((~finite).nonzero()[0])

    def cut(self) -> History:
        """The rows up to and including the first that is not finite: what a run that
        diverged did (checked once, on the host, after the loop). Its parameters end at the
        last kept row up to there."""
        return self if self.diverged_at is None else self.until(self.diverged_at)

    def until(self, last: int) -> History:
        """Rows 0 … ``last``: a run stopped there (its parameters end at the last kept row up
        to there)."""
        rows = last + 1
        metrics = {name: v[:rows] for name, v in self.metrics.items()}
        kept = self.kept < rows
        finite = self.finite[:rows] if self.finite is not None else None
        params, grads = ({n: t[kept] for n, t in d.items()} for d in (self.params, self.grads))
        return History(metrics, params, grads, self.kept[kept], self.every, finite)

    def runs(self, ends: list[int] | None = None) -> list[History]:
        """The runs this pass trained, each cut where it diverged: this one, or one per entry
        of the trailing axis of models trained side by side (views: nothing is copied).
        ``ends``: the last row of each (where successive halving stopped it)."""
        if self.loss.ndim == 1:
            return [(self if ends is None else self.until(ends[0])).cut()]
        columns = (self._column(k) for k in range(self.loss.shape[1]))
        if ends is not None:
            columns = (c.until(end) for c, end in zip(columns, ends, strict=True))
        return [c.cut() for c in columns]

    def _column(self, k: int) -> History:
        metrics = {name: v[:, k] for name, v in self.metrics.items()}
        params, grads = ({n: t[..., k] for n, t in d.items()} for d in (self.params, self.grads))
        finite = self.finite[:, k] if self.finite is not None else None
        return History(metrics, params, grads, self.kept, self.every, finite)


def keep_every(rows: int, values_per_row: int, max_values: int | None) -> int:
    """The spacing k of the kept rows: 1, or the least with rows · values / k ≤ max_values."""
    if max_values is None:
        return 1
    return max(1, -(-rows * values_per_row // max_values))


def kept_rows(steps: int, every: int, also: Iterable[int] = ()) -> torch.Tensor:
    """The rows whose parameters a run keeps: 0, every, 2·every, …, the last (``steps``) and
    ``also`` (where successive halving may stop a run)."""
    rows = {*range(0, steps + 1, every), steps, *also}
    return torch.tensor(sorted(rows))


def fit(
    model: GradientDescentModel, X: torch.Tensor, y: torch.Tensor, steps: int, **options
) -> History:
    """Run ``steps`` full-batch gradient-descent steps of ``model`` on ``(X, y)``; return
    every row (:meth:`History.runs` gives each run cut where it diverged). ``options``: as
    :class:`Loop` takes them (validation data, the gradient check, what is kept, CUDA graphs).
    """
    loop = Loop(model, X, y, steps, **options)
    loop.run_to(steps)
    return loop.history()


class Loop:
    """The steps themselves, row by row: device work only, no host synchronisation.

    :func:`fit` runs every row at once. Successive halving (:mod:`experiments.halving`) runs
    them up to a rung (``run_to``), reads a metric there (``at``), and goes on with some of the
    runs only (``keep``): the rows of ``stops`` are checked and keep their parameters, as a
    run's last row does, so a run stopped there is whole.

    Each row is computed as one packed vector (the metrics, whether the row is finite, then
    every parameter and every gradient, flat), so one step, row included, can be captured
    and replayed as a CUDA graph. Recording it is one copy of its head into a (metrics + 1,
    steps + 1, *runs) buffer, and on a kept row one copy of its tail into a (kept rows,
    parameters, *runs) buffer: which rows are kept is arithmetic on t, known before the loop.

    With ``X_val, y_val`` the loop also records validation loss and accuracy. With a ``reference``
    (the autograd model, with the model's shapes), every ``check_every``-th row and the last
    one compare the gradient g (every parameter's: dw, db) with the reference's g_ref at the
    same parameters:

    - ``check/grad_rel_err`` = ‖g − g_ref‖ / ‖g_ref‖. Near an optimum ‖g_ref‖ → 0 while the
      rounding in Xᵀ(ŷ − y) does not, so this ratio grows (to O(1) in float32 at ‖g‖ ~ 1e-8)
      with nothing wrong in either gradient.
    - ``check/grad_err_vs_terms`` = ‖g − g_ref‖ / ‖(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|)‖: the same
      difference relative to the size of the numbers summed, which rounding is relative to.
      It stays near the dtype's epsilon all the way to convergence; a wrong gradient shows.

    ``max_trajectory_values`` bounds the parameters and gradients kept per run (each of every
    k-th row and the last, k the least that fits; None: every row). The metrics
    are kept at every row either way: (steps + 1) × a dozen numbers a run.

    On a GPU, ``cuda_graphs`` (default: on for CUDA) records one step as a CUDA graph after
    three ordinary ones and replays it: one launch a step instead of dozens, which is most of
    a step's time on small data. Nothing in a step waits for the host either way.
    """

    def __init__(
        self,
        model: GradientDescentModel,
        X: torch.Tensor,
        y: torch.Tensor,
        steps: int,
        *,
        X_val: torch.Tensor | None = None,
        y_val: torch.Tensor | None = None,
        reference: GradientDescentModel | None = None,
        check_every: int = 1,
        max_trajectory_values: int | None = None,
        cuda_graphs: bool | None = None,
        stops: Iterable[int] = (),
        batches: Batches | None = None,
        eval_every: int | None = None,
        sharpness_every: int | None = None,
        sharpness_iterations: int = ITERATIONS,
    ) -> None:
        check_count("steps", steps)
        check_count("check_every", check_every)
        if batches is not None and batches.n != X.shape[0]:
            raise ValueError(f"the batches are of {batches.n} samples, X has {X.shape[0]} rows")
        if max_trajectory_values is not None:
            check_count("max_trajectory_values", max_trajectory_values)
        if (X_val is None) != (y_val is None):
            raise ValueError("give both X_val and y_val, or neither")
        shapes = {name: t.shape for name, t in model.params.items()}
        if reference is not None and {n: t.shape for n, t in reference.params.items()} != shapes:
            raise ValueError(
                "the reference must hold as many learning rates (and classes) as the "
                "model: the same parameter shapes"
            )
        # Check inputs and labels once, here: every step would sync a GPU each time.
        self.runs = runs = model.loss(X, y).shape  # one loss per run the model trains
        if X_val is not None:
            model.loss(X_val, y_val)
        self.model, self.X, self.y, self.X_val, self.y_val = model, X, y, X_val, y_val
        self.reference, self.check_every, self.steps = reference, check_every, steps
        self.stops = {t for t in stops if 0 < t < steps}
        self.batches = batches
        # Mini-batches measure the whole sets once an epoch unless told; full batches every row.
        every = eval_every or (batches.per_epoch if batches is not None else 1)
        self.eval_every = check_count("eval_every", every)
        self.sharpness_every, self.iterations = sharpness_every, sharpness_iterations
        if sharpness_every is not None:
            check_count("sharpness_every", sharpness_every)
            self.pair = start_pair(model, self.runs)  # warm-started from row to row
            self.started = False  # whether the pair is a measurement's yet
        # Each parameter's series: as it is when one number per run, else its norm.
        self.series = {n: n if shape == runs else f"{n}_norm" for n, shape in shapes.items()}
        self.names = [
            name
            for pattern in METRICS
            for name in self.expanded(pattern)
            if (X_val is not None or not name.startswith("val/"))
            and (batches is not None or name not in ("train/batch_loss", "grad/batch_dev_sq"))
            and (sharpness_every is not None or not name.startswith("curv/"))
            and (reference is not None or not name.startswith("check/"))
        ]
        self.gradient_names = [f"d{name}" for name in self.series]
        self.described = {p: [f"{p}/{s}" for s in self.series.values()] for p in ("param", "grad")}
        self.shapes = [*shapes.values()] * 2  # the parameters, then their gradients
        self.sizes = [math.prod(s) // math.prod(runs) for s in self.shapes]
        self.every = keep_every(steps + 1, sum(self.sizes), max_trajectory_values)
        self.kept = kept_rows(steps, self.every, self.stops)
        self.slots = {int(t): i for i, t in enumerate(self.kept)}
        like = {"device": model.device, "dtype": model.dtype}
        # Metric-major, so that each metric's series is one contiguous slice to hand out.
        self.metrics = torch.empty(len(self.names) + 1, steps + 1, *runs, **like)
        self.parameters = torch.empty(len(self.kept), sum(self.sizes), *runs, **like)
        self.alive: torch.Tensor | None = None  # the columns still trained, once some stopped
        self.nan = torch.full(runs, math.nan, **like)
        self.graphs = model.device.type == "cuda" and (cuda_graphs is None or cuda_graphs)
        # One graph per kind of row: (checked, measured, batch size).
        self.captured: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        # A batch's indices, where a captured graph reads them: one buffer per batch size.
        sizes = batches.sizes() if batches is not None else ()
        self.buffers = {n: torch.zeros(n, dtype=torch.int64, device=model.device) for n in sizes}
        self.warm = 0  # eager steps taken with the current shapes (CUDA graphs want some first)
        self.t = 0  # the next row

    def expanded(self, pattern: str) -> list[str]:
        """A name of :data:`METRICS`: ``grad/*`` as one series per parameter, any other as is."""
        if not pattern.endswith("/*"):
            return [pattern]
        return [pattern.replace("*", series) for series in self.series.values()]

    def checked(self, t: int) -> bool:
        return self.reference is not None and (
            t % self.check_every == 0 or t == self.steps or t in self.stops
        )

    def curved(self, t: int) -> bool:
        """Whether row t measures the sharpness: every ``sharpness_every``-th, and the last. Not
        at a rung: a measurement moves the pair the next one starts from, and a run that goes
        on from a rung is the run its rate trains alone, to the bit."""
        every = self.sharpness_every
        return every is not None and (t % every == 0 or t == self.steps)

    def measured(self, t: int) -> bool:
        """Whether row t measures the whole training and validation sets (every row in
        full-batch descent, where the step's own loss is the whole set's)."""
        return t % self.eval_every == 0 or t == self.steps or t in self.stops

    def run_to(self, last: int) -> None:
        """Rows ``self.t`` … ``last``: each describes θ_t and takes the step to θ_{t+1}, but
        the final row (``steps``), where no step is taken."""
        for t in range(self.t, last + 1):
            step = t < self.steps
            kind = {
                "checked": self.checked(t),
                "measured": self.measured(t),
                "curved": self.curved(t),
            }
            batch = self.batches.at(t) if self.batches is not None and step else None
            if batch is not None and self.graphs:  # where a captured graph reads it
                batch = self.buffers[len(batch)].copy_(batch)
            if self.graphs and step:
                row = self.replayed(batch, **kind)
            else:
                row = self.row(batch, step=step, **kind)
            self.record(t, row)
        self.t = max(self.t, last + 1)

    def at(self, name: str, t: int) -> torch.Tensor:
        """Metric ``name`` at row ``t`` (run already), on the host: one value per run."""
        return self.metrics[self.names.index(name), t].cpu()

    def keep(self, columns: list[int]) -> None:
        """Go on with these of the runs still trained (positions among them), the others
        ending at the last row run: the model and the reference shrink to them."""
        index = torch.arange(self.runs[0]) if self.alive is None else self.alive
        self.alive = index[columns].to(self.model.device)
        for model in (self.model, self.reference):
            if model is not None:
                model.keep(columns)
        self.runs = (len(columns),)
        self.nan = self.nan[: len(columns)]
        if self.sharpness_every is not None:
            index = torch.tensor(columns, device=self.model.device)
            self.pair = tuple(
                tuple(v.index_select(-1, index) for v in direction) for direction in self.pair
            )
        self.captured.clear()  # new shapes: warm up and capture again
        self.warm = 0

    def history(self) -> History:
        """Every row run, on the CPU (a stopped run's rows end where it stopped)."""
        head, kept = self.metrics[:, : self.t].cpu(), self.parameters.cpu()
        metrics = dict(zip(self.names, head, strict=False))  # views: nothing is copied
        finite = head[len(self.names)] == 1
        parts = kept.split(self.sizes, dim=1)
        values = [p.reshape(len(kept), *s) for p, s in zip(parts, self.shapes, strict=True)]
        names = list(self.series)
        params = dict(zip(names, values[: len(names)], strict=True))
        grads = dict(zip(self.gradient_names, values[len(names) :], strict=True))
        return History(metrics, params, grads, self.kept, self.every, finite)

    def record(self, t: int, row: torch.Tensor) -> None:
        head, slot = len(self.names) + 1, self.slots.get(t)
        if self.alive is None:
            self.metrics[:, t].copy_(row[:head])
            if slot is not None:
                self.parameters[slot].copy_(row[head:])
            return
        self.metrics[:, t].index_copy_(1, self.alive, row[:head])
        if slot is not None:
            self.parameters[slot].index_copy_(1, self.alive, row[head:])

    def replayed(self, batch: torch.Tensor | None, **kind: bool) -> torch.Tensor:
        """One step on CUDA: the first few with these shapes on a side stream (a warm-up),
        then one captured graph per kind of row (checked or not, measured or not, the batch's
        size), replayed: a batch's indices are read from its size's buffer."""
        if self.warm < WARMUP:
            self.warm += 1
            with side_stream(self.model.device):
                return self.row(batch, step=True, **kind)
        key = (*kind.values(), None if batch is None else len(batch))
        if key not in self.captured:
            self.captured[key] = capture(lambda: self.row(batch, step=True, **kind))
        graph, out = self.captured[key]
        graph.replay()
        return out

    def row(self, batch: torch.Tensor | None, *, step: bool, curved: bool = False, **kind: bool):
        """Everything about θ_t, then (if ``step``) one step to θ_{t+1}: on the whole set, or
        on the rows of X whose indices ``batch`` holds."""
        if self.batches is None:
            values, theta, grads, loss = self.full_row(step=step, checked=kind["checked"])
        else:
            values, theta, grads, loss = self.batch_row(batch, step=step, **kind)
        values.update(self.curvature(theta) if curved else self.no_curvature())
        return self.pack(values, theta, grads, loss)

    def batch_row(self, batch, *, step: bool, checked: bool, measured: bool):
        """A row of mini-batch descent: the step, its loss, gradient and check on the batch;
        on a ``measured`` row the whole sets too, and the batch gradient's distance from the
        whole set's."""
        model, X, y = self.model, self.X, self.y
        theta = [t.clone() for t in model.theta]  # θ_t: the step below updates in place
        values = self.describe("param", theta)
        whole = model.evaluate(X, y, check=False) if measured else None
        values.update(self.on_sets(whole))
        if step:
            X, y = X.index_select(0, batch), y.index_select(0, batch)
            values["train/batch_loss"], _ = model.train_step(X, y, check=False)
            grads = model.grads
        else:  # the final state: no step taken, its batch the whole set
            values["train/batch_loss"], grads = whole.loss, whole.grads
        values.update(self.describe("grad", self.ordered(grads)))
        deviation = self.nan if whole is None or not step else self.distance(grads, whole.grads)
        values["grad/batch_dev_sq"] = deviation
        if self.reference is not None:
            values.update(self.check(theta, grads, X, y) if checked else self.unchecked())
        return values, theta, grads, values["train/batch_loss"]

    def on_sets(self, whole) -> dict[str, torch.Tensor]:
        """The loss and accuracy on the whole training set (from ``whole``, its evaluation at
        θ_t) and the validation set, or NaN on a row that does not measure them."""
        if whole is None:
            sets = ("train/loss", "train/accuracy", "val/loss", "val/accuracy")
            return {name: self.nan for name in sets if name in self.names}
        accuracy = self.model.accuracy(whole.logits, self.y)
        return {"train/loss": whole.loss, "train/accuracy": accuracy, **self.on_validation()}

    def on_validation(self) -> dict[str, torch.Tensor]:
        """The validation loss and accuracy at θ_t (none without validation data)."""
        if self.X_val is None:
            return {}
        with torch.no_grad():
            return {
                "val/loss": self.model.loss(self.X_val, self.y_val, check=False),
                "val/accuracy": self.model.accuracy(self.model.logits(self.X_val), self.y_val),
            }

    def distance(self, grads, other) -> torch.Tensor:
        """‖g − g'‖² per run, over every parameter."""
        diff = self.flat(*self.ordered(grads)) - self.flat(*self.ordered(other))
        return diff.square().sum(0)

    def full_row(self, *, step: bool, checked: bool):
        """A row of full-batch descent: the step's own loss is the whole set's."""
        model, X, y = self.model, self.X, self.y
        theta = [t.clone() for t in model.theta]  # θ_t: the step below updates in place
        values = self.describe("param", theta)
        values.update(self.on_validation())  # at θ_t, before the step
        if step:
            values["train/loss"], z = model.train_step(X, y, check=False)
            grads = model.grads
        else:  # the final state: no step taken
            values["train/loss"], grads, z = model.evaluate(X, y, check=False)
        values["train/accuracy"] = model.accuracy(z, y)
        values.update(self.describe("grad", self.ordered(grads)))
        if self.reference is not None:
            values.update(self.check(theta, grads, X, y) if checked else self.unchecked())
        return values, theta, grads, values["train/loss"]

    def curvature(self, theta) -> dict[str, torch.Tensor]:
        """The sharpness λ_max(∇²J) at θ_t on the whole training set (with the rule's weight
        decay), by a block of two vectors iterated from the last measured row's pair, and
        lr·λ_max (which gradient descent on a quadratic needs below 2)."""
        model = self.model
        hvp = model.kind.hessian_product(
            self.X, self.y, *theta, weight_decay=model.rule.weight_decay
        )
        iterations = self.iterations if self.started else max(self.iterations, FIRST_ITERATIONS)
        self.started = True
        top, pair = sharpness(hvp, self.pair, iterations, columns=self.runs != ())
        for kept, new in zip(sum(self.pair, ()), sum(pair, ()), strict=True):
            kept.copy_(new)  # in place: a captured graph reads it where it was
        return {"curv/sharpness": top, "curv/lr_x_sharpness": model.lr * top}

    def no_curvature(self) -> dict[str, torch.Tensor]:
        if self.sharpness_every is None:
            return {}
        return {"curv/sharpness": self.nan, "curv/lr_x_sharpness": self.nan}

    def pack(self, values, theta, grads, loss) -> torch.Tensor:
        """The row as one vector: the metrics, whether the loss and θ_t are finite, then
        every parameter and every gradient, flat."""
        finite = torch.isfinite(loss)  # each part as a view: nothing copied
        for part in theta:
            finite &= torch.isfinite(self.flat(part)).all(0)
        metrics = torch.stack([*(values[name] for name in self.names), finite.to(loss.dtype)])
        parameters = (t.reshape(-1, *self.runs) for t in (*theta, *self.ordered(grads)))
        return torch.cat([metrics, *parameters])

    def ordered(self, grads: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The gradients in the parameters' order."""
        return [grads[name] for name in self.gradient_names]

    def describe(self, prefix: str, tensors) -> dict[str, torch.Tensor]:
        """Each parameter's (or gradient's) series, in the parameters' order: itself when it
        is one number per run (b), else its norm per run (Frobenius for a matrix W)."""
        values = {}
        for t, name in zip(tensors, self.described[prefix], strict=True):
            scalar = t.shape == self.runs
            values[name] = t if scalar else torch.linalg.vector_norm(self.flat(t), dim=0)
        return values

    def check(self, theta, grads, X, y) -> dict[str, torch.Tensor]:
        """The step's gradient against the reference's at the same parameters θ_t, on the
        same data (the step's batch)."""
        self.reference.set_parameters(*theta)
        expected = self.reference.evaluate(X, y, check=False)
        terms = self.reference.summands(X, y, expected.logits)
        g, g_ref, size = (self.flat(*self.ordered(d)) for d in (grads, expected.grads, terms))
        diff = torch.linalg.vector_norm((g - g_ref).double(), dim=0)
        reference = torch.linalg.vector_norm(g_ref.double(), dim=0)
        dtype = self.model.dtype  # measured in float64, recorded beside the other metrics
        return {
            "check/grad_rel_err": torch.where(diff == 0, 0.0, diff / reference).to(dtype),
            "check/grad_err_vs_terms": (diff / torch.linalg.vector_norm(size, dim=0)).to(dtype),
        }

    def unchecked(self) -> dict[str, torch.Tensor]:
        return {"check/grad_rel_err": self.nan, "check/grad_err_vs_terms": self.nan}

    def flat(self, *tensors: torch.Tensor) -> torch.Tensor:
        """Tensors as one column per run: (values, *runs)."""
        parts = [t.reshape(-1, *self.runs) for t in tensors]
        return parts[0] if len(parts) == 1 else torch.cat(parts)


def start_pair(model: GradientDescentModel, runs: tuple[int, ...]) -> Pair:
    """A seeded random start for the sharpness' two vectors, in the parameters' shapes: drawn
    once for one model on the CPU and repeated in each of the ``runs`` columns, so a rate's
    estimate is the same in any pass and on any device."""
    generator = torch.Generator().manual_seed(0)

    def draw(t: torch.Tensor) -> torch.Tensor:
        one = torch.randn(t.shape[: t.ndim - len(runs)], generator=generator, dtype=torch.float64)
        return one.reshape(one.shape + (1,) * len(runs)).expand(t.shape).to(t).clone()

    return tuple(tuple(draw(t) for t in model.params.values()) for _ in range(2))


@contextlib.contextmanager
def side_stream(device: torch.device):
    """Work on a side stream that starts after, and ends before, the device's current stream
    goes on: where CUDA graphs want their kernels warmed up before a capture."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream(device).wait_stream(side)


def capture(fn: Callable[[], T]) -> tuple[torch.cuda.CUDAGraph, T]:
    """``fn`` recorded as a CUDA graph (warm it up first: :func:`side_stream`), and its
    output, which each ``graph.replay()`` refills in place."""
    graph = torch.cuda.CUDAGraph()
    with _sync_allowed(), torch.cuda.graph(graph):
        out = fn()
    return graph, out


@contextlib.contextmanager
def _sync_allowed():
    """Starting a capture synchronises the device once (``torch.cuda.graph`` does, and frees
    cached memory); under ``set_sync_debug_mode("error")`` that one set-up sync is let through,
    while every step, eager or replayed, stays checked."""
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)
