"""Every user mistake: one line on stderr naming the problem, exit code 2, nothing written."""

from __future__ import annotations

import pytest
import torch

from experiments.cli import CONFIGS, Integer, run

QUICK = str(CONFIGS / "quick.yaml")


def bad_file(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    return str(path)


CASES = {
    "unknown dataset": (["--set", "datasets=[mnist]"], "unknown dataset 'mnist'; choose one of"),
    "unknown dataset param": (
        ["--set", "datasets=[{name: iris, noise: 1}]"], "its parameters: classes"
    ),
    "unknown impl": (["--set", "impls=[numpy]"], "'manual', 'autograd' or 'function'"),
    "unknown device": (["--set", "devices=[tpu]"], "'auto', 'cpu', 'cuda' or 'mps'"),
    "unknown dtype": (["--set", "dtype=float16"], "'float32' or 'float64'"),
    "negative lr": (["--set", "lrs=[0.1,-1]"], "lrs.1: Input should be greater than 0"),
    "zero lr": (["--set", "lrs=[0]"], "greater than 0"),
    "nan lr": (["--set", "lrs=[.nan]"], "finite number"),
    "inf lr": (["--set", "lrs=[.inf]"], "finite number"),
    "lr not a number": (["--set", "lrs=[fast]"], "valid number"),
    "zero steps": (["--set", "steps=0"], "steps: Input should be greater than or equal to 1"),
    "empty grid": (["--set", "lrs=[]"], "lrs: List should have at least 1 item"),
    "repeated lr": (["--set", "lrs=[0.1,0.1]"], "lrs: has a repeated entry"),
    "unknown key": (["--set", "lr=0.1"], "unknown config key 'lr'; valid keys:"),
    "bad --set": (["--set", "steps"], "--set takes KEY=VALUE"),
    "bad tracking uri": (["--tracking-uri", "ftp://nowhere"], "unsupported tracking URI"),
    "no store folder": (["--tracking-uri", "sqlite:////nonexistent/dir/m.db"], "does not exist"),
    "server down": (["--tracking-uri", "http://127.0.0.1:9"], "cannot be reached"),
    "unwritable store": (["--tracking-uri", "sqlite:////proc/m.db"], "cannot be written"),
    "zero workers": (["--workers", "0"], "--workers"),
    "fractional workers": (["--workers", "1.5"], "'1.5' is not an integer"),
    "fractional steps": (["--set", "steps=1.5"], "a number with a fractional part"),
    "fractional steps as text": (["--set", "steps='1.5e0'"], "steps: Input should be a valid"),
    "steps true": (["--set", "steps=true"], "steps: takes an integer, got true"),
    "fractional n_samples": (["--set", "datasets=[{name: moons, n_samples: 2.5}]"], "integer"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_bad_input(case, tmp_path, capsys):
    extra, message = CASES[case]
    if "--tracking-uri" not in extra:
        extra = [*extra, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]
    assert run(["sweep", QUICK, "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert list(tmp_path.iterdir()) == []  # no store, no artifacts


@pytest.mark.parametrize("value", ["soon", "0", "-5", "inf", "nan"])
def test_a_bad_lease_length_is_one_line_and_nothing_written(value, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXPERIMENTS_LEASE_SECONDS", value)
    assert run(["sweep", QUICK, "--quiet", "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: EXPERIMENTS_LEASE_SECONDS takes seconds > 0, got {value!r}\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: [unclosed", "malformed YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("name: x\nlrs: [0.1]\nimpls: [manual]\n", "missing config key 'datasets'"),
    ],
)
def test_sweep_bad_file(text, message, tmp_path, capsys):
    assert (
        run(["sweep", bad_file(tmp_path, text), "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"])
        == 2
    )
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.db").exists()


def test_missing_config_file(tmp_path, capsys):
    assert run(["sweep", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_absent_device(tmp_path, capsys):
    assert (
        run(
            [
                "sweep",
                QUICK,
                "--set",
                "devices=[cuda]",
                "--tracking-uri",
                f"sqlite:///{tmp_path / 'm.db'}",
            ]
        )
        == 2
    )
    assert "device 'cuda' is not available here; present: cpu" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--lr", "-0.1"], "lr: Input should be greater than 0"),
        (["--lr", "abc"], "valid number"),
        (["--lr", "0.1", "--steps", "-3"], "steps"),
        (["--lr", "0.1", "--device", "gpu"], "'cpu', 'cuda' or 'mps'"),
        (["--lr", "0.1", "--nonsense", "1"], "No such option"),
        (["--lr", "nan"], "finite number"),
        (["--lr", "inf"], "finite number"),
        (["--lr", "0.1", "--dtype", "float16"], "'float32' or 'float64'"),
        (["--lr", "0.1", "--steps", "0"], "steps"),
        (
            ["--lr", "0.1", "--max-trajectory-values", "1.5"],
            "max_trajectory_values: Input should be a valid integer",
        ),
        (["--lr", "1e-1", "--seed", "0.5"], "seed: Input should be a valid integer"),
        (
            ["--lr", "0.1", "--batch-size", "0"],
            "batch_size: Input should be greater than or equal to 1",
        ),
        (["--lr", "0.1", "--batch-size", "8.5"], "batch_size: Input should be a valid integer"),
        (["--lr", "0.1", "--steps", "5", "--epochs", "2"], "give --steps or --epochs, not both"),
        (["--lr", "0.1", "--epochs", "0"], "epochs: Input should be greater than or equal to 1"),
    ],
)
def test_train_bad_input(options, message, tmp_path, capsys):
    args = ["train", "--dataset", "iris", "--impl", "manual", *options]
    assert run([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []


def test_store_that_is_not_a_database(tmp_path, capsys):
    garbage = tmp_path / "notes.db"
    garbage.write_text("not a database")
    assert run(["sweep", QUICK, "--tracking-uri", f"sqlite:///{garbage}"]) == 2
    assert "cannot be written: file is not a database" in capsys.readouterr().err
    assert garbage.read_text() == "not a database"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--dataset", "iris", "--impl", "jax"], "'manual', 'autograd' or 'function'"),
        (["--impl", "manual"], "missing option --dataset"),
        (["--dataset", "{name: iris"], "--dataset: '{name: iris' is not a YAML value"),
    ],
)
def test_train_bad_names(options, message, tmp_path, capsys):
    args = ["train", "--impl", "manual", "--lr", "0.1", *options]
    assert run([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_numbers_as_typed_on_the_command_line(tmp_path, capsys):
    """What the help shows ([1e7]) is what an option takes: 1e8, 1e1, 2_0 and 1e-1 run."""
    options = ["--max-trajectory-values", "1e8", "--steps", "2_0", "--lr", "1e-1", "--seed", "1e0"]
    args = ["train", "--dataset", "iris", "--impl", "manual", *options]
    assert run([*args, "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"]) == 0
    assert "1 finished" in capsys.readouterr().out
    workers = Integer(min=1)
    assert [workers.convert(v, None, None) for v in ("4", "1e1", "1_0", 3)] == [4, 10, 10, 3]
