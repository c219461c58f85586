"""A resumed sweep, read back: the sweep a user has after a failure and a Ctrl-C, resumed twice
with the same command, holds several attempts of some grid points. Its closing line, exit
code, parent counts and report must count each point once, by the attempt that stands, and
agree with an uninterrupted sweep of the same grid."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis import compare
from analysis.cli import run as analysis_cli
from analysis.runs import load_sweep
from experiments import sweep as sweep_module
from experiments.cli import CONFIGS
from experiments.cli import run as experiments_cli

QUICK = str(CONFIGS / "quick.yaml")
GRID = ["--set", "steps=40", "--set", "datasets=[iris]", "--quiet"]  # 3 implementations × 2 rates


def sweep(uri: str, failing: dict[int, BaseException] | None = None) -> tuple[int, str]:
    """The CLI's exit code and closing lines; ``failing``: the passes (1, 2, …) that raise."""
    real, calls = sweep_module.train_pass, []

    def train_pass(*args, **kwargs):
        calls.append(args)
        if len(calls) in (failing or {}):
            raise failing[len(calls)]
        return real(*args, **kwargs)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        patch.setattr(sweep_module, "train_pass", train_pass)
        code = experiments_cli(["sweep", QUICK, "--tracking-uri", uri, *GRID])
    return code, out.getvalue()


def report(uri: str, out) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        command = ["report", "--experiment", "quick", "--tracking-uri", uri, "--out", str(out)]
        assert analysis_cli(command) == 0
    return printed.getvalue()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The same grid twice: once uninterrupted; once with a pass that fails and a Ctrl-C
    (exit 130), resumed with a pass that fails again (exit 1), resumed to the end (exit 0)."""
    folder = tmp_path_factory.mktemp("resumed")
    clean, uri = f"sqlite:///{folder / 'clean.db'}", f"sqlite:///{folder / 'resumed.db'}"
    assert sweep(clean)[0] == 0
    transient = RuntimeError("a transient failure")
    attempts = [
        sweep(uri, {2: transient, 4: KeyboardInterrupt()}),
        sweep(uri, {1: transient}),
        sweep(uri),
    ]
    return SimpleNamespace(
        clean=clean, uri=uri, attempts=attempts, folder=folder,
        report=report(uri, folder / "resumed"), clean_sweep=load_sweep("quick", clean),
    )  # fmt: skip


def parent_and_children(uri: str):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quick").experiment_id
    runs = client.search_runs([experiment], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("kind") == "sweep"]
    return parent, [r for r in runs if r is not parent]


def test_the_store_holds_every_attempt(resumed):
    _, children = parent_and_children(resumed.uri)
    statuses = pd.Series([r.info.status for r in children]).value_counts().to_dict()
    assert statuses == {"FINISHED": 6, "FAILED": 2, "KILLED": 2}
    keys = pd.Series([r.data.tags["config_key"] for r in children])
    assert keys.nunique() == 6 and keys.value_counts().max() == 3  # one point tried thrice


def test_each_invocation_counts_each_point_once_by_its_latest_attempt(resumed):
    (code_1, _), (code_2, out_2), (code_3, out_3) = resumed.attempts
    assert code_1 == 130  # Ctrl-C: nothing concluded, the closing line is not printed
    assert code_2 == 1 and "\n5 finished, 0 diverged, 1 failed with an error (3 already" in out_2
    assert code_3 == 0 and "\n6 finished, 0 diverged, 0 failed with an error (5 already" in out_3
    assert "FAILED" not in out_3


def test_the_parents_counts_are_the_points_not_the_attempts(resumed):
    parent, _ = parent_and_children(resumed.uri)
    metrics = parent.data.metrics
    assert metrics["sweep/finished"] == 6
    assert metrics["sweep/failed"] == 0  # not the 1 the second invocation counted
    assert metrics["sweep/killed"] == 0
    clean, _ = parent_and_children(resumed.clean)
    assert metrics["sweep/pairs_end_together"] == clean.data.metrics["sweep/pairs_end_together"]
    assert metrics["sweep/pairs"] == 4


def test_the_report_reads_each_points_finished_run_and_says_what_it_set_aside(resumed):
    assert "4 earlier attempts of resumed grid points (KILLED or FAILED) set aside" in (
        resumed.report
    )
    assert resumed.clean_sweep.set_aside == 0
    _, children = parent_and_children(resumed.uri)
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    pairs = pd.read_csv(resumed.folder / "resumed" / "pairs.csv")
    assert len(pairs) == 4 and set(pairs.run_id) | set(pairs.twin_run_id) <= finished
    assert pairs.agrees.all()
    # The same grid uninterrupted: the same pairs and best rates (reruns are bit-identical).
    clean_pairs = compare.pairs(resumed.clean_sweep)
    same = ["impl", "lr", "agrees", "max_delta_w", "train_loss", "val_loss"]
    pd.testing.assert_frame_equal(pairs[same], clean_pairs[same], check_dtype=False)
    best = pd.read_csv(resumed.folder / "resumed" / "best_lr.csv")
    clean_best = compare.best_lrs(resumed.clean_sweep)
    columns = ["dataset", "impl", "best_lr", "val_loss_mean", "val_accuracy_mean", "on_edge"]
    pd.testing.assert_frame_equal(best[columns], clean_best[columns], check_dtype=False)
    html = (resumed.folder / "resumed" / "report.html").read_text()
    assert "4 earlier attempts of its grid points (KILLED or FAILED) are set aside" in html
