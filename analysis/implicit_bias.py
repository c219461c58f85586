"""Where gradient descent goes when there is no minimiser: the implicit bias on separable data.

Soudry, Hoffer, Nacson, Gunasekar and Srebro, *The Implicit Bias of Gradient Descent on
Separable Data* (JMLR 2018): on linearly separable data, gradient descent on the logistic loss
with a small enough step goes to infinity in the direction of the hard-margin SVM,

    θ_t = ŵ·log t + ρ_t,  ρ_t bounded (almost every dataset),
    ŵ = argmin ‖w‖² subject to yᵢ·wᵀx̃ᵢ ≥ 1 (yᵢ = ±1, x̃ = (x, 1): the bias is in the norm),

so the loss falls like 1/t and 1 − cos(θ_t, ŵ) like 1/log² t.

**The constant η·t·J(θ_t) tends to.** Late in the run the margins are large, so the loss of
a sample is ℓᵢ ≈ exp(−yᵢθᵀx̃ᵢ), and only the support vectors (yᵢŵᵀx̃ᵢ = 1) count: there
yᵢθ_tᵀx̃ᵢ = log t + yᵢρᵀx̃ᵢ, so J(θ_t) ≈ (1/(m t)) Σ_SV exp(−yᵢρᵀx̃ᵢ). The step is
θ_{t+1} − θ_t = −η∇J = (η/(m t)) Σ_SV exp(−yᵢρᵀx̃ᵢ) yᵢx̃ᵢ, and it is also ≈ ŵ/t (the
derivative of ŵ log t). Take the inner product of both with ŵ, and use yᵢŵᵀx̃ᵢ = 1:

    ‖ŵ‖² = (η/m) Σ_SV exp(−yᵢρᵀx̃ᵢ) = η·t·J(θ_t),   so   η·t·J(θ_t) → ‖ŵ‖².

**The sharpness goes to zero with the loss.** With sᵢ = ŷᵢ(1 − ŷᵢ) = σ(mᵢ)σ(−mᵢ) for the
margin mᵢ = yᵢθᵀx̃ᵢ, sᵢ ≤ σ(−mᵢ) = u/(1 + u) ≤ log(1 + u) = ℓᵢ (u = e^{−mᵢ}). So
λ_max(∇²J) = λ_max((1/m) Σ sᵢ x̃ᵢx̃ᵢᵀ) ≤ (1/m) Σ sᵢ‖x̃ᵢ‖² ≤ max‖x̃ᵢ‖²·J: below 2/η once the
loss is below 2/(η·max‖x̃ᵢ‖²), whatever η is.

**Large steps.** Wu, Bartlett, Telgarsky and Yu (COLT 2024, *Large stepsize gradient descent
for logistic loss*) show that with any step size gradient descent leaves an oscillating phase
after O(η) steps and then decreases the loss monotonically at the rate Õ(1/(ηt)): the last
step at which the loss rose should grow at most linearly with η.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from analysis import compare
from analysis.runs import Sweep
from analysis.stability import behaviour, gradient_descent_runs
from experiments.data import load_split
from experiments.records import dataset_config


@dataclass(frozen=True)
class Svm:
    """The hard-margin SVM of a separable training set, the bias in the norm: ŵ = (w, b)
    flat, the dual's α (ŵ = Σ αᵢ yᵢx̃ᵢ, α ≥ 0), and the support vectors' rows (margin 1)."""

    w: np.ndarray
    alpha: np.ndarray
    support: np.ndarray

    @property
    def norm(self) -> float:
        return float(np.linalg.norm(self.w))


def hard_margin_svm(X: np.ndarray, y: np.ndarray, tolerance: float = 1e-9) -> Svm:
    """ŵ = argmin ‖w‖² s.t. yᵢ wᵀx̃ᵢ ≥ 1, x̃ = (x, 1), y in {0, 1}: least distance programming
    (Lawson and Hanson, *Solving Least Squares Problems*, ch. 23) by non-negative least
    squares: with G the rows yᵢx̃ᵢ and h = 1, the u ≥ 0 minimising ‖[Gᵀ; hᵀ]u − (0, …, 0, 1)‖
    gives the residual r = (Gᵀu, Σu − 1), and ŵ = −r[:-1]/r[-1] = Gᵀα with α = u/(1 − Σu);
    r[-1] = 0 means no w satisfies the constraints (not separable). Exact to rounding, no
    tuning (``tests/analysis/test_implicit_bias.py`` checks the optimality conditions)."""
    signs = np.where(np.asarray(y) > 0.5, 1.0, -1.0)
    G = signs[:, None] * np.hstack([X, np.ones((len(X), 1))])
    E = np.vstack([G.T, np.ones(len(G))])
    f = np.zeros(E.shape[0])
    f[-1] = 1.0
    u, _ = nnls(E, f, maxiter=50 * E.shape[1])
    r = E @ u - f
    if abs(r[-1]) < 1e-12:
        raise ValueError("the training set is not linearly separable: no hard-margin SVM")
    w, alpha = -r[:-1] / r[-1], u / -r[-1]
    margins = G @ w
    return Svm(w, alpha, np.flatnonzero(margins <= 1 + tolerance))


@cache
def _svm_of(dataset, seed: int, val_fraction: float) -> tuple[Svm, np.ndarray, np.ndarray]:
    """ŵ of a run's training split, with the split's X and y (one load and one NNLS a split)."""
    split = load_split(dataset, seed, val_fraction)
    return hard_margin_svm(split.X_train, split.y_train), split.X_train, split.y_train


def separable_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The plain gradient-descent runs of two classes, without weight decay, on a separable
    training set: where there is no minimiser and the SVM's direction is the prediction."""
    runs = gradient_descent_runs(runs)
    runs = runs[(runs.n_classes.astype(int) == 2) & (runs.weight_decay.astype(float) == 0)]
    keep = [
        compare.split_separable(dataset_config(run), int(run.seed), float(run.val_fraction), 2)
        for _, run in runs.iterrows()
    ]
    return runs[np.array(keep, dtype=bool)] if len(runs) else runs


