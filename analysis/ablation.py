r"""The zero_grad lesson, measured: what a run does when nothing zeroes the gradient.

``loss.backward()`` adds into ``.grad``. Without ``optimizer.zero_grad()`` the gradient the
step uses at step t is not g_t = ∇J(θ_t) but the sum of every gradient so far:

    G_t = g_0 + g_1 + … + g_t                                   (accumulated gradient)
    θ_{t+1} = θ_t − α (G_t + λ w_t)                             (SGD, weight decay λ)
            = θ_0 − α Σ_{s ≤ t} (G_s + λ w_s)
            = θ_0 − α Σ_{s ≤ t} ((t + 1 − s) g_s + λ w_s)       (gradient s counted t + 1 − s times)

That is heavy-ball momentum with μ = 1: a velocity that never decays. Early gradients keep
pushing long after the loss has turned, so the iterates overshoot and oscillate, with a step
that grows with t instead of shrinking.

:func:`accumulation` checks this closed form against the logged run: it recomputes every g_s
in float64 at the logged θ_s, on the run's own training split, and compares Σ g_s with the
logged gradient and θ_0 − α Σ (G_s + λ w_s) with the logged weights, relative to the size of
what was summed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from analysis.agreement import TOLERANCES
from analysis.compare import DTYPES
from analysis.runs import Sweep, run_kind
from experiments.data import load_split
from experiments.records import dataset_config
from manual_models import make_model


def accumulation(sweep: Sweep) -> pd.DataFrame:
    """One row per finished SGD run without zero_grad: the closed form against the log, and
    the same run with zero_grad beside it."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    ablated = runs[~runs.zero_grad & (runs["optimizer.name"] == "sgd")]
    same = ["dataset", "impl", "device", "dtype", "seed", "lr", "weight_decay"]
    normal = runs[runs.zero_grad & (runs["optimizer.name"] == "sgd")].set_index(same)
    rows = []
    for _, run in ablated.iterrows():
        row = {k: run[k] for k in ["run_id", "run_name", *same]}
        row.update(_closed_form(sweep, run))
        key = tuple(run[k] for k in same)
        if key in normal.index:
            twin = normal.loc[[key]].iloc[0]
            row.update(
                {
                    "with_zero_grad_run_id": twin.run_id,
                    "final_train_loss": run["train/loss"],
                    "final_train_loss_with_zero_grad": twin["train/loss"],
                    # ‖dw‖ of the built-in kinds (a network's norms are by its own names)
                    "final_grad_w_norm": run.get("grad/w_norm", np.nan),
                    "final_grad_w_norm_with_zero_grad": twin.get("grad/w_norm", np.nan),
                }
            )
        rows.append(row)
    return pd.DataFrame(rows)


def _closed_form(sweep: Sweep, run: pd.Series) -> dict[str, object]:
    history = sweep.as_history(run.run_id)
    steps = sweep.trajectory(run.run_id)["step"].to_numpy()
    if not np.array_equal(steps, np.arange(len(steps))):
        return {
            "agrees": False,
            "note": "trajectory.parquet was thinned: raise "
            "max_trajectory_values to keep every step",
        }
    split = load_split(dataset_config(run), int(run.seed), float(run.val_fraction))
    n_classes = int(run.n_classes)
    X = torch.tensor(split.X_train)
    y = torch.tensor(split.y_train)
    if n_classes == 2:
        y = y.double()
    model = make_model(
        "manual", X.shape[1], n_classes=n_classes, kind=run_kind(run), dtype=torch.float64
    )
    _, params, grads = sweep.named(run.run_id)
    rows = history.steps + 1
    # θ flat, every parameter row by row in the kind's order; 1 where weight decay applies.
    theta = torch.tensor(np.hstack([p.reshape(rows, -1) for p in params.values()]))
    logged = torch.tensor(np.hstack([g.reshape(rows, -1) for g in grads.values()]))
    decays = torch.cat([
        torch.full((p[0].size,), float(decayed), dtype=torch.float64)
        for p, decayed in zip(params.values(), model.kind.decayed, strict=True)
    ])  # fmt: skip
    fresh = []
    for t in range(history.steps):  # g_s at every logged θ_s a step was taken from
        model.set_parameters(*(torch.tensor(p[t]) for p in params.values()))
        g = model.gradients(X, y)
        fresh.append(torch.cat([g[f"d{name}"].reshape(-1) for name in params]))
    g = torch.stack(fresh)
    G = torch.cumsum(g, dim=0)  # G_t = g_0 + … + g_t
    # The accumulated gradient the run logged at rows 0..T−1, against Σ g_s.
    summed = torch.cumsum(g.norm(dim=1), 0)  # Σ‖g_s‖: the size of what was added up
    err_G = ((logged[:-1] - G).norm(dim=1) / summed).max().item()
    # The weights: θ_{t+1} = θ_0 − α Σ_{s≤t} (G_s + λ w_s), against the logged θ_{t+1}.
    lr, decay = float(run.lr), float(run.weight_decay)
    steps_taken = G + decay * decays * theta[:-1]
    predicted = theta[0] - lr * torch.cumsum(steps_taken, 0)
    size = theta[0].norm() + lr * torch.cumsum(steps_taken.norm(dim=1), 0)
    err_theta = ((theta[1:] - predicted).norm(dim=1) / size).max().item()
    tolerance = TOLERANCES[DTYPES[run["dtype"]]]
    return {
        "steps": history.steps,
        "max_err_accumulated_grad": err_G,
        "max_err_closed_form_weights": err_theta,
        "tolerance": tolerance,
        "agrees": err_G <= tolerance and err_theta <= tolerance,
        "note": "",
    }
