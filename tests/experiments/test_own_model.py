"""A model of one's own, swept from a config (``model: package.module:Class``) and analysed like
the built-ins: its derivation beside autograd of its own loss, paired run by run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from analysis.cli import run as analysis_cli
from experiments.cli import run as experiments_cli

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "seeds=[0]", "--set", "lrs=[0.1,1.0]", "--set", "steps=60",
         "--set", "datasets=[breast_cancer,moons]"]  # fmt: skip


def test_a_kind_of_ones_own_sweeps_and_is_analysed_like_the_built_ins(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = ["sweep", str(ROOT / "examples" / "probit.yaml"), "--tracking-uri", uri, "--quiet"]
    assert experiments_cli([*sweep, *SMALL]) == 0
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("probit").experiment_id
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("kind") != "sweep"]
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.params["model"] for r in runs} == {"examples.probit:Probit"}
    assert all(" Probit · " in r.info.run_name for r in runs)
    assert not client.search_logged_models([experiment])  # the served model is σ or softmax

    out = tmp_path / "report"
    report = ["report", "--experiment", "probit", "--tracking-uri", uri, "--out", str(out)]
    assert analysis_cli(report) == 0
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 4 and pairs.agrees.all()
    assert (pairs.max_grad_err_vs_terms < 1e-14).all()  # float64: the derivation is right
    assert len(pd.read_csv(out / "best_lr.csv")) == 4
    assert pd.read_csv(out / "reference.csv").empty  # its optimum is not logistic regression's
    assert "examples.probit:Probit" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["--set", "model=nowhere.kinds:Probit"],
         "model 'nowhere.kinds:Probit' cannot be imported: No module named 'nowhere'"),
        (["--set", "model=examples.probit:signs"], "is not a manual_models.Kind subclass"),
        (["--set", "model=examples.probit"], "must read package.module:Class"),
        (["--set", "impls=[manual,function]"],
         "a model of your own trains as manual and autograd"),
    ],
)  # fmt: skip
def test_a_model_that_cannot_be_used_is_one_line_and_nothing_is_written(
    tmp_path, capsys, overrides, message
):
    db = tmp_path / "never.db"
    sweep = ["sweep", str(ROOT / "examples" / "probit.yaml"), "--tracking-uri", f"sqlite:///{db}"]
    assert experiments_cli([*sweep, *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not db.exists()
