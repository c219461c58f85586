"""The switches that turn a skip into a failure: a machine that promises a GPU, a cluster or a
browser and does not have it fails its tests instead of passing them all by skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GPU_TEST = "tests/manual_models/test_models.py::test_interface_and_shapes"


def pytest_run(*args: str, **switches: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **switches}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)


def test_require_gpu_fails_a_gpu_test_that_would_skip():
    plain = pytest_run(GPU_TEST, "-m", "gpu")
    required = pytest_run(GPU_TEST, "-m", "gpu", REQUIRE_GPU="1")
    if torch.cuda.is_available():  # the GPU is there: both run, both pass
        assert plain.returncode == required.returncode == 0, required.stdout
        return
    assert plain.returncode == 0 and "skipped" in plain.stdout, plain.stdout
    assert required.returncode == 1, required.stdout
    assert "REQUIRE_GPU=1, but this gpu test was skipped: needs CUDA" in required.stdout


def test_require_gpu_leaves_the_cpu_tests_alone():
    done = pytest_run(GPU_TEST, "-m", "not gpu", REQUIRE_GPU="1")
    assert done.returncode == 0 and "passed" in done.stdout, done.stdout


def test_require_cluster_fails_without_dask(tmp_path):
    """A `distributed` that cannot be imported: skipped normally, a failure under the switch."""
    (tmp_path / "distributed.py").write_text("raise ModuleNotFoundError('no dask here')\n")
    test = "tests/experiments/test_cluster.py::test_an_unreachable_scheduler_is_one_line_and_nothing_is_written"  # noqa: E501
    path = {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    plain = pytest_run(test, **path)
    required = pytest_run(test, REQUIRE_CLUSTER="1", **path)
    assert plain.returncode == 0 and "skipped" in plain.stdout, plain.stdout
    assert required.returncode == 1 and "no dask here" in required.stdout, required.stdout
