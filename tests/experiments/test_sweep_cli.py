"""The CLI end to end on quick.yaml, in a temporary store: what MLflow holds afterwards."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from experiments.cli import CONFIGS, run
from experiments.config import load_sweep

QUICK = CONFIGS / "quick.yaml"
METRICS = {
    "train/loss", "val/loss", "train/accuracy", "val/accuracy",
    "grad/w_norm", "grad/b", "param/w_norm", "param/b",
}  # fmt: skip
CHECKS = {"check/grad_rel_err", "check/grad_err_vs_terms"}
CURVATURE = {"curv/sharpness", "curv/lr_x_sharpness"}  # every run's, every 25 steps


@pytest.fixture(scope="module")
def quick_sweep(tmp_path_factory):
    """quick.yaml, run once through the real CLI into a fresh SQLite store."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    assert run(["sweep", str(QUICK), "--tracking-uri", uri, "--quiet"]) == 0
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return client, experiment, runs


def children_of(runs):
    parents = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    assert len(parents) == 1
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return parent, children


def test_one_parent_and_a_child_per_grid_point(quick_sweep):
    _, _, runs = quick_sweep
    _, children = children_of(runs)
    grid = load_sweep(QUICK, {}).grid()
    assert len(children) == len(grid) == len(runs) - 1 == 12
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert {c.data.tags["config_key"] for c in children} == {g.key for g in grid}
    assert sorted(c.info.run_name for c in children) == sorted(g.name for g in grid)
    assert "manual · iris · lr=0.1 · cpu · s0" in {c.info.run_name for c in children}
    # The two rates of each manual and function point were trained in one pass; autograd,
    # the reference, one run at a time.
    batch = {c.data.tags["impl"]: c.data.params["lr_batch"] for c in children}
    assert batch == {"manual": "2", "function": "2", "autograd": "1"}


def test_batched_and_unbatched_sweeps_agree(quick_sweep, tmp_path):
    """batch_lrs=false trains every rate alone: the same final numbers within float32's."""
    _, _, runs = quick_sweep
    _, children = children_of(runs)
    uri = f"sqlite:///{tmp_path / 'alone.db'}"
    args = ["sweep", str(QUICK), "--tracking-uri", uri, "--quiet", "--set", "batch_lrs=false"]
    args += ["--set", "impls=[manual, function]"]
    assert run(args) == 0
    client = MlflowClient(uri)
    alone = {
        r.data.tags["config_key"]: r
        for r in client.search_runs([client.get_experiment_by_name("quick").experiment_id])
        if r.data.tags.get("kind") != "sweep"
    }
    assert {r.data.params["lr_batch"] for r in alone.values()} == {"1"}
    together = {c.data.tags["config_key"]: c for c in children if c.data.tags["impl"] != "autograd"}
    assert together.keys() == alone.keys()  # batching is not part of a run's identity
    for key, run_ in together.items():
        for metric in ("train/loss", "val/loss", "param/w_norm", "param/b"):
            a, b = run_.data.metrics[metric], alone[key].data.metrics[metric]
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (key, metric)


def test_params_and_tags_describe_the_run(quick_sweep):
    _, _, runs = quick_sweep
    _, children = children_of(runs)
    for child in children:
        params, tags = child.data.params, child.data.tags
        for key in (
            "dataset",
            "impl",
            "lr",
            "device",
            "seed",
            "steps",
            "dtype",
            "val_fraction",
            "n_train",
            "n_val",
            "n_features",
            "trajectory_every",
        ):
            assert key in params, key
        assert params["impl"] == tags["impl"] and params["device"] == tags["device"] == "cpu"
        for key in (
            "git_commit",
            "torch_version",
            "mlflow_version",
            "sklearn_version",
            "device_name",
            "config_key",
        ):
            assert tags[key], key
        assert "python -m experiments train" in tags["mlflow.note.content"]
    iris = next(c for c in children if c.data.params["dataset"] == "iris")
    assert (iris.data.params["n_train"], iris.data.params["n_val"]) == ("75", "25")
    assert iris.data.params["n_features"] == "4"


