"""The comparisons a researcher asks of a sweep, each a DataFrame.

- :func:`pairs`: every manual and function run against its autograd twin (same dataset, lr,
  device, dtype, seed): how far apart their trajectories are, and whether that is within the
  measured tolerance for the dtype.
- :func:`best_lrs`: per dataset × implementation × device, the lr with the lowest mean final
  validation loss over seeds, flagged when it sits on the edge of the grid.
- :func:`reference`: each run's final training loss against the true optimum of the same
  objective (scikit-learn's lbfgs, tight tolerance), where one exists: on a linearly separable
  training set the unpenalised loss has no minimiser, and the table says so instead.
- :func:`devices`: the same run on different devices: agreement and time per step.
"""

from __future__ import annotations

from dataclasses import replace
from functools import cache

import numpy as np
import pandas as pd
import torch

from analysis.agreement import TOLERANCES, trajectory_gap
from analysis.runs import KEYS, Sweep, dataset_config

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def pairs(sweep: Sweep) -> pd.DataFrame:
    """One row per manual or function run, beside its autograd twin."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    twins = runs[runs.impl == "autograd"].set_index(KEYS)
    rows = []
    for _, run in runs[runs.impl != "autograd"].iterrows():
        key = tuple(run[k] for k in KEYS)
        row = {**run[KEYS].to_dict(), "impl": run.impl, "run_id": run.run_id}
        if key not in twins.index:
            rows.append({**row, "agrees": False, "note": "no autograd twin in this sweep"})
            continue
        twin = twins.loc[key]
        gap = trajectory_gap(sweep.as_history(run.run_id), sweep.as_history(twin.run_id))
        ours, theirs = sweep.history(run.run_id), sweep.history(twin.run_id)
        dtype = DTYPES[run["dtype"]]
        # The loss over every step, not only the rows trajectory.parquet kept.
        max_delta_loss = float((ours["train/loss"] - theirs["train/loss"]).abs().max())
        gap = replace(gap, max_delta_loss=max_delta_loss)
        rows.append(
            {
                **row,
                "twin_run_id": twin.run_id,
                "max_delta_loss": max_delta_loss,
                "max_delta_w": gap.max_delta_w,
                "max_delta_b": gap.max_delta_b,
                **{
                    f"{name}{suffix}": source[f"{split}/{metric}"]
                    for name, split, metric in (
                        ("train_loss", "train", "loss"),
                        ("val_loss", "val", "loss"),
                        ("val_accuracy", "val", "accuracy"),
                    )
                    for suffix, source in (("", run), ("_autograd", twin))
                },
                "max_grad_rel_err": float(ours["check/grad_rel_err"].max()),
                "max_grad_err_vs_terms": float(ours["check/grad_err_vs_terms"].max()),
                "tolerance": TOLERANCES[dtype],
                "agrees": gap.agrees(dtype),
                "note": "",
            }
        )
    return pd.DataFrame(rows)


# --- the data behind the runs -----------------------------------------------------------------
def smoothness(X: np.ndarray) -> float:
    """L = λ_max([X 1]ᵀ[X 1]) / 4m: the logistic loss's gradient is L-Lipschitz, so full-batch
    GD is stable for lr < 2/L. Above it the iterates oscillate and amplify rounding."""
    Xb = np.hstack([X, np.ones((len(X), 1))])
    return float(np.linalg.eigvalsh(Xb.T @ Xb / len(X))[-1] / 4)


def separable(X: np.ndarray, y: np.ndarray) -> bool:
    """Is there (w, b) with ỹᵢ(xᵢ·w + b) ≥ 1 for all i (ỹ = 2y − 1)? A linear feasibility
    problem, answered exactly by an LP rather than guessed from a fit."""
    from scipy.optimize import linprog

    signs = 2.0 * y - 1.0
    A = -signs[:, None] * np.hstack([X, np.ones((len(X), 1))])
    result = linprog(np.zeros(A.shape[1]), A_ub=A, b_ub=-np.ones(len(X)), bounds=(None, None))
    return result.status == 0


def _data_facts(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, seed, val_fraction): smoothness, separability and the optimum."""
    splits = runs.drop_duplicates(["dataset", "seed", "val_fraction"])
    return pd.DataFrame(
        {
            "dataset": run["dataset"],
            "seed": run["seed"],
            "val_fraction": run["val_fraction"],
            **_split_facts(dataset_config(run), int(run["seed"]), float(run["val_fraction"])),
        }
        for _, run in splits.iterrows()
    )


