"""The stability threshold of gradient descent, predicted from the Hessian at the optimum and
held against every run's history.

Near a minimiser θ*, one step of gradient descent at rate η is, to first order,
θ_{t+1} − θ* = (I − η H*)(θ_t − θ*), H* = ∇²J(θ*) with eigenvalues λ_i (λ* the largest). So:

- η·λ* < 2: every factor |1 − ηλ_i| < 1 and θ* attracts; the distance falls at the linear rate
  max_i |1 − ηλ_i| (over λ_i > 0: a zero eigenvalue is a direction J does not depend on, such
  as a constant feature, which the step never moves).
- η·λ* > 2: the top factor is below −1, θ* repels, and the run cannot converge to it (period
  doubling begins at 2/λ*).

That is local. Meng, Orvieto, Cao and De Sa (2024, "Gradient descent on logistic regression
with non-separable data and large step sizes") show that in one dimension η < 1/λ* converges
from any start, while for η in (1/λ*, 2/λ*), and in more dimensions even below 1/λ*, some data
and starts settle into stable cycles instead. Hence three zones of η·λ* (below 1, 1 to 2, above
2), and each run is classified from what it did:

- ``monotone``: the loss never rose (by more than the dtype's rounding);
- ``oscillating``: it rose, and then fell steadily to the end, or its swings die down (each
  quarter of the last stretch swinging less than the one before, the last less than half the
  first);
- ``cycle``: the late loss repeats with a period p ≥ 2 (the smallest one) and does not decay;
- ``neither``: none of these by the last step.

The mean logistic gradient is at most max‖x̃ᵢ‖, so the parameters cannot blow up
exponentially on these models: a run the loop flags as diverged is a finding, not a class.

Only plain full-batch gradient descent (``sgd`` without momentum, the whole set a step) is
held here: momentum and Adam have other thresholds, and a mini-batch step another objective.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import torch

from analysis.compare import SPLIT, built_in, optimum
from analysis.runs import Sweep
from experiments.data import load_split
from experiments.records import dataset_config
from manual_models import make_model

ZONES = ("below 1", "1 to 2", "above 2")  # of η·λ*
CLASSES = ("monotone", "oscillating", "cycle", "neither")
ROUNDING = {"float32": 1e-5, "float64": 1e-12}  # a loss change below this × max(J, 1) is noise
LONGEST_PERIOD = 64
RANGE = 1e-9  # an eigenvalue below RANGE·λ* is a direction J does not see


@dataclass(frozen=True)
class Curvature:
    """H* = ∇²J(θ*) on one split and objective: θ* flat (as the trajectory lists it), the
    eigenvalues, and the eigenvectors of those above RANGE·λ* (the range, as columns)."""

    theta: np.ndarray
    eigenvalues: np.ndarray
    range_basis: np.ndarray

    @property
    def top(self) -> float:
        return float(self.eigenvalues[-1])

    def rate(self, lr: float) -> float:
        """max |1 − η λ_i| over the range: the linear rate of ‖θ_t − θ*‖ near θ*."""
        seen = self.eigenvalues[self.eigenvalues > RANGE * self.top]
        return float(np.abs(1 - lr * seen).max())

    def distance(self, thetas: np.ndarray) -> np.ndarray:
        """‖θ_t − θ*‖ in the range of H* (a row per θ_t)."""
        return np.linalg.norm((thetas - self.theta) @ self.range_basis, axis=1)


@cache
def curvature_at_optimum(
    dataset, seed: int, val_fraction: float, n_classes: int, weight_decay: float
) -> Curvature | None:
    """H*'s spectrum, from the Hessian by hand at scikit-learn's θ* (None: no minimiser)."""
    theta = optimum(dataset, seed, val_fraction, n_classes, weight_decay)
    if theta is None:
        return None
    split = load_split(dataset, seed, val_fraction)
    X = torch.tensor(split.X_train)
    y = torch.tensor(split.y_train, dtype=torch.float64 if n_classes == 2 else None)
    kind = make_model("manual", X.shape[1], n_classes=n_classes, dtype=torch.float64).kind
    H = kind.hessian_at(X, y, *theta, weight_decay=weight_decay)
    values, vectors = torch.linalg.eigh(H)
    seen = values > RANGE * values[-1]
    flat = torch.cat([t.flatten() for t in theta]).numpy()
    return Curvature(flat, values.numpy(), vectors[:, seen].numpy())


def zone(lr_times_top: float) -> str:
    return ZONES[0] if lr_times_top < 1 else ZONES[1] if lr_times_top < 2 else ZONES[2]


@dataclass(frozen=True)
class Behaviour:
    """What a run's loss did: its class, the cycle's period and first step (if one), how
    many steps the loss rose at, and the last of them."""

    kind: str
    period: int | None = None
    cycle_from: int | None = None
    rises: int = 0
    last_rise: int | None = None


def behaviour(loss: np.ndarray, dtype: str) -> Behaviour:
    """Classify one run from its loss at every step (see the module's docstring)."""
    noise = ROUNDING[dtype] * max(float(np.nanmax(np.abs(loss))), 1.0)
    rose = np.flatnonzero(np.diff(loss) > noise)
    rises = {"rises": len(rose), "last_rise": int(rose[-1] + 1) if len(rose) else None}
    if not len(rose):
        return Behaviour("monotone", **rises)
    window = loss[-max(min(4 * LONGEST_PERIOD, len(loss) // 4), 8) :]
    if rose[-1] + 1 < len(loss) - len(window):  # it rose, then fell steadily to the end
        return Behaviour("oscillating", **rises)
    half, swing = window[len(window) // 2 :], np.ptp(window[-len(window) // 4 :])
    for p in range(2, min(LONGEST_PERIOD, len(half) // 2) + 1):
        if np.abs(half[p:] - half[:-p]).max() <= noise + 0.01 * swing:
            return Behaviour("cycle", p, _cycle_start(loss, p, noise + 0.01 * swing), **rises)
    swings = [np.ptp(part) for part in np.array_split(window, 4)]
    if all(a > b for a, b in itertools.pairwise(swings)) and swings[-1] < swings[0] / 2:
        return Behaviour("oscillating", **rises)  # still rising, by less and less
    return Behaviour("neither", **rises)


def _cycle_start(loss: np.ndarray, p: int, tolerance: float) -> int:
    """The first step from which J_{t+p} = J_t (within ``tolerance``) holds to the end."""
    off = np.flatnonzero(np.abs(loss[p:] - loss[:-p]) > tolerance)
    return int(off[-1] + 1) if len(off) else 0


def late_rate(steps: np.ndarray, distances: np.ndarray, floor: float) -> float:
    """The linear rate of ‖θ_t − θ*‖ late in its fall: exp of the least-squares slope of log
    distance against t over the second half of the steps it stayed above ``floor`` (where
    rounding holds it); NaN with fewer than three kept rows there."""
    above = distances > floor
    if above.sum() < 3:
        return np.nan
    late = above & (steps >= steps[above][-1] / 2)
    if late.sum() < 3:
        return np.nan
    return float(np.exp(np.polyfit(steps[late], np.log(distances[late]), 1)[0]))


def gradient_descent_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished runs of plain full-batch gradient descent (weight decay or not: the
    penalty is part of the objective whose Hessian the threshold is of), of a built-in kind."""
    size = pd.to_numeric(runs.get("batch_size", pd.Series(index=runs.index)), errors="coerce")
    full = size.isna() | (size >= pd.to_numeric(runs.get("n_train", np.inf)))
    plain = (runs["optimizer.name"] == "sgd") & runs.zero_grad.astype(bool)
    return built_in(runs[(runs.status == "FINISHED") & plain & full])


def table(sweep: Sweep) -> pd.DataFrame:
    """``stability.csv``: every plain gradient-descent run on an objective with a minimiser,
    its zone of η·λ*, its class, and its late linear rate against max_i |1 − ηλ_i|."""
    rows = []
    for _, run in gradient_descent_runs(sweep.runs).iterrows():
        seed, val_fraction, n_classes, weight_decay = (run[k] for k in SPLIT[1:])
        curvature = curvature_at_optimum(
            dataset_config(run), int(seed), float(val_fraction), int(n_classes), float(weight_decay)
        )
        if curvature is None:
            continue
        rows.append({**run[["run_id", "run_name", *SPLIT, "impl", "dtype", "lr"]].to_dict(),
                     **_held(sweep, run, curvature)})  # fmt: skip
    return pd.DataFrame(rows)


def _held(sweep: Sweep, run: pd.Series, curvature: Curvature) -> dict:
    lr, history = float(run["lr"]), sweep.history(run.run_id)
    what = behaviour(history["train/loss"].to_numpy(), run["dtype"])
    steps, thetas = sweep.parameters(run.run_id)
    distances = curvature.distance(thetas)
    floor = 10 * ROUNDING[run["dtype"]] * max(np.linalg.norm(curvature.theta), 1.0)
    stable = what.kind in ("monotone", "oscillating")
    measured = late_rate(steps, distances, floor) if stable else np.nan
    predicted = curvature.rate(lr)
    sharpness = history.get("curv/lr_x_sharpness", pd.Series(dtype=float)).dropna()
    return {
        "lambda_star": curvature.top,
        "lr_times_lambda_star": lr * curvature.top,
        "zone": zone(lr * curvature.top),
        "class": what.kind,
        "period": what.period,
        "cycle_from": what.cycle_from,
        "loss_rises": what.rises,
        "last_rise": what.last_rise,
        "final_distance": distances[-1],
        "late_rate": measured,
        "predicted_rate": predicted,
        # ln(measured)/ln(predicted): 1 where the slowest direction alone is left, above 1
        # while faster ones still count
        "rate_ratio": np.log(measured) / np.log(predicted) if predicted < 1 else np.nan,
        "final_lr_x_sharpness": sharpness.iloc[-1] if len(sharpness) else np.nan,
    }


def counts(stability: pd.DataFrame) -> pd.DataFrame:
    """Runs per zone and class (a zone × class table, every zone and class shown)."""
    if not len(stability):
        return pd.DataFrame(columns=["zone", *CLASSES])
    table = pd.crosstab(stability["zone"], stability["class"])
    table = table.reindex(index=list(ZONES), columns=list(CLASSES), fill_value=0)
    return table.rename_axis(None, axis=1).reset_index()


def sharpness_along(sweep: Sweep) -> pd.DataFrame:
    """``sharpness.csv``: every plain gradient-descent run whose sharpness was measured, what
    lr·λ_max did along it (at the start, its largest, its median over the second half, at the
    end, the share of measurements above 2) beside the steps its loss rose at and the last of
    them: a run's own record of where it stood against the threshold, separable data too."""
    rows = []
    for _, run in gradient_descent_runs(sweep.runs).iterrows():
        history = sweep.history(run.run_id)
        if "curv/lr_x_sharpness" not in history:
            continue
        measured = history.dropna(subset=["curv/lr_x_sharpness"])
        ratio = measured["curv/lr_x_sharpness"].to_numpy()
        late = ratio[measured.step.to_numpy() >= measured.step.iloc[-1] / 2]
        what = behaviour(history["train/loss"].to_numpy(), run["dtype"])
        rows.append(
            {
                **run[["run_id", "run_name", "dataset", "impl", "dtype", "seed", "lr"]].to_dict(),
                "first_lr_x_sharpness": ratio[0],
                "max_lr_x_sharpness": ratio.max(),
                "late_median_lr_x_sharpness": np.median(late),
                "final_lr_x_sharpness": ratio[-1],
                "share_above_2": float((ratio > 2).mean()),
                "loss_rises": what.rises,
                "last_rise": what.last_rise,
                "final_train_loss": history["train/loss"].iloc[-1],
            }
        )
    return pd.DataFrame(rows)


def notes(held: pd.DataFrame) -> list[str]:
    """What the table says in sentences: the cycles below 2/λ* (each with its period and first
    step), and any run whose class its zone rules out (one that converged above 2)."""
    said = []
    below = held[(held["class"] == "cycle") & (held["lr_times_lambda_star"] < 2)]
    for _, run in below.iterrows():
        said.append(
            f"{run.run_name}: a cycle of period {run.period} from step {run.cycle_from} at "
            f"η·λ* = {run.lr_times_lambda_star:.3g}, below 2 (the local theory's threshold)"
        )
    converged = held[(held["zone"] == ZONES[2]) & held["class"].isin(["monotone", "oscillating"])]
    for _, run in converged.iterrows():
        said.append(
            f"{run.run_name}: settled at η·λ* = {run.lr_times_lambda_star:.3g} > 2, where θ* "
            f"repels (final ‖θ − θ*‖ = {run.final_distance:.3g}): a finding to explain"
        )
    return said