def test_curves_are_charted_whole_and_the_rest_at_their_ends(quick_sweep):
    client, _, runs = quick_sweep
    _, children = children_of(runs)
    child = next(c for c in children if c.data.tags["impl"] == "manual")
    maxima = {"check/max_grad_rel_err", "check/max_grad_err_vs_terms"}
    log10 = {"check/log10_grad_rel_err", "check/log10_grad_err_vs_terms"}
    expected = METRICS | CHECKS | CURVATURE | log10 | maxima | {"time/fit_s", "time/step_ms"}
    assert set(child.data.metrics) == expected

    def steps(name):
        return sorted(m.step for m in client.get_metric_history(child.info.run_id, name))

    # 100 steps, fewer than max_metric_points (200): each curve has every one of its rows;
    # the one-number bias and the raw checks go at their first and last (all in
    # history.parquet, below).
    for name in ("train/loss", "val/accuracy", "param/w_norm", "check/log10_grad_err_vs_terms"):
        assert steps(name) == list(range(101)), name
    for name in ("param/b", "grad/b", "check/grad_err_vs_terms"):
        assert steps(name) == [0, 100], name
    for name in CURVATURE:  # a curve of its measurements
        assert steps(name) == [0, 25, 50, 75, 100], name
    log10 = client.get_metric_history(child.info.run_id, "check/log10_grad_err_vs_terms")
    assert all(-18 <= m.value < -5 for m in log10)
    assert float(child.data.params["log10_lr"]) == pytest.approx(
        np.log10(float(child.data.params["lr"])), rel=1e-15, abs=0
    )
    autograd = next(c for c in children if c.data.tags["impl"] == "autograd")
    assert not (CHECKS | maxima) & set(autograd.data.metrics)


def test_artifacts_hold_the_complete_history(quick_sweep, tmp_path):
    client, _, runs = quick_sweep
    _, children = children_of(runs)
    child = next(c for c in children if c.data.tags["impl"] == "function")
    folder = client.download_artifacts(child.info.run_id, "", str(tmp_path))
    history = pd.read_parquet(Path(folder) / "history.parquet")
    trajectory = pd.read_parquet(Path(folder) / "trajectory.parquet")
    n = int(child.data.params["n_features"])
    assert list(history["step"]) == list(range(101))
    assert set(history.columns) == METRICS | CHECKS | CURVATURE | {"step"}
    assert history["check/grad_err_vs_terms"].max() < 1e-5
    maximum = child.data.metrics["check/max_grad_rel_err"]
    assert history["check/grad_rel_err"].max() == maximum  # the same float, written twice
    assert len(trajectory) == 101 and trajectory.shape[1] == 1 + 2 * (n + 1)  # w, b, dw, db
    # The artifact agrees with the metric MLflow shows last.
    assert history["train/loss"].iloc[-1] == child.data.metrics["train/loss"]
    # θ follows the logged gradient: θ_{t+1} = θ_t − lr·dθ_t, and b is param/b.
    lr = float(child.data.params["lr"])
    w, dw = (trajectory[[*(f"{d}w[{j}]" for j in range(n)), f"{d}b"]].to_numpy() for d in ("", "d"))
    np.testing.assert_allclose(w[1:], w[:-1] - lr * dw[:-1], rtol=1e-5, atol=1e-6)
    assert (trajectory["b"] == history["param/b"]).all()


def test_datasets_are_logged_with_a_digest(quick_sweep):
    """The sweep's splits are dataset inputs of its parent (once each); every child names its
    split by a digest of all four arrays, shared by the runs that share the split."""
    _, _, runs = quick_sweep
    parent, children = children_of(runs)
    inputs = parent.inputs.dataset_inputs
    assert {i.tags[0].value for i in inputs} == {"train", "val"}
    assert all(len(i.dataset.digest) == 16 for i in inputs)
    datasets = {c.data.tags["dataset"] for c in children}
    assert {i.dataset.name.split()[0] for i in inputs} == datasets
    digests = {c.data.tags["dataset"]: set() for c in children}
    for child in children:
        digests[child.data.tags["dataset"]].add(child.data.params["data_digest"])
    assert all(len(found) == 1 for found in digests.values())  # one split per dataset here
    assert len({found.pop() for found in digests.values()}) == len(datasets)


