"""Turn a sweep into the answer: CSV tables, PNG figures, one self-contained report.html, and
the same files logged under ``analysis/`` on the sweep's parent run (so the MLflow UI has them)."""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from matplotlib.figure import Figure

from analysis import ablation, compare, figures, implicit_bias, minibatch, stability
from analysis.runs import Sweep, load_sweep
from experiments import findings


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
    the optimum. On a non-convex loss (a model of one's own, a network) nearby paths may part
    for good: rounding moves a run to another side of a ridge. Either way the gradients at the
    same parameters still agree to the dtype's tolerance of the summed terms
    (``max_grad_err_vs_terms``); a wrong gradient does not."""
    unstable = pairs["lr_times_L"] >= 2
    rule = pairs.get("optimizer", pd.Series("sgd", index=pairs.index)).astype(str)
    plain = rule.str.startswith("sgd")
    terms = pairs.get("max_grad_err_vs_terms", pd.Series(np.nan, index=pairs.index))
    tolerance = pairs.get("tolerance", pd.Series(np.nan, index=pairs.index))
    gradients_agree = terms <= tolerance
    own = pairs.get("model", pd.Series("None", index=pairs.index)).astype(str) != "None"

    def verdict(ok, bad, sgd, grads, mine):
        if ok:
            return "agrees"
        if bad and sgd:
            return "disagrees (unstable lr: lr·L ≥ 2)"
        if grads and not sgd:
            return "disagrees (the rule's steps amplify rounding; the gradients agree)"
        if grads and mine:
            return "parts ways (the gradients agree at every check; the path amplifies rounding)"
        return "DISAGREES"

    cases = zip(pairs["agrees"], unstable, plain, gradients_agree, own, strict=True)
    return pd.Series([verdict(*v) for v in cases], index=pairs.index)


def build(sweep: Sweep, baseline: Sweep | None = None) -> Report:
    """The tables and figures of ``sweep``; ``baseline``: the whole grid's sweep, which a
    halving sweep's kept rates are held against."""
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
    if (sweep.runs.halving != "").any():  # successive halving chose the rates
        full = None if baseline is None else baseline.runs
        tables["halving.csv"] = findings.halving(sweep.runs, full)
    figs = {
        "loss_curves.png": figures.loss_curves(sweep, best),
        "delta_w.png": figures.delta_w(sweep, pairs),
        "loss_vs_lr.png": figures.loss_vs_lr(sweep),
        "grad_errors.png": figures.grad_errors(sweep, pairs),
        "time_per_step.png": figures.time_per_step(sweep),
    }
    if minibatch.has_batches(sweep.runs):
        more_tables, more_figures = _minibatch(sweep, pairs)
        tables.update(more_tables)
        figs.update(more_figures)
    held = stability.table(sweep)
    if len(held):  # plain gradient descent on an objective with a minimiser
        tables["stability.csv"] = held
        tables["stability_counts.csv"] = stability.counts(held)
        figs["late_rates.png"] = figures.late_rates(held)
    bias = implicit_bias.table(sweep)
    if len(bias):  # plain gradient descent on a separable set, without weight decay
        tables["implicit_bias.csv"] = bias
        figs["implicit_bias.png"] = figures.implicit_bias(implicit_bias.paths(sweep, bias), bias)
        tables["last_rise.csv"] = implicit_bias.last_rises(bias)
    along = stability.sharpness_along(sweep)
    if len(along):  # the sweep measured its runs' sharpness
        tables["sharpness.csv"] = along
        figs["sharpness.png"] = figures.sharpness(sweep)
    if (~sweep.runs.zero_grad).any():  # the zero_grad ablation is in this sweep
        tables["accumulation.csv"] = ablation.accumulation(sweep)
        figs["zero_grad.png"] = figures.zero_grad(sweep, tables["accumulation.csv"])
    return Report(sweep, tables, figs)


def _minibatch(sweep: Sweep, pairs: pd.DataFrame) -> tuple[dict, dict]:
    """The mini-batch section's tables and figures (:mod:`analysis.minibatch`)."""
    scaling = minibatch.scaling(sweep, compare.stability(sweep))
    points = minibatch.noise(sweep)
    tables = {
        "batch_agreement.csv": minibatch.agreement(pairs, sweep.runs),
        "scaling.csv": scaling,
        "scaling_breaks.csv": minibatch.where_it_breaks(scaling),
        "noise.csv": minibatch.noise_summary(points),
        "noise_points.csv": points,
    }
    figs = {}
    if len(scaling):
        figs["linear_scaling.png"] = figures.linear_scaling(scaling)
    if len(points):
        figs["batch_noise.png"] = figures.batch_noise(points)
    return tables, figs


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


def _table(frame: pd.DataFrame, columns: list[str] | None = None) -> Markup:
    if columns is not None:
        frame = frame[[c for c in columns if c in frame.columns]]
    html = frame.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="—", border=0)
    return Markup(html)  # pandas escapes the cells


