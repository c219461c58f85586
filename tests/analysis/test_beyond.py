"""Softmax runs, hand-written optimizers and the zero_grad ablation, through the real sweep
and the real report: one small float64 sweep of all three, in a temporary store."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis import ablation
from analysis.cli import run as analysis_cli
from analysis.runs import load_sweep
from experiments.cli import CONFIGS
from experiments.cli import run as experiments_cli

OVERRIDES = [
    "datasets=[iris, {name: iris, classes: all}]",
    "lrs=[0.05, 0.5]",
    "optimizers=[sgd, {name: sgd, zero_grad: false}, {name: adam, weight_decay: 0.01}, nesterov]",
    "steps=40",
    "dtype=float64",
    "name=beyond",
]


@pytest.fixture(scope="module")
def beyond(tmp_path_factory):
    folder = tmp_path_factory.mktemp("beyond")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    args = ["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]
    assert experiments_cli([*args, *(x for o in OVERRIDES for x in ("--set", o))]) == 0
    out = folder / "report"
    report = ["report", "--experiment", "beyond", "--tracking-uri", uri, "--out", str(out)]
    assert analysis_cli(report) == 0
    return uri, out


def test_every_run_finishes_and_softmax_runs_record_every_parameter(beyond):
    uri, _ = beyond
    sweep = load_sweep("beyond", uri)
    runs = sweep.runs
    assert len(runs) == 2 * 2 * 4 * 3 and set(runs.status) == {"FINISHED"}
    softmax = runs[runs.dataset == "iris(classes=all)"]
    assert set(softmax.n_classes) == {3} and set(runs[runs.dataset == "iris"].n_classes) == {2}
    run_id = softmax.run_id.iloc[0]
    assert {"param/b_norm", "grad/b_norm"} <= set(sweep.history(run_id).columns)
    trajectory = sweep.trajectory(run_id)
    assert len([c for c in trajectory.columns if c.startswith(("w[", "b["))]) == (4 + 1) * 3
    history = sweep.as_history(run_id)
    assert history.w.shape == (41, 4, 3) and history.b.shape == (41, 3)


def test_every_pair_agrees_for_every_rule_and_both_models(beyond):
    _, out = beyond
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 2 * 2 * 4 * 2  # (manual, function) per dataset, lr and rule
    assert pairs.agrees.all(), pairs[~pairs.agrees]
    assert set(pairs.optimizer) == {"sgd", "sgd, no zero_grad", "adam+wd(0.01)", "nesterov(0.9)"}
    assert pairs.max_delta_theta.max() < 1e-12
    # No check without zero_grad: the step's gradient is not the gradient at θ_t by design.
    unchecked = pairs[pairs.optimizer == "sgd, no zero_grad"]
    assert unchecked.max_grad_rel_err.isna().all()
    assert (pairs[pairs.optimizer != "sgd, no zero_grad"].max_grad_rel_err < 1e-12).all()


def test_weight_decay_and_softmax_have_an_optimum_and_the_gap_is_measured(beyond):
    _, out = beyond
    reference = pd.read_csv(out / "reference.csv")
    decayed = reference[reference.optimizer == "adam+wd(0.01)"]
    assert decayed.optimum_train_loss.notna().all() and (decayed.gap_to_optimum > 0).all()
    softmax = reference[reference.dataset == "iris(classes=all)"]
    assert not softmax.separable.any() and softmax.optimum_train_loss.notna().all()


def test_the_accumulated_step_follows_its_closed_form(beyond):
    _, out = beyond
    table = pd.read_csv(out / "accumulation.csv")
    assert len(table) == 2 * 2 * 3  # every impl, dataset and lr, without zero_grad
    assert table.agrees.all()
    assert table.max_err_accumulated_grad.max() < 1e-13
    assert table.max_err_closed_form_weights.max() < 1e-13
    # Paired with the same run with zero_grad: the loss and the gradient differ.
    assert (table.final_train_loss != table.final_train_loss_with_zero_grad).all()
    html = (out / "report.html").read_text()
    assert "The zero_grad ablation" in html and "zero_grad.png" in html


def test_a_logged_gradient_that_is_not_the_sum_fails_the_closed_form(beyond):
    """Replace the logged accumulated gradient by the fresh one (what zero_grad would give):
    the closed-form check must see it."""
    uri, _ = beyond
    sweep = load_sweep("beyond", uri)
    ablated = sweep.runs[~sweep.runs.zero_grad]
    normal = sweep.runs[sweep.runs.zero_grad & (sweep.runs.optimizer == "sgd")]
    key = ["dataset", "impl", "lr"]
    swapped = normal.set_index(key).run_id
    real_trajectory = sweep.trajectory

    def trajectory(run_id):
        frame = real_trajectory(run_id).copy()
        if run_id in set(ablated.run_id):
            row = ablated.set_index("run_id").loc[run_id]
            other = real_trajectory(swapped[tuple(row[k] for k in key)])
            dw = [c for c in frame.columns if c.startswith(("dw", "db"))]
            frame[dw] = other[dw].to_numpy()
        return frame

    sweep.trajectory = trajectory
    sweep._frames.clear()
    table = ablation.accumulation(sweep)
    assert len(table) and not table.agrees.any()
    assert (table.max_err_accumulated_grad > 1e-3).all()


def test_the_notebook_checks_the_closed_form_on_the_sweep_in_process(beyond, run_notebook):
    from analysis.run_notebooks import notebooks

    uri, _ = beyond
    (path,) = [p for p in notebooks() if p.name.startswith("04-")]
    text, figures = run_notebook(path, "beyond", uri)
    assert "12 of 12 runs follow the closed form at every step" in text
    assert "|roots| = [1. 1.]" in text
    assert figures >= 2


@pytest.mark.slow
def test_the_notebook_checks_the_closed_form_on_the_sweep(beyond, tmp_path):
    import json

    from analysis.run_notebooks import execute, notebooks

    uri, _ = beyond
    (path,) = [p for p in notebooks() if p.name.startswith("04-")]
    (written,) = execute("beyond", uri, tmp_path, only=[path])
    book = json.loads(written.read_text())
    outputs = [o for c in book["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "".join("".join(o.get("text", "")) for o in outputs)
    assert "12 of 12 runs follow the closed form at every step" in text
    assert "|roots| = [1. 1.]" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2