def test_manual_and_function_finish_where_autograd_does(quick_sweep):
    _, _, runs = quick_sweep
    _, children = children_of(runs)
    final = {
        (c.data.tags["impl"], c.data.tags["dataset"], c.data.tags["lr"]): c.data.metrics
        for c in children
    }
    for (impl, dataset, lr), metrics in final.items():
        if impl == "autograd":
            continue
        twin = final[("autograd", dataset, lr)]
        for key in ("train/loss", "val/loss"):
            assert abs(metrics[key] - twin[key]) <= 1e-5, (impl, dataset, lr, key)


def test_parent_holds_the_config_and_the_summary(quick_sweep, tmp_path):
    client, _, runs = quick_sweep
    parent, _ = children_of(runs)
    assert parent.data.params["lrs"] == "[0.1, 1.0]"
    folder = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path)))
    assert {p.name for p in folder.iterdir()} == {"config.yaml", "runs.csv", "summary.csv"}
    assert len(pd.read_csv(folder / "runs.csv")) == 12
    summary = pd.read_csv(folder / "summary.csv").set_index(["dataset", "impl"])
    assert len(summary) == 6
    # Each best lr is the lr of that dataset and implementation with the lowest validation
    # loss, read off the runs themselves (one seed: the mean is the run's own).
    runs_csv = pd.read_csv(folder / "runs.csv")
    for (dataset, impl), row in summary.iterrows():
        mine = runs_csv[(runs_csv.dataset == dataset) & (runs_csv.impl == impl)]
        assert row["best_lr"] == mine.loc[mine["val/loss"].idxmin(), "lr"], (dataset, impl)
        assert row["val_loss_mean"] == mine["val/loss"].min()
    again = load_sweep(folder / "config.yaml", {})
    assert again == load_sweep(QUICK, {})


def test_the_parent_run_answers_the_question(quick_sweep, tmp_path):
    """The sweep list alone: how many pairs end where autograd ends, the largest gradient
    disagreement anywhere, each implementation's best lr per dataset (as summary.csv has it)."""
    client, _, runs = quick_sweep
    parent, children = children_of(runs)
    metrics = parent.data.metrics
    assert metrics["sweep/pairs"] == metrics["sweep/pairs_end_together"] == 8
    checks = [c.data.metrics.get("check/max_grad_err_vs_terms", 0.0) for c in children]
    assert metrics["sweep/max_grad_err_vs_terms"] == max(checks) < 1e-5
    folder = Path(client.download_artifacts(parent.info.run_id, "summary.csv", str(tmp_path)))
    summary = pd.read_csv(folder)
    best = {f"sweep/best_lr.{r.dataset}.{r.impl}": r.best_lr for r in summary.itertuples()}
    assert len(best) == 6 and {k: metrics[k] for k in best} == best


def test_train_makes_one_run_without_parent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'one.db'}"
    args = [
        "train",
        "--dataset",
        "{name: moons, n_samples: 200, noise: 0.3}",
        "--impl",
        "manual",
        "--lr",
        "0.5",
        "--steps",
        "20",
        "--dtype",
        "float64",
        "--tracking-uri",
        uri,
    ]
    assert run(args) == 0
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
    (only,) = client.search_runs([experiment.experiment_id])
    assert only.info.status == "FINISHED" and "mlflow.parentRunId" not in only.data.tags
    assert only.data.params["dataset.noise"] == "0.3" and only.data.params["dtype"] == "float64"
    assert only.data.metrics["check/grad_rel_err"] < 1e-12
    assert only.info.run_name == "manual · moons(n_samples=200,noise=0.3) · lr=0.5 · cpu · s0"


@pytest.mark.slow  # 7 s: a fresh interpreter; the CLI itself runs in-process above
def test_the_module_runs_as_a_program(tmp_path):
    """`python -m experiments` exists, answers --help, and fails a bad config with exit 2."""
    done = subprocess.run(
        [sys.executable, "-m", "experiments", "sweep", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0 and "--tracking-uri" in done.stdout
    uri = f"sqlite:///{tmp_path / 'x.db'}"
    command = [sys.executable, "-m", "experiments", "sweep", str(QUICK), "--set", "lrs=[-1]"]
    bad = subprocess.run([*command, "--tracking-uri", uri], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "lrs.0" in bad.stderr
    assert not (tmp_path / "x.db").exists()
