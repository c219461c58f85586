"""The benchmark's machinery on tiny sizes: what it measures and writes, not how fast it is."""

from __future__ import annotations

import json
import math

import pytest
import torch
from mlflow import MlflowClient

from experiments import bench, bench_report
from experiments.cli import run
from experiments.tracking import Tracker

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report():
    """Every part of the bench at toy sizes: 30 s of `make test`'s 4 minutes (each
    implementation compiles once), so the tests that read it are `slow` (`make test-all`)."""
    timer = bench.Timer(CPU, repeats=1, min_s=0)
    return {
        "machine": bench.machine(CPU),
        "quick": True,
        "repeats": 1,
        "step": bench.step_times(CPU, [(300, 7)], timer),  # one size: each compiles (~10 s)
        "lr_batch": [
            *bench.lr_batching(CPU, [(64, 5)], [1, 3], timer, run_steps=4),
            *bench.lr_batching(CPU, [(60, 4)], [1, 3], timer, 4, bench.SOFTMAX_ADAM),
        ],
        "minibatch": [bench.minibatch_row(*bench.problem(200, 5, CPU), b, timer) for b in (16, 64)],
        "sharpness": bench.sharpness_cost(CPU, [(bench.LOGISTIC_SGD, (80, 5))], 3, 60),
        "tracking": bench.tracking(repeats=1, naive_sample=3),
        "sweep": bench.sweep_share("quick.yaml"),
    }


@pytest.mark.slow
def test_step_rows_hold_every_implementation_and_both_floors(report):
    assert [(r["m"], r["n"]) for r in report["step"]] == [(300, 7)]
    for row in report["step"]:
        assert row["bytes"] == row["m"] * row["n"] * 4
        for name in ("manual", "function", "autograd"):
            assert row[f"{name}_ms"] > 0
            ratio = row[f"{name}_ms"] / row["two_read_floor_ms"]
            assert row[f"{name}_vs_floor"] == pytest.approx(ratio, rel=1e-12, abs=0)
        ratio = row["manual_ms"] / row["autograd_ms"]
        assert row["manual_vs_autograd"] == pytest.approx(ratio, rel=1e-12, abs=0)
        assert row["copy_GBps"] > 0 and row["one_read_ms"] > 0
        # compile: true, timed beside them; its compile is what its first step took
        ratio = row["manual (compiled)_ms"] / row["one_read_ms"]
        assert row["compiled_vs_one_read"] == pytest.approx(ratio, rel=1e-12, abs=0)
        saved = (row["manual_ms"] - row["manual (compiled)_ms"]) / 1e3
        pays = row["compile_s"] / saved if saved > 0 else math.inf
        assert row["compile_s"] > 0 and row["compile_pays_after_steps"] == pytest.approx(pays)


@pytest.mark.slow
def test_lr_batch_rows_compare_k_rates_with_one(report):
    rows = report["lr_batch"]
    kinds = {(r["model"], r["what"].split()[0], r["impl"], r["K"]) for r in rows}
    models = ("logistic-sgd", "softmax10-adam")
    assert kinds == {
        (model, w, i, k)
        for model in models
        for w in ("step", "run")
        for i in ("manual", "function")
        for k in (1, 3)
    }
    assert {(r["model"], r["m"], r["n"]) for r in rows} == {(models[0], 64, 5), (models[1], 60, 4)}
    for row in rows:
        speedup = row["K"] * row["one_ms"] / row["K_at_once_ms"]
        assert row["speedup_per_lr"] == pytest.approx(speedup, rel=1e-12, abs=0)


@pytest.mark.slow
def test_sharpness_rows_time_a_run_measured_at_the_default_cadence_against_one_not(report):
    (row,) = report["sharpness"]
    assert (row["model"], row["m"], row["n"], row["K"], row["steps"]) == (
        "logistic-sgd",
        80,
        5,
        3,
        60,
    )
    assert (row["every"], row["iterations"]) == (25, 5)
    assert row["on_vs_off"] == row["on_ms"] / row["off_ms"] and row["off_ms"] > 0
    assert "measured every 25 steps" in bench_report.markdown(report)
    assert "sharpness/on_vs_off/logistic-sgd" in bench_report.metrics(report)


@pytest.mark.slow
def test_minibatch_rows_time_the_loop_s_batches_against_their_own_rows_and_a_dataloader(report):
    for row, b in zip(report["minibatch"], (16, 64), strict=True):
        assert (row["m"], row["n"], row["batch"]) == (200, 5, b)
        assert min(row["picked_ms"], row["alone_ms"], row["loader_ms"]) > 0
        assert row["picked_vs_alone"] == row["picked_ms"] / row["alone_ms"]
        assert row["loader_vs_picked"] == row["loader_ms"] / row["picked_ms"]
    table = bench_report.markdown(report)
    assert "A manual mini-batch step, batches of 200 × 5" in table


