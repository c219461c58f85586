"""Wrong programs the suite must catch (`make mutants`; slow, so in `make test-all` and CI).

Each mutant is one small, named change to a copy of the packages. The fast tests run against
the copy (stopping at the first failure) and must fail; a mutant they let through fails here,
and so does a mutant whose line of code is gone (update it with the code). The unchanged copy
must pass the same tests, so a failure is the mutant's doing, not the harness's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
# The quick tests that look at what each mutant breaks, the quickest to fail first.
SUITE = [
    "tests/experiments/test_attempts.py",
    "tests/experiments/test_logged_rows.py",
    "tests/manual_models",
    "tests/experiments/test_loop.py",
    "tests/experiments/test_minibatch.py",
]
MUTANTS = {
    "a resumed sweep's first attempt of a grid point kept in its records": (
        "experiments/records.py",
        'return runs.sort_values("start_time").drop_duplicates("config_key", keep="last")',
        'return runs.sort_values("start_time").drop_duplicates("config_key", keep="first")',
    ),
    "a resumed sweep's first attempt of a grid point kept by the analysis": (
        "analysis/runs.py",
        'kept = kept.drop_duplicates("config_key", keep="last").drop(columns="_finished")',
        'kept = kept.drop_duplicates("config_key", keep="first").drop(columns="_finished")',
    ),
    "validation loss scored on the training data": (
        "experiments/loop.py",
        '"val/loss": self.model.loss(self.X_val, self.y_val, check=False)',
        '"val/loss": self.model.loss(self.X, self.y, check=False)',
    ),
    "validation accuracy scored on the training data": (
        "experiments/loop.py",
        '"val/accuracy": self.model.accuracy(self.model.logits(self.X_val), self.y_val)',
        '"val/accuracy": self.model.accuracy(self.model.logits(self.X), self.y)',
    ),
    "every epoch the same order of the batches": (
        "experiments/batches.py",
        "order = torch.randperm(self.n, generator=self.generator)",
        "order = torch.randperm(self.n, generator=torch.Generator().manual_seed(0))",
    ),
    "a mini-batch step's gradient checked on the whole set": (
        "experiments/loop.py",
        "values.update(self.check(theta, grads, X, y) if checked else self.unchecked())\n"
        '        return values, theta, grads, values["train/batch_loss"]',
        "values.update(self.check(theta, grads, self.X, self.y) if checked else self.unchecked())\n"
        '        return values, theta, grads, values["train/batch_loss"]',
    ),
    "the whole training loss scored on its first 64 rows": (
        "experiments/loop.py",
        'return {"train/loss": whole.loss, "train/accuracy": accuracy, **self.on_validation()}',
        'return {"train/loss": self.model.loss(self.X[:64], self.y[:64], check=False), '
        '"train/accuracy": accuracy, **self.on_validation()}',
    ),
    "the loss recorded after the step": (
        "experiments/loop.py",
        'values["train/loss"], z = model.train_step(X, y, check=False)',
        "_, z = model.train_step(X, y, check=False)\n"
        '            values["train/loss"] = model.loss(X, y, check=False)',
    ),
    "softmax cross-entropy as log(1 + Σe) instead of log1p": (
        "manual_models/softmax.py",
        "torch.log1p(e.sum(1))",
        "torch.log(1 + e.sum(1))",
    ),
    "the binary loss as log(1 + e^−|z|) instead of softplus": (
        "manual_models/logistic.py",
        "F.softplus(-z.abs())",
        "torch.log(1 + torch.exp(-z.abs()))",
    ),
    "the Hessian-vector product without its 1/m": (
        "manual_models/logistic.py",
        "return X.T @ su / X.shape[0] + weight_decay * v_w, su.mean(0)",
        "return X.T @ su + weight_decay * v_w, su.mean(0)",
    ),
    "the Hessian-vector product with the bias row dropped": (
        "manual_models/logistic.py",
        "su = weigh(curvatures(z), weights) * (X @ v_w + v_b)",
        "su = weigh(curvatures(z), weights) * (X @ v_w)",
    ),
    "the curvature ŷ² for ŷ(1 − ŷ)": (
        "manual_models/logistic.py",
        "return torch.sigmoid(z) * torch.sigmoid(-z)",
        "return torch.sigmoid(z) ** 2",
    ),
    "a gradient 1 + 1e-9 too large": (
        "manual_models/logistic.py",
        'return {"dw": X.T @ residual / X.shape[0], "db": residual.mean(0)}',
        'return {"dw": (1 + 1e-9) * X.T @ residual / X.shape[0], "db": residual.mean(0)}',
    ),
    # The three wrong programs of a hand-derived network (examples/mlp.py): check_model
    # must catch each (tests/manual_models/test_mlp.py).
    "the network's first weight gradient transposed": (
        "examples/mlp.py",
        '"dW1": torch.einsum("mn,mh...->nh...", X, dA),',
        '"dW1": torch.einsum("mn,mh...->hn...", X, dA),',
    ),
    "the network's gradient without its 1/m": (
        "examples/mlp.py",
        "dZ = (torch.softmax(Z, dim=1) - one_hot(y, Z)) / m\n",
        "dZ = torch.softmax(Z, dim=1) - one_hot(y, Z)\n",
    ),
    "the network's ReLU mask off by one unit": (
        "examples/mlp.py",
        "return (A > 0).to(A.dtype)",
        "return (A > 0).roll(1, dims=1).to(A.dtype)",
    ),
}


def copy_of_the_packages(folder: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("manual_models", "experiments", "analysis", "examples", "tests"):
        shutil.copytree(ROOT / name, folder / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", folder)
    return folder


def run_suite(copy: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-m", "not slow and not e2e and not cluster and not gpu", *SUITE]
    env = {**os.environ, "PYTHONPATH": str(copy)}  # the copy's packages, not the installed ones
    return subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=1200)


def test_the_unchanged_copy_passes(tmp_path):
    done = run_suite(copy_of_the_packages(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:]


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_suite_catches(name, tmp_path):
    path, old, new = MUTANTS[name]
    copy = copy_of_the_packages(tmp_path)
    source = copy / path
    text = source.read_text()
    assert text.count(old) == 1, f"{name}: the line it changes is not in {path} any more"
    source.write_text(text.replace(old, new))
    done = run_suite(copy)
    assert done.returncode == 1, f"{name} was not caught:\n{done.stdout[-3000:]}"
    caught = re.search(r"^FAILED (\S+)", done.stdout, re.MULTILINE)
    assert caught, done.stdout[-3000:]  # a failing test, not a crash of the harness
    print(f"{name}: caught by {caught.group(1)}")
