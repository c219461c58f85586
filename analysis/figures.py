"""The report's figures: each a function of the sweep's tables, returning a matplotlib Figure."""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.runs import Sweep

# Figures are made as matplotlib.figure.Figure objects, not through pyplot: no GUI backend, no
# global state to close, and a notebook shows them inline all the same.

COLORS = {"manual": "tab:blue", "autograd": "black", "function": "tab:orange"}


def _grid(n: int, width: float = 4.2, height: float = 3.2):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat


def _rules(runs: pd.DataFrame) -> dict[str, object]:
    """A color per update rule, when a sweep has several (else the implementations' colors)."""
    rules = list(dict.fromkeys(runs.optimizer))
    cmap = matplotlib.colormaps["tab10"]
    return {rule: cmap(i % 10) for i, rule in enumerate(rules)} if len(rules) > 1 else {}


def _smallest_batch(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of one batch size, the smallest, where a sweep has several: a figure of rates
    and rules draws one (the mini-batch figures set the sizes side by side)."""
    size = pd.to_numeric(runs.get("batch_size", pd.Series(index=runs.index)), errors="coerce")
    size = size.fillna(np.inf)
    return runs[size == size.min()] if len(runs) else runs


def loss_curves(sweep: Sweep, best: pd.DataFrame) -> Figure:
    """Per dataset, at autograd's best lr and the first seed: the three training-loss curves
    (per update rule, each at its own best lr, when the sweep has several), on the whole
    training set (with mini-batches, where it was measured)."""
    runs = _smallest_batch(sweep.runs[sweep.runs.status == "FINISHED"])
    if "batch_size" in best and "batch_size" in runs and len(runs):
        best = best[best.batch_size == runs.batch_size.iloc[0]]
    datasets = list(dict.fromkeys(runs.dataset))
    rules = _rules(runs)
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=False):
        lrs = []
        for rule in dict.fromkeys(runs[runs.dataset == dataset].optimizer):
            chosen = best[
                (best.dataset == dataset) & (best.impl == "autograd") & (best.optimizer == rule)
            ]
            part = runs[(runs.dataset == dataset) & (runs.optimizer == rule)]
            lr = chosen.best_lr.iloc[0] if len(chosen) else part.lr.iloc[0]
            lrs.append(f"{lr:g}")
            pick = part[part.lr == lr]
            pick = pick[(pick.seed == pick.seed.min()) & (pick.device == pick.device.iloc[0])]
            for impl, style in (("autograd", "-"), ("manual", "--"), ("function", ":")):
                for run_id in pick[pick.impl == impl].run_id:
                    h = sweep.history(run_id).dropna(subset=["train/loss"])
                    label = f"{rule} · lr={lr:g}" if rules and impl == "autograd" else None
                    color = rules.get(rule, COLORS[impl])
                    ax.plot(
                        h.step,
                        h["train/loss"],
                        style,
                        color=color,
                        lw=1.6,
                        label=label if rules else impl,
                    )
        title = f"{dataset} · lr={lrs[0]}" if not rules else dataset
        ax.set(title=title, xlabel="step", ylabel="train loss", yscale="log")
        ax.legend(fontsize=7)
    fig.suptitle("Training loss, manual and function over autograd (they overlap)")
    fig.tight_layout()
    return fig


def delta_w(sweep: Sweep, pairs: pd.DataFrame) -> Figure:
    """Running max over steps of max_j |θ_j − θ_j^autograd| over every parameter, per pair,
    log scale, per dtype.

    The running max is monotone, so the lines read as "drift so far"; a step where the two
    weights are bit-identical (0, off a log axis) leaves it unchanged."""
    dtypes = sorted(pairs.dtype.unique()) if len(pairs) else []
    fig, axes = _grid(max(len(dtypes), 1), width=6.5, height=3.8)
    for ax, dtype in zip(axes, dtypes, strict=False):
        twins = pairs.get("twin_run_id", pd.Series(np.nan, index=pairs.index))  # none: no twins
        chosen = pairs[(pairs.dtype == dtype) & twins.notna()]
        cmap = matplotlib.colormaps["tab10"]
        colors = {d: cmap(i % 10) for i, d in enumerate(dict.fromkeys(chosen.dataset))}
        for row in chosen.itertuples():
            steps, theta = sweep.parameters(row.run_id)
            _, theta_autograd = sweep.parameters(row.twin_run_id)
            drift = np.maximum.accumulate(np.abs(theta - theta_autograd).max(axis=1))
            drift[drift == 0] = np.nan  # identical so far: nothing to draw on a log axis
            ax.plot(steps, drift, color=colors[row.dataset], lw=0.8, alpha=0.6)
        for dataset, color in colors.items():
            ax.plot([], [], color=color, label=dataset)
        ax.axhline(
            chosen.tolerance.iloc[0] if len(chosen) else 1e-5,
            color="red",
            ls="--",
            lw=1,
            label="tolerance",
        )
        ax.set(yscale="log", xlabel="step", ylabel="max |Δθ| so far", title=dtype)
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("Drift of the manual and function parameters from autograd's")
    fig.tight_layout()
    return fig


def loss_vs_lr(sweep: Sweep) -> Figure:
    """Final validation loss against lr, mean ± std over seeds, per implementation."""
    runs = _smallest_batch(sweep.runs[sweep.runs.status == "FINISHED"])
    datasets = list(dict.fromkeys(runs.dataset))
    rules = _rules(runs)
    fig, axes = _grid(len(datasets))
    for ax, dataset in zip(axes, datasets, strict=False):
        part = runs[runs.dataset == dataset]
        stats = part.groupby(["optimizer", "impl", "lr"])["val/loss"].agg(["mean", "std"])
        stats = stats.reset_index()
        for rule in dict.fromkeys(stats.optimizer):
            for impl, style in (("autograd", "-o"), ("manual", "--s"), ("function", ":^")):
                s = stats[(stats.impl == impl) & (stats.optimizer == rule)]
                label = (rule if impl == "autograd" else None) if rules else impl
                if len(s):
                    ax.errorbar(
                        s.lr,
                        s["mean"],
                        yerr=s["std"].fillna(0),
                        fmt=style,
                        ms=4,
                        color=rules.get(rule, COLORS[impl]),
                        label=label,
                        capsize=2,
                    )
        ax.set(xscale="log", yscale="log", title=dataset, xlabel="lr", ylabel="final val loss")
        ax.legend(fontsize=8)
    fig.suptitle("Final validation loss against learning rate (mean ± std over seeds)")
    fig.tight_layout()
    return fig


def grad_errors(sweep: Sweep, pairs: pd.DataFrame) -> Figure:
    """Distribution over all checked steps of both gradient checks."""
    values = {"check/grad_rel_err": [], "check/grad_err_vs_terms": []}
    for run_id in pairs.run_id:
        h = sweep.history(run_id)
        for name in values:
            if name in h:
                v = h[name].to_numpy()
                values[name].append(v[np.isfinite(v)])
    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    bins = np.logspace(-18, 1, 58)
    for name, color in zip(values, ("tab:red", "tab:green"), strict=True):
        v = np.concatenate(values[name]) if values[name] else np.array([])
        ax.hist(np.maximum(v, 1e-18), bins=bins, alpha=0.6, color=color, label=name)
    ax.set(xscale="log", xlabel="error (exact zeros at 1e-18)", ylabel="checked steps")
    ax.set_title("Manual and function gradients against autograd at the same parameters")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def time_per_step(sweep: Sweep) -> Figure:
    """Median time per step (the whole loop: step, metrics, checks) by device and impl."""
    runs = sweep.runs[sweep.runs.status == "FINISHED"]
    table = runs.groupby(["dataset", "device", "impl"])["time/step_ms"].median().unstack("impl")
    fig = Figure(figsize=(max(6, 0.9 * len(table)), 3.8))
    ax = fig.subplots()
    table.plot.bar(ax=ax, color=[COLORS.get(c, "gray") for c in table.columns], rot=30)
    ax.set(ylabel="ms per step (median)", xlabel="dataset, device", yscale="log")
    ax.set_title("Time per step, including per-step metrics and gradient checks")
    fig.tight_layout()
    return fig


def zero_grad(sweep: Sweep, table: pd.DataFrame) -> Figure:
    """Per dataset, autograd with and without zero_grad at each lr: the training loss, and the
    norm of the gradient each step used (the sum of all past ones, without zero_grad)."""
    runs = sweep.runs[(sweep.runs.status == "FINISHED") & (sweep.runs.impl == "autograd")]
    datasets = list(dict.fromkeys(table.dataset)) if len(table) else []
    fig = Figure(figsize=(4.4 * max(len(datasets), 1), 6.2))
    axes = fig.subplots(2, max(len(datasets), 1), squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    for col, dataset in enumerate(datasets):
        part = runs[(runs.dataset == dataset) & (runs["optimizer.name"] == "sgd")]
        lrs = sorted(part.lr.unique())
        for i, lr in enumerate(lrs):
            color = cmap(i / max(len(lrs) - 1, 1))
            for zeroed, style in ((True, "-"), (False, "--")):
                pick = part[(part.lr == lr) & (part.zero_grad == zeroed)]
                pick = pick[pick.seed == pick.seed.min()]
                for run_id in pick.run_id[:1]:
                    h = sweep.history(run_id)
                    label = f"lr={lr:g}" + ("" if zeroed else ", no zero_grad")
                    axes[0, col].plot(h.step, h["train/loss"], style, color=color, label=label)
                    used = h.iloc[:-1]  # the last row takes no step: its gradient is fresh
                    if "grad/w_norm" in used:  # the built-in kinds' ‖dw‖
                        axes[1, col].plot(used.step, used["grad/w_norm"], style, color=color)
        axes[0, col].set(title=dataset, ylabel="train loss", yscale="log")
        axes[1, col].set(xlabel="step", ylabel="‖gradient the step used‖ (w)", yscale="log")
        axes[0, col].legend(fontsize=7)
    fig.suptitle(
        "Without zero_grad the step uses Σ of all past gradients: it overshoots and oscillates"
    )
    fig.tight_layout()
    return fig


def linear_scaling(table: pd.DataFrame) -> Figure:
    """Per dataset, the final whole-set training loss of each batch size (autograd, mean over
    seeds): against lr (top), where the sizes part, and against lr / batch size (bottom),
    where they lie on one curve as far as the linear scaling rule holds."""
    datasets = list(dict.fromkeys(table.dataset))
    fig = Figure(figsize=(4.4 * max(len(datasets), 1), 6.4))
    axes = fig.subplots(2, max(len(datasets), 1), squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    for col, dataset in enumerate(datasets):
        part = table[table.dataset == dataset]
        sizes = sorted(part.batch.unique())
        for i, size in enumerate(sizes):
            rows = part[part.batch == size].sort_values("lr")
            color = cmap(i / max(len(sizes) - 1, 1))
            for ax, x in ((axes[0, col], "lr"), (axes[1, col], "lr_per_sample")):
                ax.plot(rows[x], rows.final_train_loss, "-o", ms=3, color=color, label=f"b={size}")
        axes[0, col].set(title=dataset, xscale="log", yscale="log", xlabel="lr")
        axes[1, col].set(xscale="log", yscale="log", xlabel="lr / batch size")
        axes[0, col].set_ylabel("final train loss (whole set)")
        axes[1, col].set_ylabel("final train loss (whole set)")
        axes[0, col].legend(fontsize=7)
    fig.suptitle("The linear scaling rule: the same epochs, lr ∝ batch size → the same loss")
    fig.tight_layout()
    return fig


def batch_noise(points: pd.DataFrame) -> Figure:
    """‖ĝ − g‖² measured at every logged epoch start against its closed form for sampling
    without replacement, per batch size; on the diagonal they are equal."""
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"]
    sizes = sorted(points.batch.unique())
    for i, size in enumerate(sizes):
        part = points[points.batch == size]
        color = cmap(i / max(len(sizes) - 1, 1))
        ax.scatter(part.expected, part.measured, s=8, alpha=0.6, color=color, label=f"b={size}")
    ends = [points[["expected", "measured"]].min().min(), points.expected.max() * 10]
    ax.plot(ends, ends, "k--", lw=1, label="measured = expected")
    ax.set(xscale="log", yscale="log", xlabel="(n − b) / (b (n − 1)) · σ²")
    ax.set(ylabel="‖batch gradient − full gradient‖²")
    ax.legend(fontsize=7)
    fig.suptitle("Gradient noise: one batch each logged step, against the closed form")
    fig.tight_layout()
    return fig


def sharpness(sweep: Sweep) -> Figure:
    """Per dataset, for each lr (manual, first seed, plain full-batch descent): lr·λ_max(∇²J)
    over the steps, the lines at 1 and 2 (a quadratic's monotone and stable limits)."""
    runs = sweep.runs[(sweep.runs.status == "FINISHED") & (sweep.runs.impl == "manual")]
    runs = _smallest_batch(runs[runs.optimizer == "sgd"])
    runs = runs[runs.seed == runs.seed.min()] if len(runs) else runs
    datasets = list(dict.fromkeys(runs.dataset))
    fig, axes = _grid(max(len(datasets), 1))
    cmap = matplotlib.colormaps["viridis"]
    for ax, dataset in zip(axes, datasets, strict=False):
        part = runs[runs.dataset == dataset].sort_values("lr")
        for i, (lr, run_id) in enumerate(zip(part.lr, part.run_id, strict=True)):
            h = sweep.history(run_id)
            if "curv/lr_x_sharpness" not in h:
                continue
            h = h.dropna(subset=["curv/lr_x_sharpness"])
            color = cmap(i / max(len(part) - 1, 1))
            ax.plot(h.step, h["curv/lr_x_sharpness"], color=color, lw=1.4, label=f"lr={lr:g}")
        for level, style in ((1, ":"), (2, "--")):
            ax.axhline(level, color="crimson", ls=style, lw=1)
        ax.set(title=dataset, xlabel="step", ylabel="lr · λ_max", yscale="log")
        ax.legend(fontsize=6, ncol=2)
    fig.suptitle("Sharpness times the learning rate: gradient descent on a quadratic needs < 2")
    fig.tight_layout()
    return fig


def late_rates(held: pd.DataFrame) -> Figure:
    """For each converging run, the measured late linear rate of ‖θ_t − θ*‖ against the one
    H* predicts, max_i |1 − ηλ_i|, as 1 − rate on log axes (the diagonal: equal)."""
    fig = Figure(figsize=(5.2, 4.2))
    ax = fig.subplots()
    shown = held.dropna(subset=["late_rate"])
    shown = shown[(shown.late_rate < 1) & (shown.predicted_rate < 1)]
    cmap = matplotlib.colormaps["tab10"]
    for i, (dataset, part) in enumerate(shown.groupby("dataset")):
        ax.scatter(1 - part.predicted_rate, 1 - part.late_rate, s=18, color=cmap(i % 10),
                   label=dataset)  # fmt: skip
    if len(shown):
        low = min((1 - shown.predicted_rate).min(), (1 - shown.late_rate).min())
        ax.plot([low, 1], [low, 1], "--", color="gray", lw=1)
        ax.legend(fontsize=7)
    ax.set(xscale="log", yscale="log", xlabel="1 − predicted rate (from H*)",
           ylabel="1 − measured late rate")  # fmt: skip
    ax.set_title("Late linear rate of ‖θ_t − θ*‖ against the Hessian's", fontsize=10)
    fig.tight_layout()
    return fig


def implicit_bias(paths: dict[str, pd.DataFrame], held: pd.DataFrame) -> Figure:
    """Per separable dataset (a row), for each lr (manual, first seed), against log t: ‖θ_t‖
    (slope → ‖ŵ‖), 1 − cos(θ_t, ŵ) (→ 0 like 1/log² t), the normalised margin over the SVM's
    and η·t·J(θ_t) over ‖ŵ‖² (both → 1). ``paths``: run id → its path (from
    :func:`analysis.implicit_bias.path`)."""
    runs = held[(held.impl == "manual") & (held.seed == held.seed.min())]
    datasets = list(dict.fromkeys(runs.dataset))
    fig = Figure(figsize=(15, 3.2 * max(len(datasets), 1)))
    axes = fig.subplots(max(len(datasets), 1), 4, squeeze=False)
    cmap = matplotlib.colormaps["viridis"]
    panels = [("norm", "‖θ_t‖", "linear"), ("one_minus_cos", "1 − cos(θ_t, ŵ)", "log"),
              ("margin_ratio", "margin / SVM's", "linear"),
              ("lr_t_loss_ratio", "η·t·J / ‖ŵ‖²", "log")]  # fmt: skip
    for row, dataset in zip(axes, datasets, strict=False):
        part = runs[runs.dataset == dataset].sort_values("lr")
        for i, run in enumerate(part.itertuples()):
            along = paths[run.run_id]
            color = cmap(i / max(len(part) - 1, 1))
            for ax, (column, _, _) in zip(row, panels, strict=True):
                ax.plot(along.step, along[column], color=color, lw=1.2, label=f"lr={run.lr:g}")
        norm = part.svm_norm.iloc[0]
        for ax, (column, label, scale) in zip(row, panels, strict=True):
            ax.set(xscale="log", yscale=scale, xlabel="step t", ylabel=label)
            if column in ("margin_ratio", "lr_t_loss_ratio"):
                ax.axhline(1, color="crimson", ls="--", lw=1)
        row[0].set_title(f"{dataset}: ‖ŵ‖ = {norm:.4g}, {part.support_vectors.iloc[0]} SVs")
        row[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Gradient descent on separable data against the hard-margin SVM")
    fig.tight_layout()
    return fig