@pytest.mark.slow
def test_tracking_compares_with_the_floor_and_the_naive_loop(report):
    t = report["tracking"]
    assert t["floor_ms"] > 0 and t["ours_ms"] > 0 and t["naive_ms_per_point"] > 0
    assert 0 < t["handover_ms"] < t["ours_ms"]  # a writer takes the run off the training's hands
    assert t["ours_vs_floor"] == pytest.approx(t["ours_ms"] / t["floor_ms"], rel=1e-12, abs=0)
    # The naive estimate is the floor plus one log_metric per value of the 12-series history;
    # ours charts 6 curves and 2 log10 checks of 1,001 steps at 200 points, the rest at 2, and
    # the sharpness and lr times it at their 41 measurements (every 25 steps).
    assert "10092 values; 1690 points charted, max_metric_points=200" in t["run"]
    expected = t["floor_ms"] + 10092 * t["naive_ms_per_point"]
    assert t["naive_ms_estimated"] == pytest.approx(expected, rel=1e-12, abs=0)
    sweep = report["sweep"]
    assert sweep["runs"] == 12 and 0 < sweep["train_seconds"] < sweep["seconds"]
    share = (sweep["seconds"] - sweep["train_seconds"]) / sweep["seconds"]
    assert sweep["tracking_share"] == pytest.approx(share, rel=1e-12, abs=0)


@pytest.mark.slow  # two fresh processes, each importing torch and MLflow: 17 s
def test_memory_rows_are_fresh_processes_keeping_what_the_limit_allows():
    """Each step count ran in its own process, trained and recorded 8 runs, and kept the rows
    max_trajectory_values allows: 2·(20 + 1) values a row, 2,000 a run."""
    spec = {"n_samples": 200, "n_features": 20, "steps": [20, 200]}
    rows = bench.memory_by_steps("cpu", spec, max_values=2000)
    first, second = rows
    assert (first["steps"], first["kept_rows"], first["trajectory_every"]) == (20, 21, 1)
    assert (second["steps"], second["trajectory_every"]) == (200, 5)  # ⌈201 · 42 / 2000⌉
    assert second["kept_rows"] == 41  # 0, 5, …, 200
    assert first["peak_rss_mb"] > 100 and second["peak_vs_first"] == pytest.approx(
        second["peak_rss_mb"] / first["peak_rss_mb"], rel=1e-12, abs=0
    )
    # 42 parameter values and 12 metrics (the checks and the sharpness included) and the
    # finite flag a row
    assert second["every_step_buffer_mb"] == pytest.approx(201 * (42 + 13) * 8 * 4 / 2**20)
    assert "| 200 | 41 (5) |" in "\n".join(bench_report._memory_table(rows))


@pytest.mark.slow
def test_writes_json_markdown_and_an_mlflow_run(report, tmp_path):
    uri = f"sqlite:///{tmp_path / 'bench.db'}"
    path = bench_report.write(report, tmp_path / "out", Tracker(uri))
    assert path.name == "bench.json"
    assert json.loads(path.read_text())["step"][0]["m"] == 300
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "| 300 × 7 |" in table and "| step | manual | 64 × 5 | 3 |" in table
    assert "ours / floor" in table and "A whole sweep (quick.yaml, 12 runs, CPU)" in table
    client = MlflowClient(uri)
    (found,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert found.info.status == "FINISHED" and found.data.tags["kind"] == "bench"
    metrics = found.data.metrics
    assert math.isfinite(metrics["tracking/ours_vs_floor"])
    assert (
        "lr_batch/softmax10-adam/manual/step/60x4/K3" in metrics
        and "minibatch/picked_vs_alone/b16" in metrics
    )
    assert {a.path for a in client.list_artifacts(found.info.run_id)} == {"bench.json", "bench.md"}


def test_bad_device_is_one_line_and_exit_2(capsys, tmp_path):
    assert run(["bench", "--device", "tpu", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown device 'tpu'") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # 18 s of make test
def test_large_cpu_data_is_also_timed_unblocked():
    """Above the blocking threshold (a parameter here) the manual step is timed both ways."""
    timer = bench.Timer(CPU, repeats=1, min_s=0)
    (row,) = bench.step_times(CPU, [(300, 7)], timer, blocked_above=1000)
    assert row["manual (unblocked)_ms"] > 0 and row["manual_ms"] > 0
    (below,) = bench.step_times(CPU, [(300, 7)], timer)
    assert "manual (unblocked)_ms" not in below
