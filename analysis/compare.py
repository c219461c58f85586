"""The comparisons a researcher asks of a sweep, each a DataFrame.

- :func:`pairs`: every manual and function run against its autograd twin (same dataset, lr,
  device, dtype, seed): how far apart their trajectories are, and whether that is within the
  measured tolerance for the dtype.
- :func:`best_lrs`: per dataset × implementation × device, the lr with the lowest mean final
  validation loss over seeds, flagged when it sits on the edge of the grid.
- :func:`reference`: each run's final objective against the true optimum of the same
  objective (scikit-learn's lbfgs, tight tolerance; binary or multinomial, with the run's L2
  weight decay), where one exists: on a linearly separable training set the unpenalised loss
  has no minimiser, and the table says so instead.
- :func:`devices`: the same run on different devices: agreement and time per step.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scipy.optimize import linprog
from sklearn.linear_model import LogisticRegression as SkLogistic

from analysis.agreement import TOLERANCES, parted_at, trajectory_gap
from analysis.runs import KEYS, Sweep, step_loss
from experiments.data import load_split
from experiments.findings import best_lrs as _best_lrs
from experiments.records import dataset_config
from manual_models import make_model

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def pairs(sweep: Sweep) -> pd.DataFrame:
    """One row per manual or function run, beside its autograd twin."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    twins = runs[runs.impl == "autograd"].set_index(KEYS)
    rows = []
    for _, run in runs[runs.impl != "autograd"].iterrows():
        key = tuple(run[k] for k in KEYS)
        row = {**run[KEYS].to_dict(), "impl": run.impl, "run_id": run.run_id}
        row["model"] = run.get("model", "None")  # "None": a built-in kind
        if key not in twins.index:
            rows.append({**row, "agrees": False, "note": "no autograd twin in this sweep"})
            continue
        twin = twins.loc[key]
        histories = sweep.as_history(run.run_id), sweep.as_history(twin.run_id)
        gap = trajectory_gap(*histories)
        ours, theirs = sweep.history(run.run_id), sweep.history(twin.run_id)
        dtype = DTYPES[run["dtype"]]
        parted = parted_at(*histories, TOLERANCES[dtype])
        # The loss over every step, not only the rows trajectory.parquet kept.
        max_delta_loss = float((step_loss(ours) - step_loss(theirs)).abs().max())
        gap = replace(gap, max_delta_loss=max_delta_loss)
        rows.append(
            {
                **row,
                "twin_run_id": twin.run_id,
                "max_delta_loss": max_delta_loss,
                "max_delta_theta": gap.max_delta_theta,  # every parameter
                **{f"max_delta_{name}": delta for name, delta in gap.max_delta.items()},
                **{
                    f"{name}{suffix}": source[f"{split}/{metric}"]
                    for name, split, metric in (
                        ("train_loss", "train", "loss"),
                        ("val_loss", "val", "loss"),
                        ("val_accuracy", "val", "accuracy"),
                    )
                    for suffix, source in (("", run), ("_autograd", twin))
                },
                # Absent where nothing was checked (no zero_grad: the step's gradient is the
                # sum of all past ones by design).
                **{
                    f"max_{name}": float(ours[f"check/{name}"].max())
                    if f"check/{name}" in ours
                    else np.nan
                    for name in ("grad_rel_err", "grad_err_vs_terms")
                },
                "tolerance": TOLERANCES[dtype],
                "agrees": gap.agrees(dtype),
                "parted_at": np.nan if parted is None else parted,  # the first step apart
                "note": "",
            }
        )
    return pd.DataFrame(rows)


# --- the data behind the runs -----------------------------------------------------------------
SPLIT = ["dataset", "seed", "val_fraction", "n_classes", "weight_decay"]  # one objective each


