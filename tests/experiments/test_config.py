from __future__ import annotations

import shlex

import pytest
from click.testing import CliRunner

from experiments import cli
from experiments.cli import CONFIGS
from experiments.config import (
    ConfigError,
    RunConfig,
    SweepConfig,
    build,
    load_sweep,
    parse_overrides,
)
from experiments.lr_batch import passes

QUICK = CONFIGS / "quick.yaml"


def test_shipped_configs_are_valid_and_default_is_the_main_job():
    for path in CONFIGS.glob("*.yaml"):
        load_sweep(path, {})
    default = load_sweep(CONFIGS / "default.yaml", {})
    assert [d.name for d in default.datasets] == [
        "breast_cancer",
        "iris",
        "wine",
        "digits",
        "moons",
    ]
    assert default.lrs == pytest.approx(
        [0.001, 0.00372759, 0.0138950, 0.0517947, 0.193070, 0.719686, 2.68270, 10.0],
        rel=1e-5,
        abs=0,
    )
    assert default.impls == ["manual", "autograd", "function"] and default.seeds == [0, 1, 2]
    assert default.steps == 1000 and default.devices == ["auto"]
    assert len(default.grid()) == 5 * 8 * 3 * 3 * len(default.resolved_devices())


def test_grid_is_the_product_and_keys_are_stable_and_distinct():
    config = load_sweep(CONFIGS / "quick.yaml", {"seeds": [0, 1]})
    grid = config.grid()
    assert len(grid) == 2 * 3 * 2 * 2
    assert len({g.key for g in grid}) == len(grid)
    assert [g.key for g in grid] == [
        g.key for g in load_sweep(CONFIGS / "quick.yaml", {"seeds": [0, 1]}).grid()
    ]


def test_overrides_are_yaml():
    assert parse_overrides(["lrs=[0.01, 0.1]", "steps=10", "name=x=y"]) == {
        "lrs": [0.01, 0.1],
        "steps": 10,
        "name": "x=y",
    }
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_overrides(["=3"])


def test_dataset_entries_take_parameters():
    config = load_sweep(CONFIGS / "large.yaml", {})
    (dataset,) = config.datasets
    assert dataset.params == {"n_samples": 1_000_000, "n_features": 100}
    assert dataset.label == "synthetic(n_features=100,n_samples=1000000)"
    run = config.grid()[0]
    assert run.params()["dataset.n_samples"] == "1000000"


def test_run_command_reproduces_the_config():
    data = {
        "datasets": [{"name": "moons", "noise": 0.3}],
        "impls": ["function"],
        "lrs": [0.25],
        "devices": ["cpu"],
        "seeds": [4],
        "steps": 50,
    }
    (run,) = build(SweepConfig, data).grid()
    command = run.command()
    assert command == (
        "python -m experiments train --dataset '{name: moons, noise: 0.3}' "
        "--impl function --lr 0.25 --seed 4 --steps 50"
    )


@pytest.mark.parametrize(
    "update",
    [{}, {"optimizer": {"name": "adam", "weight_decay": 0.01}, "max_trajectory_values": "1e3"}],
)
def test_train_reads_the_command_a_run_writes(update, monkeypatch):
    """One list of keys: ``train`` parses RunConfig.command() back into the very run."""
    data = {"dataset": {"name": "moons", "noise": 0.3}, "impl": "manual", "lr": 0.5, "seed": 3}
    run = build(RunConfig, {**data, **update})
    seen = []
    monkeypatch.setattr(cli, "execute", lambda config, *args, **kwargs: seen.append(config))
    words = shlex.split(run.command())[3:]
    done = CliRunner().invoke(cli.main, words)
    assert done.exit_code == 0, done.output
    assert seen[0].grid() == [run]


def test_check_cadence_is_every_step_on_small_data():
    run = RunConfig(dataset="iris", impl="manual", lr=0.1, device="cpu", steps=1000)
    assert run.check_every_for(75 * 4) == 1
    assert run.check_every_for(1_000_000 * 100) == 10
    assert run.model_copy(update={"check_every": 7}).check_every_for(10**9) == 7


def test_logspace_shorthand():
    config = load_sweep(CONFIGS / "quick.yaml", {"lrs": {"logspace": [0.01, 1, 3]}})
    assert config.lrs == [0.01, 0.1, 1.0]
    with pytest.raises(ConfigError, match="logspace"):
        load_sweep(CONFIGS / "quick.yaml", {"lrs": {"logspace": [0, 1, 3]}})


def test_optimizers_key_multiplies_the_grid_and_names_each_rule():
    config = load_sweep(
        CONFIGS / "quick.yaml",
        {
            "optimizers": [
                "sgd",
                {"name": "adam", "weight_decay": 0.01},
                {"name": "sgd", "zero_grad": False},
            ]
        },
    )
    grid = config.grid()
    assert len(grid) == 3 * 12
    labels = {point.optimizer.label for point in grid}
    assert labels == {"sgd", "adam+wd(0.01)", "sgd, no zero_grad"}
    adam = next(p for p in grid if p.optimizer.name == "adam")
    assert adam.params()["optimizer"] == "adam+wd(0.01)"
    assert adam.params()["optimizer.weight_decay"] == "0.01"
    assert "--optimizer '{name: adam, weight_decay: 0.01}'" in adam.command()
    assert "adam+wd(0.01)" in adam.name


