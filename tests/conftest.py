"""Shared fixtures: devices to run on, the standardised breast_cancer data, a temporary store."""

from __future__ import annotations

import os
import socket

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
