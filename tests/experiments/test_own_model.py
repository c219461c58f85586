"""A model of one's own, swept from a config (``model: package.module:Class``) and analysed like
the built-ins: its derivation beside autograd of its own loss, paired run by run."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest

from analysis.cli import run as analysis_cli
from experiments.cli import run as experiments_cli
from experiments.records import read_trajectory

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


@pytest.mark.slow
def test_a_network_of_ones_own_sweeps_by_its_parameters_names(tmp_path):
    """examples/mlp.yaml, small: a two-layer network's runs log a series per parameter by its
    name and a trajectory column per entry; the report pairs them, and a pair that is not
    within tolerance parted from its twin at a step it names, with its gradients agreeing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["--set", "seeds=[0]", "--set", "lrs=[0.1,10.0]", "--set", "steps=40"]
    sweep = ["sweep", str(ROOT / "examples" / "mlp.yaml"), "--tracking-uri", uri, "--quiet"]
    assert experiments_cli([*sweep, *small]) == 0
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlp").experiment_id
    runs = [r for r in client.search_runs([experiment]) if r.data.tags.get("kind") != "sweep"]
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    series = {f"{p}/{n}_norm" for p in ("param", "grad") for n in ("W1", "b1", "W2", "b2")}
    assert all(series <= set(r.data.metrics) for r in runs)
    run = runs[0]
    folder = client.download_artifacts(run.info.run_id, "trajectory.parquet", str(tmp_path))
    _, params, grads = read_trajectory(pd.read_parquet(folder))
    n, classes = int(run.data.params["n_features"]), int(run.data.params["n_classes"])
    assert {name: t.shape[1:] for name, t in params.items()} == {
        "W1": (n, 32), "b1": (32,), "W2": (32, classes), "b2": (classes,)
    }  # fmt: skip
    assert list(grads) == ["dW1", "db1", "dW2", "db2"]

    out = tmp_path / "report"
    report = ["report", "--experiment", "mlp", "--tracking-uri", uri, "--out", str(out)]
    assert analysis_cli(report) == 0
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 4 and {"max_delta_W1", "max_delta_b2", "parted_at"} <= set(pairs)
    assert pairs[pairs.lr == 0.1].agrees.all() and pairs[pairs.lr == 0.1].parted_at.isna().all()
    assert (pairs.max_grad_err_vs_terms < 1e-6).all()  # float32: the derivation is right
    apart = pairs[~pairs.agrees]
    assert apart.parted_at.notna().all() and apart.verdict.str.startswith("parts ways").all()