# The pairs table in the report: the verdict, how far apart, and why.
PAIR_COLUMNS = [
    "run_name",
    "verdict",
    "max_delta_theta",
    "parted_at",
    "max_delta_loss",
    "max_grad_rel_err",
    "max_grad_err_vs_terms",
    "lr_times_L",
    "train_loss",
    "train_loss_autograd",
    "val_accuracy",
    "val_accuracy_autograd",
]
IMPLICIT_BIAS_COLUMNS = [
    "dataset", "impl", "lr", "svm_norm", "support_vectors", "steps", "slope_over_svm_norm",
    "one_minus_cos", "one_minus_cos_times_log2_t", "margin_ratio", "lr_t_loss_over_svm_norm2",
    "sharpness_over_bound", "below_2_from", "loss_rises", "last_rise",
]  # fmt: skip
TEMPLATES = Environment(
    loader=PackageLoader("analysis", "templates"), autoescape=True, undefined=StrictUndefined
)


def to_html(report: Report) -> str:
    """``report.html``: one self-contained page (figures inlined), from
    ``analysis/templates/report.html.j2``."""
    sweep, pairs, tables = report.sweep, report.pairs, report.tables
    reference = tables["reference.csv"]
    unfinished = sweep.runs[~sweep.runs.status.isin(["FINISHED", "STOPPED"])]
    accumulation = tables.get("accumulation.csv")
    return TEMPLATES.get_template("report.html.j2").render(
        experiment=sweep.experiment_name,
        parent_id=sweep.parent_id,
        n_runs=len(sweep.runs),
        set_aside=sweep.set_aside,
        uri=sweep.tracker.uri,
        stamp=time.strftime("%Y-%m-%d %H:%M"),
        n_pairs=len(pairs),
        agree=int(pairs["agrees"].sum()) if len(pairs) else 0,
        disagree=list(pairs[~pairs["agrees"]].run_name) if len(pairs) else [],
        separable=sorted(reference[reference.separable].dataset.unique()),
        own_models=sorted(set(sweep.runs.get("model", pd.Series(dtype=str))) - {"None"}),
        n_unfinished=len(unfinished),
        unfinished=_table(unfinished, ["run_name", "status", "failure", "failure_reason"])
        if len(unfinished)
        else "",
        stability_notes=stability.notes(tables["stability.csv"])
        if "stability.csv" in tables
        else [],
        ablated=0 if accumulation is None else len(accumulation),
        closed_form=0 if accumulation is None else int(accumulation["agrees"].sum()),
        figures={name: _png(fig) for name, fig in report.figures.items()},
        tables={
            "pairs": _table(pairs, PAIR_COLUMNS),
            "best_lr": _table(tables["best_lr.csv"]),
            "reference": _table(_reference_by_lr(reference)),
            "devices": _table(tables["devices.csv"]),
            "halving": _table(tables["halving.csv"]) if "halving.csv" in tables else "",
            **{
                name: _table(tables[f"{name}.csv"]) if f"{name}.csv" in tables else ""
                for name in ("batch_agreement", "scaling", "scaling_breaks", "noise")
            },
            **_stability_tables(tables),
            "accumulation": ""
            if accumulation is None
            else _table(
                accumulation.drop(columns=[c for c in accumulation if c.endswith("run_id")])
            ),
        },
    )