def smoothness(X: np.ndarray, n_classes: int = 2, weight_decay: float = 0.0) -> float:
    """L, the Lipschitz constant of the loss's gradient; full-batch GD is stable for lr < 2/L.

    The Hessian is X̃ᵀ D X̃ / m (X̃ = [X 1]) with D ≼ 1/4 for the logistic loss and
    ≼ 1/2 for softmax cross-entropy (diag(p) − ppᵀ has eigenvalues at most 1/2), plus λ for
    the weight decay. Above 2/L the iterates oscillate and amplify rounding."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    curvature = 0.25 if n_classes == 2 else 0.5
    return float(np.linalg.eigvalsh(Xb.T @ Xb / len(X))[-1] * curvature + weight_decay)


def separable(X: np.ndarray, y: np.ndarray, n_classes: int = 2) -> bool:
    """Is there (W, b) putting every sample's own class ahead by a margin, Z_{i,yᵢ} − Z_ic ≥ 1
    for all c ≠ yᵢ (binary: ỹᵢ(xᵢ·w + b) ≥ 1)? A linear feasibility problem, answered exactly
    by an LP rather than guessed from a fit. Then the unpenalised loss has no minimiser."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    y = np.asarray(y).astype(np.int64)  # with two classes: w = w₁ − w₀ is the binary w
    d = Xb.shape[1]
    i, c = np.nonzero(np.arange(n_classes)[None, :] != y[:, None])  # one row per (i, c ≠ yᵢ)
    r = np.arange(len(i))[:, None].repeat(d, 1)
    cols = np.arange(d)[None, :]
    # −(x̃ᵢ·w_{yᵢ} − x̃ᵢ·w_c) ≤ −1, the variables being w_0, w_1, … one class after another
    A = sparse.coo_matrix(
        (
            np.concatenate([-Xb[i].ravel(), Xb[i].ravel()]),
            (
                np.concatenate([r.ravel(), r.ravel()]),
                np.concatenate(
                    [(y[i][:, None] * d + cols).ravel(), (c[:, None] * d + cols).ravel()]
                ),
            ),
        ),
        shape=(len(i), d * n_classes),
    )
    result = linprog(
        np.zeros(d * n_classes),
        A_ub=A.tocsr(),
        b_ub=-np.ones(len(i)),
        bounds=(None, None),
        method="highs",
    )
    return result.status == 0


def _data_facts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per split and objective: smoothness, separability and the optimum."""
    if runs.empty:  # a sweep of a model of one's own only: its columns, in their dtypes
        dtypes = {name: bool if name == "separable" else float for name in FACTS}
        return runs[SPLIT].assign(**{k: pd.Series(dtype=t) for k, t in dtypes.items()})
    splits = runs.drop_duplicates(SPLIT)
    return pd.DataFrame(
        {
            **{k: run[k] for k in SPLIT},
            **_split_facts(
                dataset_config(run),
                int(run["seed"]),
                float(run["val_fraction"]),
                int(run["n_classes"]),
                float(run["weight_decay"]),
            ),
        }
        for _, run in splits.iterrows()
    )


@cache
def split_separable(dataset, seed: int, val_fraction: float, n_classes: int) -> bool:
    """:func:`separable` of a run's training split, once a split."""
    split = load_split(dataset, seed, val_fraction)
    return separable(split.X_train, split.y_train, n_classes)


FACTS = ["L", "separable", "optimum_train_loss", "optimum_grad_norm"]


@cache
def _split_facts(
    dataset, seed: int, val_fraction: float, n_classes: int = 2, weight_decay: float = 0.0
) -> dict[str, float | bool]:
    """Computed once per split and objective (an LP and an lbfgs fit), whichever table asks
    first. The objective is the mean loss + (λ/2)‖W‖², λ the weight decay: for λ > 0 it is
    strongly convex and has one minimiser, separable data or not."""
    split = load_split(dataset, seed, val_fraction)
    X, y = split.X_train, split.y_train
    facts = {
        "L": smoothness(X, n_classes, weight_decay),
        "separable": split_separable(dataset, seed, val_fraction, n_classes),
        "optimum_train_loss": np.nan,  # the objective at its minimiser, penalty included
        "optimum_grad_norm": np.nan,
    }
    theta = optimum(dataset, seed, val_fraction, n_classes, weight_decay)
    if theta is not None:
        W, b = theta
        Xt, yt = torch.tensor(X), torch.tensor(y, dtype=torch.float64 if n_classes == 2 else None)
        model = make_model("manual", X.shape[1], n_classes=n_classes, dtype=torch.float64)
        model.set_parameters(W, b)
        grads = model.gradients(Xt, yt)
        dW = grads["dw"] + weight_decay * model.w
        penalty_value = weight_decay / 2 * float(torch.sum(model.w**2))
        facts["optimum_train_loss"] = float(model.loss(Xt, yt)) + penalty_value
        facts["optimum_grad_norm"] = float(
            torch.linalg.vector_norm(torch.cat([dW.flatten(), grads["db"].reshape(-1)]))
        )
    return facts


