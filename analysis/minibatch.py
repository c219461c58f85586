r"""Mini-batches, read back: the linear scaling rule, the noise of the path, and how well the
hand-written gradient agrees with autograd at each batch size.

**The linear scaling rule** (Goyal et al. 2017, "Accurate, Large Minibatch SGD", §2.1): when
the batch grows k-fold, multiply the learning rate by k. Over one epoch, n/b steps of rate η
move θ by η·(n/b) "time units" of gradient flow; with η/b fixed that is the same for every b,
and so is the variance the batches add per unit of time (∝ η/b). So for small enough η runs
with the same η/b and the same number of epochs end at the same loss; the rule breaks where η
is too large for a step to follow the flow (for gradient descent on these convex losses, as
η·L nears 2, L the smoothness). :func:`scaling` holds every run against the smallest batch
trained at its η/b.

**The noise of the path.** A batch B of b rows drawn uniformly without replacement from n, at
parameters θ that do not depend on it, gives the gradient ĝ = (1/b) Σ_{i∈B} gᵢ with E ĝ = g and

    E‖ĝ − g‖² = (n − b) / (b (n − 1)) · σ²,        σ² = (1/n) Σᵢ ‖gᵢ − g‖²

(the finite-population correction (n − b)/(n − 1) times the with-replacement variance σ²/b;
Cochran, *Sampling Techniques*, 3rd ed., Thm 2.2, applied to each coordinate and summed). The
loop logs ‖ĝ − g‖² (``grad/batch_dev_sq``) where it measures the whole set; at the first step
of an epoch the batch is the first of a fresh order, independent of θ, so the formula applies
there (later in an epoch a batch is drawn from the rows not yet used). :func:`noise` recomputes
each gᵢ at the kept θ with ``torch.func`` (per-sample gradients of the kind's own reference
loss: any model's) and sets the measured values beside the closed form.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis.runs import Sweep, run_kind
from experiments.data import load_split
from experiments.records import dataset_config
from manual_models import make_model

HOLDS = (
    0.05  # the rule holds where a run misses (or overshoots) ≤ 5% of the smallest batch's progress
)


def batch_sizes(runs: pd.DataFrame) -> pd.Series:
    """Each run's batch size as a number: the training set's size for full-batch descent."""
    size = pd.to_numeric(runs.get("batch_size", pd.Series(index=runs.index)), errors="coerce")
    n = pd.to_numeric(runs["n_train"])
    return size.where(size < n, n).astype(int)


def has_batches(runs: pd.DataFrame) -> bool:
    return "batch_size" in runs and bool((batch_sizes(runs) < pd.to_numeric(runs.n_train)).any())


def scaling(sweep: Sweep, stability: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × rule × η/b, for each batch size: the final whole-set training loss (mean
    over seeds, autograd runs: the reference), how far it ends from the smallest batch's at
    that η/b as a share of the most progress from the start any run made (negative: lower),
    and whether the rule holds (within 5%).
    ``stability``: :func:`analysis.compare.stability`'s lr·L per run."""
    runs = sweep.runs[(sweep.runs.status == "FINISHED") & (sweep.runs.impl == "autograd")]
    if runs.empty:
        return pd.DataFrame()
    runs = runs.assign(batch=batch_sizes(runs)).merge(stability, on="run_id")
    runs["start_loss"] = [float(sweep.history(r)["train/loss"].iloc[0]) for r in runs.run_id]
    per_epoch = pd.to_numeric(runs.get("batches_per_epoch", pd.Series(1, index=runs.index)))
    runs["epochs"] = runs["steps"] / per_epoch.fillna(1)
    runs["lr_per_sample"] = (runs["lr"] / runs["batch"]).round(12)
    group = ["dataset", "optimizer", "lr_per_sample", "batch"]
    table = (
        runs.groupby(group)
        .agg(
            lr=("lr", "first"),
            lr_times_L=("lr_times_L", "first"),
            steps=("steps", "first"),
            epochs=("epochs", "first"),
            seeds=("seed", "nunique"),
            start_loss=("start_loss", "mean"),
            final_train_loss=("train/loss", "mean"),
        )
        .reset_index()
    )
    smallest = table.groupby(["dataset", "optimizer", "lr_per_sample"])
    table["batches_at_ratio"] = smallest["batch"].transform("nunique")
    first = smallest["final_train_loss"].transform("first")  # sorted: the smallest batch's
    # Against the most progress any run made on the dataset: a smallest batch that made
    # little (or went up) would make any difference look large.
    best = table.groupby(["dataset", "optimizer"])["final_train_loss"].transform("min")
    table["missed_progress"] = (table["final_train_loss"] - first) / (table["start_loss"] - best)
    table["holds"] = table["missed_progress"].abs() <= HOLDS
    return table[table.batches_at_ratio > 1].drop(columns="batches_at_ratio")


