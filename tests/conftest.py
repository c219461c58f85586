"""Shared fixtures: devices to run on, the standardised breast_cancer data, a temporary store,
the exact losses; and the switches that make a skip a failure where a machine promises more:
REQUIRE_GPU=1 (`make test-gpu`) for the `gpu` tests, REQUIRE_CLUSTER=1 for Dask and the
cluster, REQUIRE_E2E=1 for the browser."""

from __future__ import annotations

import os
import socket
from types import SimpleNamespace

import mpmath
import pytest
import torch
from hypothesis import settings

from experiments import datasets

settings.register_profile("default", deadline=None, max_examples=100, derandomize=True)
settings.register_profile("thorough", deadline=None, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
DEVICES = [
    pytest.param("cpu", id="cpu"),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, CUDA]),
]


# What each switch promises: a test with this marker must run, not skip.
REQUIRED = {"gpu": "REQUIRE_GPU", "cluster": "REQUIRE_CLUSTER", "e2e": "REQUIRE_E2E"}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under REQUIRE_GPU=1 a skipped `gpu` test is a failure (likewise for the cluster and the
    browser): `make test-gpu` on a machine whose CUDA is broken fails instead of passing."""
    outcome = yield
    report = outcome.get_result()
    if not report.skipped:
        return
    for marker, switch in REQUIRED.items():
        if os.environ.get(switch) == "1" and item.get_closest_marker(marker):
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else ""
            reason = reason.removeprefix("Skipped: ")
            report.outcome = "failed"
            report.longrepr = f"{switch}=1, but this {marker} test was skipped: {reason}"


@pytest.fixture
def distributed():
    """Dask's distributed, which the `cluster` extra installs: skipped without it, a failure
    under REQUIRE_CLUSTER=1."""
    if os.environ.get("REQUIRE_CLUSTER") == "1":
        import distributed as module  # a missing Dask is an ImportError: the test fails

        return module
    return pytest.importorskip("distributed")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test that takes ``device`` runs on the CPU, and on CUDA where there is one."""
    return request.param


@pytest.fixture(scope="session")
def breast_cancer_np():
    """Standardised breast_cancer (all 569 rows), float64 NumPy arrays."""
    X, y = datasets.load("breast_cancer")
    return (X - X.mean(axis=0)) / X.std(axis=0), y


@pytest.fixture
def breast_cancer(breast_cancer_np, device):
    """``(X, y)`` as float64 tensors on the test's device; ``.float()`` them for float32."""
    X, y = breast_cancer_np
    return (
        torch.tensor(X, dtype=torch.float64, device=device),
        torch.tensor(y, dtype=torch.float64, device=device),
    )


@pytest.fixture(autouse=True)
def _temporary_mlflow_store(tmp_path, monkeypatch):
    """No test may write into the repository's own ``mlflow.db``."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture(scope="session")
def free_port():
    """A function giving a loopback TCP port nothing listens on (for servers, and for a
    scheduler that must not answer)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


def exact_bce(z: torch.Tensor, y: torch.Tensor) -> float:
    """mean(softplus(z) − y z) at these float64 logits, in 60-digit arithmetic: the yardstick
    for a loss however small (the identity softplus(z) − yz = max(z, 0) − yz + log1p(e^−|z|)
    holds exactly; no float64 rounding enters)."""
    with mpmath.workdps(60):
        terms = [
            max(zi, 0) - yi * zi + mpmath.log1p(mpmath.exp(-abs(zi)))
            for zi, yi in zip(map(mpmath.mpf, z.tolist()), map(mpmath.mpf, y.tolist()), strict=True)
        ]
        return float(mpmath.fsum(terms) / len(terms))


def exact_cross_entropy(Z: torch.Tensor, y: torch.Tensor) -> float:
    """mean(log Σ_k e^{Z_k} − Z_y) at these float64 logits, in 60-digit arithmetic."""
    with mpmath.workdps(60):
        terms = []
        for row, label in zip(Z.tolist(), y.tolist(), strict=True):
            row = [mpmath.mpf(v) for v in row]
            at = max(range(len(row)), key=row.__getitem__)
            rest = mpmath.fsum(mpmath.exp(v - row[at]) for k, v in enumerate(row) if k != at)
            terms.append(row[at] - row[label] + mpmath.log1p(rest))
        return float(mpmath.fsum(terms) / len(terms))


@pytest.fixture(scope="session")
def exact():
    """The exact losses, to hold a loss to a relative bound without an absolute slack."""
    return SimpleNamespace(bce=exact_bce, cross_entropy=exact_cross_entropy)


CURVED_SWEEP = """
name: curved
datasets: [wine, moons]
impls: [manual, autograd]
lrs: [0.3, 3.0, 30.0]
devices: [cpu]
dtype: float64
steps: 60
sharpness_every: 10
"""


@pytest.fixture(scope="session")
def curved_sweep(tmp_path_factory):
    """(sweep, uri): a float64 sweep measuring its sharpness every 10 of 60 steps, through the
    real CLI, on wine (separable) and moons (not), at rates on both sides of 2/L: what the
    sharpness, stability and implicit-bias tests read."""
    from analysis.runs import load_sweep
    from experiments.cli import run as experiments_cli

    folder = tmp_path_factory.mktemp("curved")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    (folder / "curved.yaml").write_text(CURVED_SWEEP)
    command = ["sweep", str(folder / "curved.yaml"), "--tracking-uri", uri, "--quiet"]
    assert experiments_cli(command) == 0
    return load_sweep("curved", uri), uri