@cache
def optimum(
    dataset, seed: int, val_fraction: float, n_classes: int = 2, weight_decay: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """θ* = (W, b), the minimiser of the mean loss + (λ/2)‖W‖² on the run's training split
    (float64), or None where there is none: a separable training set without weight decay.
    scikit-learn's lbfgs finds it, :func:`polished` makes it exact to rounding."""
    if weight_decay == 0 and split_separable(dataset, seed, val_fraction, n_classes):
        return None
    split = load_split(dataset, seed, val_fraction)
    X, y = split.X_train, split.y_train
    # scikit-learn minimises C Σᵢ lossᵢ + ½‖W‖² (the intercept unpenalised), which is m·C
    # times ours when C = 1 / (λ m); multinomial for more than two classes.
    C = 1 / (weight_decay * len(X)) if weight_decay > 0 else np.inf
    fit = SkLogistic(C=C, solver="lbfgs", tol=1e-12, max_iter=100_000).fit(X, y)
    if n_classes == 2:
        W, b = torch.tensor(fit.coef_[0]), torch.tensor(fit.intercept_[0])
    else:
        W, b = torch.tensor(fit.coef_.T), torch.tensor(fit.intercept_)
    y = torch.tensor(y, dtype=torch.float64 if n_classes == 2 else None)
    return polished(torch.tensor(X), y, n_classes, weight_decay, W, b)


def polished(X, y, n_classes: int, weight_decay: float, W, b, steps: int = 3):
    """Newton's method from lbfgs's answer, with the gradient and the Hessian by hand: lbfgs
    stops where the gradient is ~1e-8 (θ* off by ~1e-9, a floor under every distance to it);
    Newton's steps square the error. H may be singular (a constant feature; softmax's shift
    of every class's logit), and the gradient has no part in its null space: the step is
    H⁺g, in H's range."""
    model = make_model("manual", X.shape[1], n_classes=n_classes, dtype=torch.float64)
    for _ in range(steps):
        model.set_parameters(W, b)
        grads = model.gradients(X, y)
        g = torch.cat([(grads["dw"] + weight_decay * W).flatten(), grads["db"].flatten()])
        H = model.kind.hessian_at(X, y, W, b, weight_decay=weight_decay)
        step = torch.linalg.pinv(H, hermitian=True, rtol=1e-12) @ g
        W, b = W - step[: W.numel()].reshape(W.shape), b - step[W.numel() :].reshape(b.shape)
    return W, b


def built_in(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of the built-in kinds (logistic, softmax), whose objective, smoothness and
    optimum this module knows; not those of a model of one's own (``model:``)."""
    return runs[runs["model"] == "None"] if "model" in runs else runs


def reference(sweep: Sweep) -> pd.DataFrame:
    """Each finished run's final objective (training loss, plus (λ/2)‖W‖² under weight
    decay) against the optimum of the same objective (the built-in kinds' runs: a model of
    one's own has its own objective, whose optimum this does not know)."""
    runs = built_in(sweep.runs[sweep.runs.status == "FINISHED"])
    facts = _data_facts(runs)
    columns = ["dataset", "device", "dtype", "impl", "optimizer", "lr", "run_id", *SPLIT[1:]]
    out = runs[list(dict.fromkeys(columns))]
    w_norm = runs.get("param/w_norm", np.nan)
    penalty = (runs["weight_decay"] / 2 * w_norm**2).where(runs["weight_decay"] > 0, 0.0)
    out = out.assign(final_train_loss=runs["train/loss"] + penalty).merge(facts, on=SPLIT)
    out["gap_to_optimum"] = out["final_train_loss"] - out["optimum_train_loss"]
    out["note"] = np.where(
        out["separable"] & (out["weight_decay"] == 0),
        "training set linearly separable: the loss has infimum 0 and no minimiser",
        "",
    )
    return out.drop(columns=["val_fraction"])


def stability(sweep: Sweep) -> pd.DataFrame:
    """lr·L per run of a built-in kind: full-batch GD on this loss is stable for lr·L < 2."""
    runs = built_in(sweep.runs[sweep.runs.status == "FINISHED"])
    facts = _data_facts(runs)[[*SPLIT, "L"]]
    out = runs[["run_id", *SPLIT, "lr"]].merge(facts, on=SPLIT)
    return out.assign(lr_times_L=out["lr"] * out["L"])[["run_id", "L", "lr_times_L"]]


def best_lrs(sweep: Sweep) -> pd.DataFrame:
    """Per dataset × impl × rule × device × dtype: the lr with the lowest mean final validation
    loss over seeds, flagged on the grid's edge, beside autograd's own best (the summary a
    sweep records, :func:`experiments.findings.best_lrs`)."""
    return _best_lrs(sweep.runs)


def devices(sweep: Sweep) -> pd.DataFrame:
    """Time per step on each device, and how far the same run lands on another device."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    keys = ["dataset", "impl", "optimizer", "batch_size", "dtype", "seed", "lr"]
    table = runs.pivot_table(index=keys, columns="device", values="time/step_ms", aggfunc="first")
    table.columns = [f"step_ms_{d}" for d in table.columns]
    table = table.reset_index()
    present = sorted(runs.device.unique())
    if "cpu" in present and len(present) > 1:
        by_key = runs.set_index([*keys, "device"])
        for other in (d for d in present if d != "cpu"):
            deltas = []
            for key in table[keys].itertuples(index=False):
                try:
                    a = sweep.history(by_key.loc[(*key, "cpu"), "run_id"])
                    b = sweep.history(by_key.loc[(*key, other), "run_id"])
                except KeyError:
                    deltas.append(np.nan)
                    continue
                deltas.append(float((step_loss(a) - step_loss(b)).abs().max()))
            table[f"max_delta_loss_cpu_{other}"] = deltas
            table[f"speedup_{other}"] = table["step_ms_cpu"] / table[f"step_ms_{other}"]
    return table
