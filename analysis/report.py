"""Turn a sweep into the answer: CSV tables, PNG figures, one self-contained report.html, and
the same files logged under ``analysis/`` on the sweep's parent run (so the MLflow UI has them)."""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import ablation, compare, figures
from analysis.runs import Sweep, load_sweep


@dataclass
class Report:
    sweep: Sweep
    tables: dict[str, pd.DataFrame]  # file name → table
    figures: dict[str, Figure]  # file name → figure

    @property
    def pairs(self) -> pd.DataFrame:
        return self.tables["pairs.csv"]


def verdicts(pairs: pd.DataFrame) -> pd.Series:
    """Say why a pair disagrees when its steps, not its gradient, are to blame.

    Plain GD with lr·L ≥ 2 oscillates and amplifies rounding. Adam (or momentum) can too at
    any lr·L: its step does not shrink with the gradient, so the iterates keep bouncing around
    the optimum. Either way the gradients at the same parameters still agree to the dtype's
    tolerance of the summed terms (``max_grad_err_vs_terms``); a wrong gradient does not."""
    unstable = pairs["lr_times_L"] >= 2
    rule = pairs.get("optimizer", pd.Series("sgd", index=pairs.index)).astype(str)
    plain = rule.str.startswith("sgd")
    terms = pairs.get("max_grad_err_vs_terms", pd.Series(np.nan, index=pairs.index))
    tolerance = pairs.get("tolerance", pd.Series(np.nan, index=pairs.index))
    gradients_agree = terms <= tolerance

    def verdict(ok, bad, sgd, grads):
        if ok:
            return "agrees"
        if bad and sgd:
            return "disagrees (unstable lr: lr·L ≥ 2)"
        if grads and not sgd:
            return "disagrees (the rule's steps amplify rounding; the gradients agree)"
        return "DISAGREES"

    return pd.Series(
        [verdict(*v) for v in zip(pairs["agrees"], unstable, plain, gradients_agree, strict=True)],
        index=pairs.index,
    )


def build(sweep: Sweep) -> Report:
    pairs = compare.pairs(sweep)
    names = sweep.runs.set_index("run_id")["run_name"]
    if len(pairs):
        pairs = pairs.merge(compare.stability(sweep), on="run_id", how="left")
        pairs.insert(0, "run_name", pairs.run_id.map(names))
        pairs["verdict"] = verdicts(pairs)
    best = compare.best_lrs(sweep)
    tables = {
        "pairs.csv": pairs,
        "best_lr.csv": best,
        "reference.csv": compare.reference(sweep),
        "devices.csv": compare.devices(sweep),
    }
    figs = {
        "loss_curves.png": figures.loss_curves(sweep, best),
        "delta_w.png": figures.delta_w(sweep, pairs),
        "loss_vs_lr.png": figures.loss_vs_lr(sweep),
        "grad_errors.png": figures.grad_errors(sweep, pairs),
        "time_per_step.png": figures.time_per_step(sweep),
    }
    if (~sweep.runs.zero_grad).any():  # the zero_grad ablation is in this sweep
        tables["accumulation.csv"] = ablation.accumulation(sweep)
        figs["zero_grad.png"] = figures.zero_grad(sweep, tables["accumulation.csv"])
    return Report(sweep, tables, figs)


def write(report: Report, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, table in report.tables.items():
        table.to_csv(out / name, index=False)
        written.append(out / name)
    for name, fig in report.figures.items():
        fig.savefig(out / name, dpi=110)
        written.append(out / name)
    (out / "report.html").write_text(to_html(report))
    written.append(out / "report.html")
    return written


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return base64.b64encode(buffer.getvalue()).decode()


def _table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    return frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)


