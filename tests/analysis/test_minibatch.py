"""The mini-batch section on a real (small) mini-batch sweep, and its science on its own: the
closed form of the batch gradient's noise against many drawn batches, and the scaling table's
verdicts on losses whose answer is known."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from analysis import minibatch
from analysis.cli import run as analysis_cli
from analysis.run_notebooks import notebooks
from analysis.runs import load_sweep
from experiments.batches import Batches
from experiments.cli import run as experiments_cli

SWEEP = """
name: small_batches
datasets: [digits]
impls: [manual, function, autograd]
batch_sizes: [32, 128]
lrs: [0.02, 0.08, 0.32]
epochs: 2
val_fraction: 0.43
devices: [cpu]
dtype: float64
"""


@pytest.fixture(scope="module")
def batch_sweep(tmp_path_factory):
    """Two batch sizes, lr ×4 with the batch: two diagonals of lr / batch size."""
    folder = tmp_path_factory.mktemp("minibatch")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    config = folder / "small_batches.yaml"
    config.write_text(SWEEP)
    assert experiments_cli(["sweep", str(config), "--tracking-uri", uri, "--quiet"]) == 0
    out = folder / "report"
    args = ["report", "--experiment", "small_batches", "--tracking-uri", uri, "--out", str(out)]
    assert analysis_cli(args) == 0
    return uri, out


def test_the_closed_form_is_the_mean_over_many_drawn_batches():
    """At fixed parameters, 6,000 batches drawn as the loop draws them: the mean of
    ‖ĝ − g‖² is the closed form for sampling without replacement, and not the
    with-replacement σ²/b (the correction is 1 − (b − 1)/(n − 1), 0.74 here)."""
    g = torch.Generator().manual_seed(0)
    per_sample = torch.randn(120, 5, generator=g, dtype=torch.float64) * torch.arange(1.0, 6.0)
    full = per_sample.mean(0)
    drawn = Batches(120, 32, seed=1, drop_last=True)  # whole batches: each a uniform subset
    deviations = [
        float((per_sample[drawn.at(t)].mean(0) - full).square().sum()) for t in range(6000)
    ]
    measured = sum(deviations) / len(deviations)
    expected = minibatch.expected_noise(per_sample, 32)
    assert measured == pytest.approx(expected, rel=0.03)
    with_replacement = float((per_sample - full).square().sum(1).mean()) / 32
    assert abs(measured - with_replacement) > 0.2 * with_replacement


def test_the_scaling_verdicts_on_known_losses():
    """Two diagonals of lr / b: one where the larger batch ends where the smaller did, one
    where it ends far above; the rule holds up to the first and breaks at the second."""
    table = pd.DataFrame({
        "dataset": "d", "optimizer": "sgd", "lr_per_sample": [1e-3, 1e-3, 4e-3, 4e-3],
        "batch": [8, 32, 8, 32], "lr_times_L": [0.1, 0.4, 0.4, 1.6],
        "final_train_loss": [0.30, 0.301, 0.20, 0.40],
    })  # fmt: skip
    table["start_loss"] = 0.7
    table["missed_progress"] = [0.0, 0.002, 0.0, 0.4]
    table["holds"] = table.missed_progress.abs() <= minibatch.HOLDS
    breaks = minibatch.where_it_breaks(table)
    assert breaks.to_dict("records") == [
        {"dataset": "d", "optimizer": "sgd", "holds_up_to_lr_times_L": 0.4,
         "breaks_at_lr_times_L": 1.6}
    ]  # fmt: skip


def test_the_report_has_the_mini_batch_section(batch_sweep):
    _, out = batch_sweep
    for name in ("batch_agreement.csv", "scaling.csv", "scaling_breaks.csv", "noise.csv"):
        assert (out / name).is_file(), name
    assert (out / "linear_scaling.png").is_file() and (out / "batch_noise.png").is_file()
    html = (out / "report.html").read_text()
    assert "<h2>Mini-batches</h2>" in html and "linear scaling rule" in html
    agreement = pd.read_csv(out / "batch_agreement.csv")
    assert sorted(agreement.batch.unique()) == [32, 128]
    assert (agreement.agrees == agreement.pairs).all()  # 3 rates each, all within tolerance
    assert agreement.max_grad_err_vs_terms.max() < 1e-13
    scaling = pd.read_csv(out / "scaling.csv")
    assert sorted(scaling.lr_per_sample.unique()) == [0.000625, 0.0025]  # the two diagonals
    assert (scaling.epochs == 2).all() and scaling.holds.all()  # lr·L ≤ 0.6 here


def test_the_noise_table_reads_the_logged_deviation_at_each_epoch_start(batch_sweep):
    uri, _ = batch_sweep
    sweep = load_sweep("small_batches", uri)
    points = minibatch.noise(sweep)
    # Autograd's runs: 3 rates × 2 sizes; 2 epochs, so epoch starts 0 and the next.
    assert len(points) == 12 and set(points.step) == {0, 8, 32}
    for _, point in points.iterrows():
        logged = sweep.history(point.run_id)["grad/batch_dev_sq"].iloc[point.step]
        assert point.measured == logged and point.expected > 0
    summary = minibatch.noise_summary(points)
    assert set(summary.batch) == {32, 128} and (summary.draws == 2).all()


def test_the_minibatch_notebook_runs_against_a_mini_batch_sweep(batch_sweep, run_notebook):
    uri, _ = batch_sweep
    (path,) = [p for p in notebooks() if p.name == "05-mini-batches.ipynb"]
    printed, figures = run_notebook(Path(path), "small_batches", uri)
    assert figures >= 2 and "pairs agree" in printed