@cache
def _split_facts(dataset, seed: int, val_fraction: float) -> dict[str, float | bool]:
    """Computed once per split (an LP and an lbfgs fit), whichever table asks first."""
    from sklearn.linear_model import LogisticRegression as SkLogistic

    from experiments.sweep import load_split
    from manual_models import LogisticRegression

    split = load_split(dataset, seed, val_fraction)
    X, y = split["X_train"], split["y_train"].astype(float)
    facts = {
        "L": smoothness(X),
        "separable": separable(X, y),
        "optimum_train_loss": np.nan,
        "optimum_grad_norm": np.nan,
    }
    if not facts["separable"]:
        fit = SkLogistic(C=np.inf, solver="lbfgs", tol=1e-12, max_iter=100_000).fit(X, y)
        model = LogisticRegression(X.shape[1], dtype=torch.float64)
        model.set_parameters(torch.tensor(fit.coef_[0]), torch.tensor(fit.intercept_[0]))
        Xt, yt = torch.tensor(X), torch.tensor(y)
        grads = model.gradients(Xt, yt)
        facts["optimum_train_loss"] = float(model.loss(Xt, yt))
        facts["optimum_grad_norm"] = float(
            torch.linalg.vector_norm(torch.cat([grads["dw"], grads["db"].reshape(1)]))
        )
    return facts


def reference(sweep: Sweep) -> pd.DataFrame:
    """Each finished run's final training loss against the optimum of the same objective."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    facts = _data_facts(runs)
    out = runs[["dataset", "device", "dtype", "impl", "lr", "seed", "val_fraction", "run_id"]]
    out = out.assign(final_train_loss=runs["train/loss"]).merge(
        facts, on=["dataset", "seed", "val_fraction"]
    )
    out["gap_to_optimum"] = out["final_train_loss"] - out["optimum_train_loss"]
    out["note"] = np.where(
        out["separable"],
        "training set linearly separable: the loss has infimum 0 and no minimiser",
        "",
    )
    return out.drop(columns=["val_fraction"])


def stability(sweep: Sweep) -> pd.DataFrame:
    """lr·L per run: full-batch GD on this loss is stable for lr·L < 2."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    facts = _data_facts(runs)[["dataset", "seed", "val_fraction", "L"]]
    out = runs[["run_id", "dataset", "seed", "val_fraction", "lr"]].merge(
        facts, on=["dataset", "seed", "val_fraction"]
    )
    return out.assign(lr_times_L=out["lr"] * out["L"])[["run_id", "L", "lr_times_L"]]


def best_lrs(sweep: Sweep) -> pd.DataFrame:
    """Per dataset × impl × device (× dtype): the lr with the lowest mean final validation loss."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    group = ["dataset", "impl", "device", "dtype"]
    per_lr = (
        runs.groupby([*group, "lr"])
        .agg(
            val_loss_mean=("val/loss", "mean"),
            val_loss_std=("val/loss", "std"),
            val_accuracy_mean=("val/accuracy", "mean"),
            seeds=("seed", "nunique"),
        )
        .reset_index()
    )
    grid = runs.groupby(group)["lr"].agg(lr_min="min", lr_max="max", lrs="nunique")
    best = per_lr.loc[per_lr.groupby(group)["val_loss_mean"].idxmin()].join(grid, on=group)
    best["on_edge"] = (best["lrs"] > 1) & (
        (best["lr"] == best["lr_min"]) | (best["lr"] == best["lr_max"])
    )
    best = best.rename(columns={"lr": "best_lr"}).drop(columns=["lr_min", "lr_max"])
    # Each implementation at its own best lr, against autograd at its own best.
    autograd = best[best.impl == "autograd"].set_index(["dataset", "device", "dtype"])
    joined = best.join(
        autograd[["best_lr", "val_loss_mean"]].add_suffix("_autograd"),
        on=["dataset", "device", "dtype"],
    )
    joined["val_loss_vs_autograd"] = joined["val_loss_mean"] - joined["val_loss_mean_autograd"]
    return joined.reset_index(drop=True)


def devices(sweep: Sweep) -> pd.DataFrame:
    """Time per step on each device, and how far the same run lands on another device."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    keys = ["dataset", "impl", "dtype", "seed", "lr"]
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
                deltas.append(float((a["train/loss"] - b["train/loss"]).abs().max()))
            table[f"max_delta_loss_cpu_{other}"] = deltas
            table[f"speedup_{other}"] = table["step_ms_cpu"] / table[f"step_ms_{other}"]
    return table