def table(sweep: Sweep) -> pd.DataFrame:
    """``implicit_bias.csv``: per separable run, at its last step T, each quantity beside the
    limit the theory gives it (the module's docstring)."""
    rows = []
    for _, run in separable_runs(sweep.runs).iterrows():
        svm, X, y = _svm_of(dataset_config(run), int(run.seed), float(run.val_fraction))
        names = ["run_id", "run_name", "dataset", "impl", "dtype", "seed", "lr"]
        rows.append({**run[names].to_dict(), "svm_norm": svm.norm,
                     "support_vectors": len(svm.support),
                     **_against_the_svm(sweep, run, svm, X, y)})  # fmt: skip
    return pd.DataFrame(rows)


def path(sweep: Sweep, run: pd.Series, svm: Svm, X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """Per kept row t ≥ 1: ‖θ_t‖, 1 − cos(θ_t, ŵ), the normalised margin over the SVM's, and
    η·t·J(θ_t) over ‖ŵ‖² (both → 1)."""
    history = sweep.history(run.run_id)
    steps, theta = sweep.parameters(run.run_id)
    keep = steps >= 1
    steps, theta = steps[keep], theta[keep]
    norms = np.linalg.norm(theta, axis=1)
    G = np.where(y > 0.5, 1.0, -1.0)[:, None] * np.hstack([X, np.ones((len(X), 1))])
    loss = history["train/loss"].to_numpy()[steps]
    return pd.DataFrame(
        {
            "step": steps,
            "norm": norms,
            "one_minus_cos": 1 - theta @ svm.w / (norms * svm.norm),
            "margin_ratio": (G @ theta.T).min(0) / norms * svm.norm,
            "lr_t_loss_ratio": float(run.lr) * steps * loss / svm.norm**2,
        }
    )


def _against_the_svm(sweep: Sweep, run: pd.Series, svm: Svm, X, y) -> dict:
    along = path(sweep, run, svm, X, y)
    last = along.iloc[-1]
    T = int(last.step)
    decade = along[along.step >= T / 10]  # ‖θ_t‖ = a + s·log t over the last decade
    slope = np.polyfit(np.log(decade.step), decade.norm, 1)[0] if len(decade) > 2 else np.nan
    history = sweep.history(run.run_id)
    what = behaviour(history["train/loss"].to_numpy(), run["dtype"])
    return {
        "steps": T,
        "norm_slope_last_decade": slope,
        "slope_over_svm_norm": slope / svm.norm,
        "one_minus_cos": last.one_minus_cos,
        "one_minus_cos_times_log2_t": last.one_minus_cos * np.log(T) ** 2,
        "margin_ratio": last.margin_ratio,
        "lr_t_loss_over_svm_norm2": last.lr_t_loss_ratio,
        **_sharpness_bound(history, X),
        "loss_rises": what.rises,
        "last_rise": what.last_rise,
        "last_rise_over_lr": np.nan if what.last_rise is None else what.last_rise / float(run.lr),
    }


def _sharpness_bound(history: pd.DataFrame, X: np.ndarray) -> dict:
    """The largest logged λ_max / (max‖x̃ᵢ‖²·J) over the measured rows (the bound: ≤ 1), and
    the first step from which lr·λ_max stays below 2."""
    if "curv/sharpness" not in history:
        return {"sharpness_over_bound": np.nan, "below_2_from": np.nan}
    measured = history.dropna(subset=["curv/sharpness"])
    reach = float((np.square(X).sum(1) + 1).max())
    ratio = measured["curv/sharpness"] / (reach * measured["train/loss"])
    below = measured["curv/lr_x_sharpness"].to_numpy() < 2
    stays = np.logical_and.accumulate(below[::-1])[::-1]  # below 2 from here to the end
    steps = measured.step.to_numpy()
    from_step = steps[stays.argmax()] if stays.any() else np.nan
    return {"sharpness_over_bound": float(ratio.max()), "below_2_from": from_step}


def paths(sweep: Sweep, held: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each manual run of the first seed in ``held``: its :func:`path` (for the figure)."""
    shown = held[(held.impl == "manual") & (held.seed == held.seed.min())]
    out = {}
    for _, run in sweep.runs[sweep.runs.run_id.isin(shown.run_id)].iterrows():
        svm, X, y = _svm_of(dataset_config(run), int(run.seed), float(run.val_fraction))
        out[run.run_id] = path(sweep, run, svm, X, y)
    return out


def last_rises(held: pd.DataFrame) -> pd.DataFrame:
    """Wu et al.'s claim, per dataset: the last step the loss rose at for each lr (median over
    seeds and implementations), and the slope of log(last rise) against log η over the rates
    whose loss rose at all (at most 1: at most linear in η)."""
    rows = []
    for dataset, part in held.groupby("dataset"):
        by_lr = part.groupby("lr")["last_rise"].median()
        rose = by_lr.dropna()
        slope = (
            np.polyfit(np.log(rose.index), np.log(rose.to_numpy()), 1)[0]
            if len(rose) > 1
            else np.nan
        )
        for lr, last in by_lr.items():
            rows.append({"dataset": dataset, "lr": lr, "last_rise": last,
                         "last_rise_over_lr": last / lr, "log_slope_vs_lr": slope})  # fmt: skip
    return pd.DataFrame(rows)