def where_it_breaks(table: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × rule: the largest lr·L at which the rule held for every batch size at
    that η/b and below, and the smallest at which it failed."""
    rows = []
    for (dataset, rule), part in table.groupby(["dataset", "optimizer"]):
        ratios = part.groupby("lr_per_sample").agg(
            holds=("holds", "all"), lr_times_L=("lr_times_L", "max")
        )
        failed = ratios[~ratios.holds]
        held = ratios[ratios.index < failed.index.min()] if len(failed) else ratios
        rows.append(
            {
                "dataset": dataset,
                "optimizer": rule,
                "holds_up_to_lr_times_L": held.lr_times_L.max() if len(held) else np.nan,
                "breaks_at_lr_times_L": failed.lr_times_L.min() if len(failed) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def noise(sweep: Sweep) -> pd.DataFrame:
    """Per mini-batch run (autograd's, the reference): at each logged step that starts an
    epoch, ‖ĝ − g‖² as measured and its closed form for sampling without replacement."""
    runs = sweep.runs[(sweep.runs.status == "FINISHED") & (sweep.runs.impl == "autograd")]
    runs = runs[batch_sizes(runs) < pd.to_numeric(runs.n_train)] if len(runs) else runs
    rows = []
    for _, run in runs.iterrows():
        history, kept = sweep.history(run.run_id), sweep.as_history(run.run_id)
        X, y = _training_set(run)
        b = int(run["batch_size"])
        per_epoch = int(run["batches_per_epoch"])
        measured = history["grad/batch_dev_sq"].to_numpy()
        slot = {int(t): i for i, t in enumerate(kept.kept)}
        per_sample = _per_sample_gradients(run, X.shape[1])
        for t in np.flatnonzero(~np.isnan(measured)):
            if t % per_epoch or t not in slot:  # not a fresh order's first batch, or not kept
                continue
            at = {name: p[slot[t]] for name, p in kept.params.items()}
            expected = expected_noise(per_sample(at, X, y), b)
            rows.append(
                {
                    "run_id": run.run_id,
                    "dataset": run.dataset,
                    "optimizer": run.optimizer,
                    "batch": b,
                    "lr": run.lr,
                    "seed": run.seed,
                    "step": int(t),
                    "measured": float(measured[t]),
                    "expected": expected,
                }
            )
    return pd.DataFrame(rows)


def expected_noise(per_sample: torch.Tensor, b: int) -> float:
    """E‖ĝ − g‖² for a batch of ``b`` of the n rows of ``per_sample`` (n, parameters), drawn
    without replacement: (n − b) / (b (n − 1)) · σ², σ² = (1/n) Σᵢ ‖gᵢ − g‖²."""
    n = per_sample.shape[0]
    spread = (per_sample - per_sample.mean(0)).square().sum(1).mean()
    return float((n - b) / (b * (n - 1)) * spread)


def noise_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × batch size: the mean of measured / expected over the logged epoch
    starts (1 in expectation) and its standard error. Every rate of a seed sees the same
    batch at a step, so the independent draws are (seed, step): the ratio is averaged over
    the rates there first, and the error is over those draws."""
    if points.empty:
        return points
    ratio = points.assign(ratio=points.measured / points.expected)
    draws = ratio.groupby(["dataset", "batch", "seed", "step"])["ratio"].mean().reset_index()
    out = draws.groupby(["dataset", "batch"])["ratio"].agg(["size", "mean", "std"])
    out = out.rename(columns={"size": "draws", "mean": "measured_over_expected"})
    out["std_error"] = out.pop("std") / np.sqrt(out["draws"])
    out["consistent"] = (out["measured_over_expected"] - 1).abs() <= 3 * out["std_error"]
    return out.reset_index()


def agreement(pairs: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Manual and function runs against autograd, per batch size: how many agree, the
    largest weight and loss gaps over all steps, and the largest per-batch gradient error."""
    if pairs.empty:
        return pairs
    size = batch_sizes(runs.set_index("run_id").loc[pairs.run_id].reset_index())
    table = pairs.assign(batch=size.to_numpy())
    columns = {"max_delta_theta": "max", "max_delta_loss": "max", "agrees": "sum"}
    if "max_grad_err_vs_terms" in table:
        columns["max_grad_err_vs_terms"] = "max"
    out = table.groupby(["dataset", "dtype", "impl", "batch"]).agg(columns)
    out["pairs"] = table.groupby(["dataset", "dtype", "impl", "batch"]).size()
    return out.reset_index()


def _training_set(run) -> tuple[torch.Tensor, torch.Tensor]:
    split = load_split(dataset_config(run), int(run["seed"]), float(run["val_fraction"]))
    X = torch.tensor(split.X_train, dtype=torch.float64)
    multiclass = int(run["n_classes"]) > 2
    y = torch.tensor(split.y_train, dtype=torch.int64 if multiclass else torch.float64)
    return X, y


def _per_sample_gradients(run, n_features: int):
    """θ (by name), X, y → (n, parameters): each row's gradient of its own loss, by
    ``torch.func`` on the kind's reference loss (what autograd differentiates), in float64."""
    kind = make_model(
        "autograd", n_features, n_classes=int(run["n_classes"]), kind=run_kind(run),
        dtype=torch.float64,
    ).kind  # fmt: skip

    def one(params, x, y):
        return kind.reference_loss_at(x.unsqueeze(0), y.unsqueeze(0), *params)[0]

    grad = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))

    def per_sample(params, X, y):
        grads = grad(tuple(torch.as_tensor(p).double() for p in params.values()), X, y)
        return torch.cat([g.reshape(len(X), -1) for g in grads], 1)

    return per_sample