def test_keys_recorded_before_the_optimizer_key_are_unchanged():
    """A run or sweep at the default (plain SGD) hashes as it did before the key existed, so
    sweeps recorded then still resume; and as it did when charts got 2 points a series (how
    many points a chart gets is not what a run is)."""
    import hashlib
    import json

    def old_key(dumped):
        dumped = {**dumped, "max_metric_points": 2}  # the default when those sweeps ran
        return hashlib.sha256(json.dumps(dumped, sort_keys=True).encode()).hexdigest()[:16]

    config = load_sweep(CONFIGS / "quick.yaml", {})
    point = config.grid()[0]
    assert config.max_metric_points == 200
    added = {"compile", "batch_size", "drop_last", "eval_every", "epochs", "model"}  # at defaults
    added |= {"sharpness_every", "sharpness_iterations"}  # never in a key
    assert point.key == old_key(point.model_dump(mode="json", exclude={"optimizer", *added}))
    later = {"optimizers", "extend_edges", "halving", "batch_sizes", *added}
    dumped = config.model_dump(mode="json", exclude={"engine", "address", *later})
    assert config.key == old_key(dumped)
    fewer = load_sweep(CONFIGS / "quick.yaml", {"max_metric_points": 7})
    assert fewer.key == config.key and fewer.grid()[0].key == point.key
    other = load_sweep(CONFIGS / "quick.yaml", {"optimizers": ["adam"]})
    assert other.key != config.key and other.grid()[0].key != point.key


def test_multiclass_datasets_are_chosen_by_classes_all_and_batched_like_binary_ones():
    config = load_sweep(
        CONFIGS / "quick.yaml", {"datasets": [{"name": "wine", "classes": "all"}, "wine"]}
    )
    multi, binary = config.datasets
    assert multi.multiclass and not binary.multiclass and multi.label == "wine(classes=all)"
    groups = passes(config.grid())
    sizes = {(g[0].dataset.label, g[0].impl): len(g) for g in groups}
    assert sizes[("wine(classes=all)", "manual")] == 2  # softmax runs' two rates: one pass
    assert sizes[("wine", "manual")] == 2  # and the binary runs' two
    assert sizes[("wine(classes=all)", "autograd")] == 1  # the reference: a run a pass


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"optimizers": ["rmsprop"]}, "optimizers.0.name"),
        ({"optimizers": [{"name": "momentum", "momentum": 0}]}, "needs momentum > 0"),
        ({"optimizers": [{"name": "sgd", "weight_decay": -1}]}, "weight_decay"),
        ({"optimizers": [{"name": "sgd", "lr": 1}]}, "optimizers.0.lr"),
        ({"optimizers": ["sgd", "sgd"]}, "repeated entry"),
        ({"datasets": [{"name": "iris", "classes": "three"}]}, "classes must be one of"),
    ],
)
def test_bad_optimizers_and_classes_are_one_line_errors(override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_sweep(CONFIGS / "quick.yaml", override)
    assert "\n" not in str(err.value)


INTEGER_KEYS = ["steps", "check_every", "max_metric_points", "max_trajectory_values"]


@pytest.mark.parametrize("key", INTEGER_KEYS)
@pytest.mark.parametrize("typed", ["1e7", "10_000_000", "10000000", "1.0e+7", "1E7"])
def test_integers_as_people_type_them(key, typed, tmp_path):
    """The same config, however ten million is written: in a YAML file, or in --set (YAML
    reads 1e7 as text)."""
    expected = load_sweep(QUICK, {key: 10_000_000})
    assert getattr(expected, key) == 10_000_000
    assert load_sweep(QUICK, parse_overrides([f"{key}={typed}"])) == expected
    path = tmp_path / "typed.yaml"
    path.write_text((CONFIGS / "quick.yaml").read_text() + f"\n{key}: {typed}\n")
    assert load_sweep(path, {}).key == expected.key


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("seeds=[1e0, 2_0]", {"seeds": [1, 20]}),
        ("lrs=[1e-3, 1E-1]", {"lrs": [0.001, 0.1]}),
        ("val_fraction=2.5e-1", {"val_fraction": 0.25}),
        ("optimizers=[{name: adam, eps: 1e-7, weight_decay: 1e-3}]", {}),
        ("datasets=[{name: moons, n_samples: 1e3, noise: 3e-1}]", {}),
    ],
)
def test_numbers_in_lists_and_mappings_as_typed(override, expected):
    config = load_sweep(QUICK, parse_overrides([override]))
    for key, value in expected.items():
        assert getattr(config, key) == value
    if override.startswith("optimizers"):
        assert (config.optimizers[0].eps, config.optimizers[0].weight_decay) == (1e-7, 1e-3)
    if override.startswith("datasets"):
        (dataset,) = config.datasets
        assert dataset.params == {"n_samples": 1000, "noise": 0.3}
        assert type(dataset.params["n_samples"]) is int
        # The same run key as when written out in full.
        plain = load_sweep(
            QUICK, parse_overrides(["datasets=[{name: moons, n_samples: 1000, noise: 0.3}]"])
        )
        assert config.key == plain.key


@pytest.mark.parametrize("typed", ["1.5", "1.5e0", "abc", "true"])
def test_a_fractional_or_non_number_integer_is_an_error_naming_the_key(typed):
    with pytest.raises(ConfigError, match=r"^steps: "):
        load_sweep(QUICK, parse_overrides([f"steps={typed}"]))
