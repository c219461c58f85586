"""What a sweep concludes from its runs (the frame :func:`experiments.records.runs_table` reads):
each implementation's best learning rate, the pairs that end where their autograd twin ends,
the largest gradient disagreement. A sweep writes them on its parent run (``summary.csv`` and
the ``sweep/`` metrics); the analysis reads :func:`best_lrs` too.
"""

from __future__ import annotations

import re

import pandas as pd

from experiments.records import ADDED_BY, HALVING, HALVING_STEP, KEYS, latest_attempts

# One best learning rate for each of these groups of runs (and one gradient-error maximum).
BEST_LR_BY = ["dataset", "impl", "optimizer", "batch_size", "device", "dtype"]


def best_lrs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset × impl × update rule × device × dtype: the lr with the lowest mean final
    validation loss over seeds, flagged ``on_edge`` at the end of the grid, beside autograd's
    own best (compare implementations each at its own best lr). The grid is every rate tried
    (``lr_min`` to ``lr_max``, ``added`` of them by ``extend_edges``): a best below a rate
    that diverged is inside it."""
    group = BEST_LR_BY
    tried = latest_attempts(runs) if "config_key" in runs else runs
    added = tried[ADDED_BY] != "" if ADDED_BY in tried else pd.Series(False, index=tried.index)
    grid = tried.groupby(group)["lr"].agg(lr_min="min", lr_max="max", lrs="nunique")
    grid["added"] = tried[added].groupby(group)["lr"].nunique()
    grid["added"] = grid["added"].fillna(0).astype(int)
    runs = runs[runs.status == "FINISHED"]
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
    best = per_lr.loc[per_lr.groupby(group)["val_loss_mean"].idxmin()].join(grid, on=group)
    edge = (best["lr"] == best["lr_min"]) | (best["lr"] == best["lr_max"])
    best["on_edge"] = (best["lrs"] > 1) & edge
    best = best.rename(columns={"lr": "best_lr"})
    same = [k for k in group if k != "impl"]
    autograd = best[best.impl == "autograd"].set_index(same)
    joined = best.join(autograd[["best_lr", "val_loss_mean"]].add_suffix("_autograd"), on=same)
    joined["val_loss_vs_autograd"] = joined["val_loss_mean"] - joined["val_loss_mean_autograd"]
    return joined.reset_index(drop=True)


def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """A sweep's ``summary.csv``: :func:`best_lrs`, and the largest gradient disagreement of
    each implementation over all its runs."""
    group = BEST_LR_BY
    checks = [c for c in ("check/max_grad_rel_err", "check/max_grad_err_vs_terms") if c in runs]
    finished = runs[runs.status == "FINISHED"]
    worst = finished.groupby(group)[checks].max() if checks else None
    best = best_lrs(runs)
    return best if worst is None else best.join(worst, on=group)


# How far a run may end from its autograd twin, by dtype: measured, 1,000 steps on
# breast_cancer put them 1.2e-7 (float32) and 3.3e-16 (float64) apart (docs/proof.md).
TOLERANCES = {"float32": 1e-5, "float64": 1e-12}
ENDS = ["train/loss", "val/loss"]  # where a run ends, as the store has it; and its param/*


def headline(runs: pd.DataFrame) -> dict[str, float]:
    """The sweep's answer, as metrics of its parent run (the runs list alone then says it):

    - ``sweep/pairs``: manual and function runs beside an autograd twin;
      ``sweep/pairs_end_together``: how many end where the twin ends (training and validation
      loss and each parameter's series, ‖w‖ and b, within the dtype's tolerance; the report
      compares every step);
    - ``sweep/max_grad_err_vs_terms``: the largest gradient disagreement at any checked step
      of any run (``sweep/max_grad_rel_err`` beside it);
    - ``sweep/best_lr.<dataset>.<impl>``: each implementation's best learning rate per dataset
      (and per rule, device and dtype where the sweep has several).
    """
    finished = runs[runs.status == "FINISHED"] if len(runs) else runs
    if finished.empty:
        return {}
    ends = [*ENDS, *(c for c in finished.columns if c.startswith("param/"))]
    twins = finished[finished.impl == "autograd"][[*KEYS, *ends]]
    pairs = finished[finished.impl != "autograd"].merge(twins, on=KEYS, suffixes=("", "_twin"))
    agree = pd.Series(True, index=pairs.index)
    for name in ends if len(pairs) else ():  # no pairs without autograd runs
        gap = (pairs[name] - pairs[f"{name}_twin"]).abs().astype(float)
        neither = pairs[name].isna() & pairs[f"{name}_twin"].isna()  # softmax has no param/b
        agree &= (gap <= pairs["dtype"].map(TOLERANCES)) | neither
    out = {"sweep/pairs": len(pairs), "sweep/pairs_end_together": int(agree.sum())}
    for name in ("grad_rel_err", "grad_err_vs_terms"):
        if f"check/max_{name}" in finished:
            out[f"sweep/max_{name}"] = float(finished[f"check/max_{name}"].max())
    best = best_lrs(finished)
    varying = [k for k in ("optimizer", "device", "dtype") if best[k].nunique() > 1]
    for row in best.itertuples():  # one chart section (sweep/), not one per dataset
        path = [row.dataset, *(getattr(row, k) for k in varying), row.impl]
        out["sweep/best_lr." + ".".join(_metric_name(str(part)) for part in path)] = row.best_lr
    return out


def _metric_name(text: str) -> str:
    """A label as MLflow takes it in a name: ``wine(classes=all)`` → ``wine_classes_all``."""
    return re.sub(r"[^\w.\- ]+", "_", text).strip("_")


# A search chooses rates per setting: every implementation and seed of it together.
SETTING = ["dataset", "optimizer", "batch_size", "device", "dtype"]


def halving(runs: pd.DataFrame, full: pd.DataFrame | None = None) -> pd.DataFrame:
    """What successive halving chose, per dataset × rule × device × dtype: the rate it kept
    (of the rates that ran every step, the lowest mean final validation loss over seeds and
    implementations) and the share of the grid's steps it trained (each run to where it
    stopped, against every grid point at the full steps). With ``full``, the runs
    of the whole grid, the grid's best rate beside it, by the same rule, and how much worse
    the kept rate ends (0 where the search kept the grid's best)."""
    tried = _halving_runs(runs)
    spent, grid = _halving_steps(tried)
    out = _best(tried[tried.status == "FINISHED"]).rename(
        columns={"lr": "kept_lr", "val/loss": "kept_val_loss"}
    )
    out["rates"] = tried.groupby(SETTING)["lr"].nunique()
    out["steps_share"] = spent / grid
    if full is not None:
        best = _best(latest_attempts(full)[lambda f: f.status == "FINISHED"])
        out["grid_best_lr"] = best["lr"]
        out["grid_best_val_loss"] = best["val/loss"]
        out["kept_vs_grid_best"] = out["kept_val_loss"] - out["grid_best_val_loss"] + 0.0
    return out.reset_index()


def halving_share(runs: pd.DataFrame) -> float:
    """The share of the whole grid's steps a halving sweep trained, over all its settings."""
    spent, grid = _halving_steps(_halving_runs(runs))
    return float(spent.sum() / grid.sum())


def _halving_runs(runs: pd.DataFrame) -> pd.DataFrame:
    tried = latest_attempts(runs)
    return tried[tried[HALVING] != ""]


def _halving_steps(tried: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per setting: the steps its runs trained (a stopped one to its ``halving_step``), and
    the grid's (each grid point at the full steps)."""
    stopped = pd.to_numeric(tried[HALVING_STEP], errors="coerce")
    trained = stopped.fillna(tried["steps"]).rename("trained")
    spent = pd.concat([tried[SETTING], trained], axis=1).groupby(SETTING)["trained"].sum()
    return spent, tried.groupby(SETTING)["steps"].sum()


def _best(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting, the lr with the lowest mean final validation loss (seeds, impls)."""
    means = runs.groupby([*SETTING, "lr"])["val/loss"].mean().reset_index()
    return means.loc[means.groupby(SETTING)["val/loss"].idxmin()].set_index(SETTING)