def to_html(report: Report) -> str:
    sweep, pairs = report.sweep, report.pairs
    n_ok = int(pairs["agrees"].sum()) if len(pairs) else 0
    bad = pairs[~pairs["agrees"]] if len(pairs) else pairs
    ref = report.tables["reference.csv"]
    separable = sorted(ref[ref.separable].dataset.unique())
    figs = {name: _png(fig) for name, fig in report.figures.items()}

    def figure(name: str, caption: str) -> str:
        return (
            f'<figure><img alt="{name}" src="data:image/png;base64,{figs[name]}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )

    statement = (
        f"<p class=verdict><b>{n_ok} of {len(pairs)}</b> manual and function runs agree with "
        "their autograd twin (same data, split, initialisation and seed) over every step, "
        "within 1e-5 in float32 and 1e-12 in float64 on the weights, bias and loss.</p>"
    )
    if len(bad):
        statement += (
            f"<p>{len(bad)} do not: {', '.join(html.escape(str(n)) for n in bad.run_name)}. "
            "Where the verdict names an unstable lr (lr·L ≥ 2, L the loss's smoothness), "
            "gradient descent oscillates and amplifies the last-bit differences that the two "
            "reductions' orders leave; the gradients themselves still agree "
            "(see max_grad_err_vs_terms).</p>"
        )
    if separable:
        statement += (
            f"<p>Linearly separable training sets: {', '.join(separable)}. The unpenalised "
            "logistic loss has no minimiser there (its infimum 0 is approached as ‖w‖ → ∞), so no "
            "gap to an optimum is reported for them.</p>"
        )
    pair_columns = [
        "run_name", "verdict", "max_delta_w", "max_delta_loss", "max_grad_rel_err",
        "max_grad_err_vs_terms", "lr_times_L", "train_loss", "train_loss_autograd",
        "val_accuracy", "val_accuracy_autograd",
    ]  # fmt: skip
    group = ["dataset", "impl", "optimizer", "dtype", "device", "lr"]
    reference = ref.groupby(group, as_index=False).agg(
        separable=("separable", "first"),
        optimum=("optimum_train_loss", "mean"),
        final_train_loss=("final_train_loss", "mean"),
        gap_to_optimum=("gap_to_optimum", "mean"),
    )
    unfinished = sweep.runs[sweep.runs.status != "FINISHED"]
    if len(unfinished):
        statement += (
            f"<p>{len(unfinished)} runs did not finish and are left out of every comparison "
            "(diverged runs are a result of their learning rate, not data):</p>"
            + _table(unfinished, ["run_name", "status", "failure", "failure_reason"])
        )
    ablated = ""
    if "accumulation.csv" in report.tables:
        table = report.tables["accumulation.csv"]
        n_ok = int(table["agrees"].sum()) if len(table) else 0
        ablated = f"""<h2>The zero_grad ablation</h2>
<p>Without <code>optimizer.zero_grad()</code>, <code>.grad</code> keeps every gradient: the
step at t uses G_t = g_0 + … + g_t, so θ_{{t+1}} = θ_0 − α Σ_{{s≤t}} (t + 1 − s) g_s
(momentum with μ = 1). On a quadratic with curvature h this is x_{{t+1}} = (2 − αh) x_t − x_{{t−1}}:
an undamped oscillation for 0 &lt; αh &lt; 4, which never settles. <b>{n_ok} of {len(table)}</b>
runs follow this closed form at every step (the accumulated gradient and the weights,
recomputed in float64 from the logged θ_s, within the dtype's tolerance relative to the size
of the sums).</p>
{figure("zero_grad.png", "solid: with zero_grad; dashed: without, same lr, data and start")}
{_table(table.drop(columns=[c for c in table.columns if c.endswith("run_id")]))}"""
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Manual vs autograd · {html.escape(sweep.experiment_name)}</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; max-width: 1200px;
        margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; font-size: 12px; margin: 0.5em 0 1.5em; }}
th, td {{ padding: 2px 8px; text-align: right; border-bottom: 1px solid #ddd; }}
th {{ background: #f4f4f4; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} figcaption {{ color: #555; font-size: 12px; }}
.verdict {{ font-size: 16px; }}
</style></head><body>
<h1>Does the hand-derived gradient do what autograd does?</h1>
<p>Experiment <code>{html.escape(sweep.experiment_name)}</code>, sweep
<code>{sweep.parent_id}</code> ({len(sweep.runs)} runs) in
<code>{html.escape(sweep.tracker.uri)}</code>;
report made {stamp}.</p>
{statement}
<h2>Manual and function runs against their autograd twins</h2>
{figure("delta_w.png", "max_j |w_j − w_j(autograd)| at every step, one line per pair")}
{figure("loss_curves.png", "training loss of the three implementations at autograd's best lr")}
{figure("grad_errors.png", "grad_rel_err grows as ‖g‖ → 0; grad_err_vs_terms does not")}
{_table(pairs, pair_columns)}
<h2>Learning rates</h2>
<p>Each implementation at its own best lr (lowest mean final validation loss over seeds);
<code>on_edge</code> marks a best lr at the end of the grid: widen the grid there.</p>
{figure("loss_vs_lr.png", "final validation loss against lr, mean ± std over seeds")}
{_table(report.tables["best_lr.csv"])}
<h2>Distance to the optimum</h2>
<p>The optimum of the same objective on the same training split from scikit-learn's lbfgs
(tol 1e-12; with weight decay λ the objective is the mean loss + (λ/2)‖W‖², scikit-learn's
C = 1/(λm)), where one exists. The final objective of a run with weight decay includes the
penalty.</p>
{_table(reference)}
{ablated}
<h2>Devices</h2>
{figure("time_per_step.png", "median ms per step of the whole loop, by device")}
{_table(report.tables["devices.csv"])}
</body></html>
"""


def log_to_parent(report: Report, files: list[Path]) -> None:
    client = report.sweep.tracker.client
    for path in files:
        client.log_artifact(report.sweep.parent_id, str(path), "analysis")


def make_report(
    experiment: str = "default", tracking_uri: str | None = None, out: str | Path | None = None
) -> tuple[Report, Path]:
    sweep = load_sweep(experiment, tracking_uri)
    report = build(sweep)
    folder = Path(out) if out is not None else Path("reports") / experiment
    files = write(report, folder)
    log_to_parent(report, files)
    return report, folder
