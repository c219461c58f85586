"""`python -m analysis report` end to end on quick.yaml, with a deliberately broken manual
gradient that the report must flag, and the notebooks executed against the same sweep."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from mlflow import MlflowClient

import manual_models.logistic
from analysis.cli import run as analysis_cli
from analysis.run_notebooks import execute, notebooks
from experiments.cli import CONFIGS
from experiments.cli import run as experiments_cli


@pytest.fixture(scope="module")
def broken_sweep(tmp_path_factory):
    """quick.yaml, with the manual model's dw and db 1% too large (function stays correct)."""
    folder = tmp_path_factory.mktemp("broken")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    correct = manual_models.logistic.bce_gradients
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            manual_models.logistic,
            "bce_gradients",
            lambda *a: {k: 1.01 * v for k, v in correct(*a).items()},
        )
        assert (
            experiments_cli(
                ["sweep", str(CONFIGS / "quick.yaml"), "--tracking-uri", uri, "--quiet"]
            )
            == 0
        )
    out = folder / "report"
    assert (
        analysis_cli(["report", "--experiment", "quick", "--tracking-uri", uri, "--out", str(out)])
        == 0
    )
    return uri, out


def test_report_files(broken_sweep):
    _, out = broken_sweep
    names = {p.name for p in out.iterdir()}
    assert {"report.html", "pairs.csv", "best_lr.csv", "reference.csv", "devices.csv"} <= names
    figures = ["loss_curves", "delta_w", "loss_vs_lr", "grad_errors", "time_per_step"]
    # every run's sharpness; iris has a minimiser; breast_cancer is separable
    figures += ["sharpness", "late_rates", "implicit_bias"]
    assert {f"{name}.png" for name in figures} <= names
    assert len(pd.read_csv(out / "pairs.csv")) == 8  # (manual, function) × 2 datasets × 2 lrs
    assert len(pd.read_csv(out / "best_lr.csv")) == 6  # 2 datasets × 3 impls
    assert len(pd.read_csv(out / "reference.csv")) == 12  # every run
    assert len(pd.read_csv(out / "sharpness.csv")) == 12  # every run measured its sharpness
    held = pd.read_csv(out / "stability.csv")  # iris: not separable; breast_cancer is
    assert len(held) == 6 and set(held.dataset) == {"iris"}
    assert set(held.zone) == {"below 1"} and set(held["class"]) == {"monotone"}
    bias = pd.read_csv(out / "implicit_bias.csv")
    assert len(bias) == 6 and set(bias.dataset) == {"breast_cancer"}
    assert (bias.sharpness_over_bound <= 1).all()


def test_the_broken_gradient_is_flagged_and_the_correct_one_passes(broken_sweep):
    _, out = broken_sweep
    pairs = pd.read_csv(out / "pairs.csv")
    manual, function = pairs[pairs.impl == "manual"], pairs[pairs.impl == "function"]
    assert not manual.agrees.any() and function.agrees.all()
    assert (manual.max_grad_err_vs_terms > 1e-3).all()
    assert (function.max_grad_err_vs_terms < 1e-5).all()


def test_report_html_names_every_pair_and_embeds_its_figures(broken_sweep):
    _, out = broken_sweep
    page = (out / "report.html").read_text()
    for name in pd.read_csv(out / "pairs.csv").run_name:
        assert name in page
    assert page.count("data:image/png;base64,") == 8
    assert "The stability threshold" in page
    assert 'src="http' not in page  # self-contained: readable offline
    assert "breast_cancer" in page and "no minimiser" in page


def test_reference_knows_breast_cancer_is_separable(broken_sweep):
    _, out = broken_sweep
    reference = pd.read_csv(out / "reference.csv")
    separable = reference.groupby("dataset").separable.all().to_dict()
    assert separable == {"breast_cancer": True, "iris": False}
    assert reference[reference.dataset == "iris"].optimum_train_loss.notna().all()


def test_the_parent_run_holds_the_analysis(broken_sweep):
    uri, _ = broken_sweep
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.kind = 'sweep'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/report.html", "analysis/pairs.csv", "analysis/delta_w.png"} <= logged


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "no experiment 'nope'"),
        (["--tracking-uri", "ftp://x"], "unsupported tracking URI"),
        (["--tracking-uri", "http://127.0.0.1:9"], "cannot be reached"),
    ],
)
def test_bad_report_requests(args, message, tmp_path, capsys):
    uri = ["--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"]
    assert analysis_cli(["report", *uri, *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_an_experiment_without_a_sweep_is_refused(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = ["train", "--dataset", "iris", "--impl", "manual", "--lr", "0.1", "--steps", "3"]
    assert experiments_cli([*args, "--tracking-uri", uri, "--experiment", "single"]) == 0
    capsys.readouterr()
    assert analysis_cli(["report", "--experiment", "single", "--tracking-uri", uri]) == 2
    assert "holds no sweep" in capsys.readouterr().err


def test_stored_notebooks_have_no_outputs():
    assert [p.name for p in notebooks()] == [
        "01-manual-vs-autograd.ipynb", "02-learning-rates.ipynb", "03-devices.ipynb",
        "04-zero-grad-and-optimizers.ipynb", "05-mini-batches.ipynb", "06-stability.ipynb",
        "07-implicit-bias.ipynb",
    ]  # fmt: skip
    for path in notebooks():
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def test_notebooks_run_against_a_sweep_in_process(broken_sweep, run_notebook):
    """Against quick.yaml's full-batch sweep; the mini-batch notebook says it has nothing to
    show (tests/analysis/test_minibatch.py runs it on mini-batches)."""
    uri, _ = broken_sweep
    for path in notebooks():
        printed, figures = run_notebook(path, "quick", uri)
        if path.name == "05-mini-batches.ipynb":
            assert "no mini-batch run" in printed and figures == 0
        elif path.name == "07-implicit-bias.ipynb":  # breast_cancer is separable, at lr 0.1, 1
            assert "6 of plain gradient descent on a separable set" in printed and figures == 1
        else:
            assert figures >= 1, path.name


@pytest.mark.slow
def test_notebooks_execute_against_a_sweep(broken_sweep, tmp_path):
    uri, _ = broken_sweep
    written = execute("quick", uri, tmp_path)
    assert len(written) == 7
    for path in [*written[:4], *written[5:]]:  # 05 has no figure without mini-batches
        book = json.loads(path.read_text())
        outputs = [o for c in book["cells"] if c["cell_type"] == "code" for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], path.name
        assert any("image/png" in o.get("data", {}) for o in outputs), path.name