def _stability_tables(tables: dict[str, pd.DataFrame]) -> dict[str, Markup | str]:
    """The stability section's tables, per dataset × lr over seeds and implementations (the
    CSVs have every run)."""
    out = {"stability": "", "stability_counts": "", "sharpness": "", "implicit_bias": "",
           "last_rise": ""}  # fmt: skip
    if "implicit_bias.csv" in tables:
        out["implicit_bias"] = _table(tables["implicit_bias.csv"], IMPLICIT_BIAS_COLUMNS)
        out["last_rise"] = _table(tables["last_rise.csv"])
    if "stability.csv" in tables:
        held = tables["stability.csv"]
        out["stability_counts"] = _table(tables["stability_counts.csv"])
        out["stability"] = _table(
            held.groupby(["dataset", "weight_decay", "lr"], as_index=False).agg(
                lambda_star=("lambda_star", "first"),
                lr_times_lambda_star=("lr_times_lambda_star", "first"),
                zone=("zone", "first"),
                classes=("class", _tally),
                periods=("period", lambda p: _tally(p.dropna().astype(int))),
                # rates within 1e-4 of 1 read alike at 4 digits: show what they miss of 1
                one_minus_late_rate=("late_rate", lambda r: 1 - r.median()),
                one_minus_predicted_rate=("predicted_rate", lambda r: 1 - r.iloc[0]),
                rate_ratio=("rate_ratio", "median"),
            )
        )
    if "sharpness.csv" in tables:
        along = tables["sharpness.csv"]
        out["sharpness"] = _table(
            along.groupby(["dataset", "lr"], as_index=False).agg(
                first=("first_lr_x_sharpness", "median"),
                largest=("max_lr_x_sharpness", "median"),
                late_median=("late_median_lr_x_sharpness", "median"),
                final=("final_lr_x_sharpness", "median"),
                share_above_2=("share_above_2", "median"),
                loss_rises=("loss_rises", "median"),
                last_rise=("last_rise", "median"),
            )
        )
    return out


def _tally(values: pd.Series) -> str:
    """'monotone ×6, cycle ×3': each value and how many times, most first."""
    return ", ".join(f"{v} ×{n}" for v, n in values.value_counts().items())


def _reference_by_lr(reference: pd.DataFrame) -> pd.DataFrame:
    """The distance to the optimum, averaged over seeds."""
    group = ["dataset", "impl", "optimizer", "dtype", "device", "lr"]
    return reference.groupby(group, as_index=False).agg(
        separable=("separable", "first"),
        optimum=("optimum_train_loss", "mean"),
        final_train_loss=("final_train_loss", "mean"),
        gap_to_optimum=("gap_to_optimum", "mean"),
    )


def log_to_parent(report: Report, files: list[Path]) -> None:
    client = report.sweep.tracker.client
    for path in files:
        client.log_artifact(report.sweep.parent_id, str(path), "analysis")


def make_report(
    experiment: str = "default",
    tracking_uri: str | None = None,
    out: str | Path | None = None,
    baseline: str | None = None,
) -> tuple[Report, Path]:
    sweep = load_sweep(experiment, tracking_uri)
    report = build(sweep, None if baseline is None else load_sweep(baseline, tracking_uri))
    folder = Path(out) if out else Path("reports") / experiment
    files = write(report, folder)
    log_to_parent(report, files)
    return report, folder
