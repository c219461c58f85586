"""Mini-batches: torch.utils.data's batches, the same for every run of a pair, the post's loop
step for step, the check on every batch, and the whole sets measured at a cadence."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, SubsetRandomSampler

from analysis import trajectory_gap
from experiments import batches, loop, lr_batch
from experiments.batches import Batches
from experiments.config import ConfigError, RunConfig, SweepConfig, build
from experiments.data import run_data
from experiments.lr_batch import build as build_model
from experiments.training import train_pass
from manual_models import make_model

BASE = {"dataset": "digits", "dtype": "float64", "batch_size": 32, "steps": 120}


def sampler(n, size, seed, drop_last):
    """What torch.utils.data draws: one order an epoch from a generator seeded once."""
    order = SubsetRandomSampler(range(n), generator=torch.Generator().manual_seed(seed))
    return BatchSampler(order, size, drop_last)


@pytest.mark.parametrize(("n", "size", "drop_last"), [(100, 32, False), (100, 32, True),
                         (96, 32, False), (7, 2, False), (7, 6, True)])  # fmt: skip
def test_the_batches_are_torch_utils_data_s_epoch_after_epoch(n, size, drop_last):
    drawn = Batches(n, size, seed=3, drop_last=drop_last)
    expected = sampler(n, size, 3, drop_last)
    steps = [list(b) for _ in range(3) for b in expected]  # three epochs of the same sampler
    assert drawn.per_epoch == len(expected) == batches.per_epoch(n, size, drop_last)
    assert [drawn.at(t).tolist() for t in range(len(steps))] == steps
    if drop_last:
        assert {len(s) for s in steps} == {size}  # the leftover samples sit each epoch out
    else:
        assert sorted(i for s in steps[: drawn.per_epoch] for i in s) == list(range(n))


def test_the_whole_set_is_no_batches_and_bad_sizes_are_refused():
    assert batches.batches(100, None, seed=0) is None
    assert batches.batches(100, 100, seed=0) is None and batches.batches(100, 500, seed=0) is None
    assert batches.per_epoch(100, None) == batches.per_epoch(100, 100) == 1
    with pytest.raises(ValueError, match="batch_size"):
        Batches(100, 0, seed=0)
    drawn = Batches(10, 3, seed=0)
    drawn.at(5)
    with pytest.raises(ValueError, match="already passed"):
        drawn.at(0)


def configs(**overrides):
    return {impl: RunConfig(impl=impl, lr=0.5, **{**BASE, **overrides}) for impl in IMPLS}


IMPLS = ("manual", "function", "autograd")


def test_paired_runs_and_every_rate_of_a_pass_use_the_same_batch_indices(monkeypatch):
    """Every index tensor each loop trains on, recorded as the loop asks for it."""
    used: dict[Batches, list[list[int]]] = {}
    at = Batches.at

    def spy(self, t):
        rows = at(self, t)
        used.setdefault(self, []).append(rows.tolist())
        return rows

    monkeypatch.setattr(Batches, "at", spy)
    points = [RunConfig(impl=impl, lr=lr, **BASE) for impl in IMPLS for lr in (0.1, 1.0)]
    results = [r for p in (points[:2], points[2:4], points[4:5], points[5:]) for r in train_pass(p)]
    assert len(used) == 4  # manual (2 rates, one pass), function (the same), autograd × 2
    first, *others = used.values()
    assert len(first) == BASE["steps"] and all(seen == first for seen in others)
    assert len({r.batching["batch_digest"] for r in results}) == 1
    assert results[0].batching == {
        "batches_per_epoch": 43, "last_batch": 3, "eval_every_resolved": 43,
        "batch_digest": results[0].batching["batch_digest"],
    }  # fmt: skip  # digits' 1,347 training rows: 42 batches of 32 and one of 3
    other_seed = train_pass([RunConfig(impl="manual", lr=0.1, **{**BASE, "seed": 1})])[0]
    assert other_seed.batching["batch_digest"] != results[0].batching["batch_digest"]


def test_the_autograd_run_is_the_post_s_loop_written_out():
    """``for epoch: for batch: zero_grad; outputs = model(inputs); loss = criterion(outputs,
    labels); loss.backward(); optimizer.step()`` with nn.Linear, torch.optim and
    torch.utils.data's batches, from the run's start: the run's every parameter row."""
    config = configs()["autograd"]
    run, data = train_pass([config])[0].history, run_data(config)
    start = make_model("autograd", 64, 0.5, dtype=torch.float64, seed=0)
    model = nn.Linear(64, 1, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(start.linear.weight), model.bias.copy_(start.linear.bias)
    criterion, optimizer = nn.BCEWithLogitsLoss(), torch.optim.SGD(model.parameters(), lr=0.5)
    steps, loader = 0, sampler(len(data.X), 32, config.seed, False)  # one generator throughout
    for epoch in range(math.ceil(BASE["steps"] / 43)):
        for batch in loader:
            if steps == BASE["steps"]:
                break
            inputs, labels = data.X[batch], data.y[batch]
            optimizer.zero_grad()
            outputs = model(inputs).squeeze(-1)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            steps += 1
            assert loss.item() == pytest.approx(float(run.loss[steps - 1]), rel=1e-12), epoch
    assert steps == BASE["steps"]
    torch.testing.assert_close(run.w[-1], model.weight.detach()[0], rtol=0, atol=1e-13)
    torch.testing.assert_close(run.b[-1], model.bias.detach()[0], rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dataset", ["digits", {"name": "digits", "classes": "all"}],
                         ids=["logistic", "softmax"])  # fmt: skip
def test_manual_and_function_agree_with_autograd_on_every_batch(dataset, dtype):
    new = configs(dataset=dataset, dtype=dtype)
    runs = {impl: train_pass([c])[0].history for impl, c in new.items()}
    for impl in ("manual", "function"):
        gap = trajectory_gap(runs[impl], runs["autograd"])
        assert gap.agrees(getattr(torch, dtype)), (impl, gap)
        checks = runs[impl].metrics["check/grad_err_vs_terms"]
        assert not checks.isnan().any()  # every batch checked, at the same tolerance
        assert float(checks.max()) <= (1e-14 if dtype == "float64" else 1e-5), impl
    ref = runs["autograd"]
    assert ref.loss[-1] < ref.loss[0] / 2  # the runs went somewhere


def test_a_wrong_gradient_shows_on_the_batches(monkeypatch):
    import manual_models.logistic

    correct = manual_models.logistic.bce_gradients
    monkeypatch.setattr(
        manual_models.logistic,
        "bce_gradients",
        lambda *a: {k: 1.001 * v for k, v in correct(*a).items()},
    )
    run = train_pass([configs()["manual"]])[0].history
    assert float(run.metrics["check/grad_err_vs_terms"].min()) > 1e-5


def test_the_whole_sets_are_measured_at_the_cadence_and_match_the_kept_parameters():
    config = configs(eval_every=25, steps=100)["manual"]
    result = train_pass([config])[0]
    history, from_data = result.history, run_data(config)
    measured = [0, 25, 50, 75, 100]
    for name in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        values = history.metrics[name]
        assert (~values.isnan()).nonzero().flatten().tolist() == measured, name
    deviation = history.metrics["grad/batch_dev_sq"]
    assert (~deviation.isnan()).nonzero().flatten().tolist() == measured[:-1]  # no step at 100
    model = make_model("manual", 64, 0.5, dtype=torch.float64)
    for t in measured:
        model.set_parameters(history.w[t], history.b[t])
        full = model.evaluate(from_data.X, from_data.y)
        assert float(history.metrics["train/loss"][t]) == pytest.approx(float(full.loss), 1e-12)
        val = float(model.loss(from_data.X_val, from_data.y_val))
        assert float(history.metrics["val/loss"][t]) == pytest.approx(val, rel=1e-12)
        if t < 100:  # the batch gradient (the row's dw, db) against the whole set's
            parts = [history.dw[t] - full.grads["dw"], history.db[t] - full.grads["db"]]
            diff = torch.cat([p.flatten() for p in parts])
            assert float(deviation[t]) == pytest.approx(float(diff.square().sum()), rel=1e-10)
    # The last row takes no step: its "batch" is the whole set.
    assert history.loss[-1] == history.metrics["train/loss"][-1]
    assert result.batching["eval_every_resolved"] == 25


def test_k_rates_in_one_pass_are_the_rates_trained_alone_on_the_same_batches():
    rates = [0.01, 0.05, 0.3]  # (at 3.0 Adam's path is chaotic: ulps grow to 1e-10)
    points = [RunConfig(impl="manual", lr=lr, optimizer="adam", **BASE) for lr in rates]
    together = train_pass(points)
    for point, shared in zip(points, together, strict=True):
        alone = train_pass([point])[0]
        assert shared.lr_batch == 3 and alone.lr_batch == 1
        gap = trajectory_gap(shared.history, alone.history)
        assert gap.agrees(torch.float64), (point.lr, gap)


def test_drop_last_leaves_the_small_batch_out_and_says_so():
    result = train_pass([configs(drop_last=True, steps=90)["manual"]])[0]
    assert result.batching["batches_per_epoch"] == 42
    assert result.batching["last_batch"] == "dropped"
    assert result.history.steps == 90


def test_epochs_set_the_steps_per_dataset():
    sweep = SweepConfig(
        datasets=["digits", "iris"], impls=["manual"], lrs=[0.1], devices=["cpu"],
        batch_sizes=[32], epochs=3,
    )  # fmt: skip
    digits, iris = sweep.grid()
    assert (digits.steps, iris.steps) == (3 * 43, 3 * 3)  # 1,347 and 75 training rows
    full = SweepConfig(datasets=["iris"], impls=["manual"], lrs=[0.1], devices=["cpu"], epochs=7)
    assert full.grid()[0].steps == 7  # without batch_size an epoch is one step
    assert SweepConfig.of_run(digits, "x").grid() == [digits]  # `train` resolves them again
    assert "--epochs 3" in digits.command() and "--steps" not in digits.command()
    with pytest.raises(ConfigError, match="give steps or epochs, not both"):
        build(SweepConfig, {"datasets": ["iris"], "impls": ["manual"], "lrs": [0.1],
                            "steps": 10, "epochs": 2})  # fmt: skip


def test_the_full_batch_default_is_unchanged():
    """batch_size left out, or the training set's size or more: full-batch descent, the same
    run bit for bit, and the same key as before the key existed."""
    plain = RunConfig(impl="manual", lr=0.5, dataset="iris", steps=50)
    assert plain.key == RunConfig(impl="manual", lr=0.5, dataset="iris", steps=50,
                                  drop_last=False, eval_every=None).key  # fmt: skip
    whole = plain.model_copy(update={"batch_size": 10_000})
    a, b = train_pass([plain])[0], train_pass([whole])[0]
    assert a.batching == b.batching == {}
    assert "train/batch_loss" not in a.history.metrics
    for name, values in a.history.metrics.items():
        torch.testing.assert_close(b.history.metrics[name], values, rtol=0, atol=0, equal_nan=True)


def test_a_mini_batch_run_can_diverge_and_is_cut_there():
    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = (X[:, 0] > 0).double()
    model = make_model("manual", 3, 1e308, dtype=torch.float64)
    steps = loop.Loop(model, X, y, 20, batches=Batches(64, 8, seed=0))
    steps.run_to(20)
    history = steps.history().runs()[0]
    assert history.diverged_at is not None and history.steps == history.diverged_at


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("drop_last", [False, True], ids=["small-last-batch", "drop-last"])
@pytest.mark.parametrize("impl, lrs", [("manual", [0.05]), ("function", [0.05]),
                         ("autograd", [0.05]), ("manual", [0.01, 0.05, 0.5])],
                         ids=["manual", "function", "autograd", "manual-3-lrs"])  # fmt: skip
def test_mini_batches_replay_as_graphs_without_host_syncs(impl, lrs, drop_last):
    """Each batch size (and each kind of row) one captured graph, its rows read from a
    buffer: the eager trajectory, and no host sync in any step."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(203, 6, generator=g, dtype=torch.float64).cuda()
    y = torch.randint(0, 3, (203,), generator=g).cuda()
    new = {"n_classes": 3, "device": "cuda", "dtype": torch.float64}

    def run(graphs):
        model = build_model(impl, 6, lrs, **new)
        reference = None if impl == "autograd" else build_model("autograd", 6, lrs, **new)
        drawn = Batches(203, 16, seed=0, drop_last=drop_last, device="cuda")
        inputs = {"X_val": X, "y_val": y, "reference": reference, "cuda_graphs": graphs}
        steps = loop.Loop(model, X, y, 60, batches=drawn, eval_every=5, check_every=2, **inputs)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            steps.run_to(60)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return steps, steps.history()

    (_, eager), (replayed, graphs) = run(False), run(True)
    assert len(replayed.captured) >= (3 if drop_last else 4)  # kinds of rows × batch sizes
    for name, values in eager.metrics.items():
        torch.testing.assert_close(
            graphs.metrics[name], values, rtol=1e-12, atol=1e-15, equal_nan=True, msg=name
        )
    torch.testing.assert_close(graphs.w, eager.w, rtol=1e-12, atol=1e-15)


def test_successive_halving_judges_mini_batch_runs_on_the_whole_sets_at_each_rung():
    """The rungs are measured rows (the whole training and validation sets), and every run of
    a halving pass is its rate trained alone on the same batches, to where it stopped."""
    grid = {"datasets": ["digits"], "impls": ["manual", "autograd"], "lrs": [0.01, 0.1, 1.0, 8.0],
            "devices": ["cpu"], "batch_sizes": [64], "steps": 40, "dtype": "float64"}  # fmt: skip
    config = SweepConfig(**grid, halving=True)
    setting = config.grid()
    searched = train_pass(setting, config.halving)
    alone = [r for group in lr_batch.passes(setting) for r in train_pass(group)]
    ends = [int(r.tags.get("halving_step", 40)) for r in searched]
    assert sorted(set(ends)) == [10, 20, 40]
    for result, reference, end in zip(searched, alone, ends, strict=True):
        history = result.history
        assert history.steps == end and not history.metrics["val/loss"][end].isnan()
        for name, values in history.metrics.items():
            expected = reference.history.metrics[name][: end + 1]
            both = ~expected.isnan() & ~values.isnan()  # the rungs: measured in the pass only
            atol = 1e-14 if name.startswith("check/") else 0
            torch.testing.assert_close(values[both], expected[both], rtol=1e-12, atol=atol)
