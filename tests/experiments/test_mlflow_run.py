"""``mlflow run .``: the run MLflow makes (``$MLFLOW_RUN_ID``) is the sweep's parent, its runs
nested under it, and no process the sweep starts inherits the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from experiments import sweep as sweep_module
from experiments.cli import run as experiments_cli

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "experiments" / "configs" / "quick.yaml"
SMALL = ["--quiet", "--set", "steps=20", "--set", "lrs=[0.1]"]


def runs_of(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], max_results=1000)


def test_the_run_mlflow_run_makes_is_the_sweeps_parent(tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    artifacts = (tmp_path / "artifacts").as_uri()  # not ./mlruns, MLflow's default
    experiment_id = client.create_experiment("projects", artifact_location=artifacts)
    outer = client.create_run(experiment_id).info.run_id  # what `mlflow run` makes
    seen = []
    opened = sweep_module.open_engine

    def open_engine(*args):  # what the sweep's processes would inherit
        seen.append(os.environ.get("MLFLOW_RUN_ID"))
        return opened(*args)

    monkeypatch.setattr(sweep_module, "open_engine", open_engine)
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    command = ["sweep", str(QUICK), "--tracking-uri", uri, *SMALL]
    assert experiments_cli(command) == 0
    assert seen == [None] and "MLFLOW_RUN_ID" not in os.environ

    runs = runs_of(client, experiment_id)
    parent = client.get_run(outer)
    assert parent.info.status == "FINISHED" and parent.data.tags["kind"] == "sweep"
    assert parent.info.run_name.startswith("sweep · quick · 6 runs")
    children = [r for r in runs if r.info.run_id != outer]
    assert len(children) == 6  # 2 datasets × 3 implementations × 1 rate
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {outer}
    assert not client.search_experiments(filter_string="name = 'quick'")  # no second home

    # `mlflow run --run-id` of the same sweep resumes it: nothing is trained twice.
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    assert experiments_cli(command) == 0
    assert len(runs_of(client, experiment_id)) == 7

    # Another sweep in that run is refused in one line, and writes nothing.
    capsys.readouterr()
    monkeypatch.setenv("MLFLOW_RUN_ID", outer)
    assert experiments_cli([*command, "--set", "seeds=[1]"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: run {outer} is the parent of another sweep (key "
        f"{parent.data.tags['sweep_key']}): give `mlflow run` no --run-id to start this one"
    ]
    assert len(runs_of(client, experiment_id)) == 7


@pytest.mark.slow
def test_mlflow_run_runs_the_quick_sweep_and_its_analysis(tmp_path):
    """The real thing: ``mlflow run . -e sweep --env-manager local``, then ``-e analyze``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # its python
    }
    project = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local"]
    named = ["--experiment-name", "quick"]
    sweep = [*project, "-e", "sweep", *named, "-P", f"config={QUICK}", "-P", "overrides=steps=20"]
    # From tmp_path: MLflow makes the experiment, its artifacts in ./mlruns of where it runs.
    done = subprocess.run(sweep, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("quick").experiment_id
    runs = runs_of(client, experiment_id)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 13  # 2 datasets × 3 implementations × 2 rates
    parent = parents[0]
    assert parent.data.tags["mlflow.project.entryPoint"] == "sweep"  # MLflow's own run
    assert parent.data.tags["kind"] == "sweep" and parent.info.status == "FINISHED"
    assert len(client.search_logged_models([experiment_id])) == 6

    out = ["-P", "experiment=quick", "-P", f"out={tmp_path / 'reports'}"]
    analyze = [*project, "-e", "analyze", *named, *out]
    done = subprocess.run(
        analyze, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    analysis = [r for r in runs_of(client, experiment_id) if r.data.tags.get("analyzed_sweep")]
    assert len(analysis) == 1
    assert analysis[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert [a.path for a in client.list_artifacts(analysis[0].info.run_id)] == ["report.html"]
