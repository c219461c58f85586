"""The switches that turn a skip into a failure: a machine that promises a GPU, a cluster or a
browser and does not have it fails its tests instead of passing them all by skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

# Five pytest sessions, each paying for its imports: 16 s of the fast suite's four minutes.
pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
GPU_TEST = "tests/manual_models/test_models.py::test_interface_and_shapes"
CLUSTER_TEST = (
    "tests/experiments/test_cluster.py::"
    "test_an_unreachable_scheduler_is_one_line_and_nothing_is_written"
)


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """Each pytest session these tests read, started at once (each pays for its imports; side
    by side they share the cores), and its outcome as ``returncode`` and ``stdout``."""
    folder = tmp_path_factory.mktemp("no-dask")
    (folder / "distributed.py").write_text("raise ModuleNotFoundError('no dask here')\n")
    no_dask = {"PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    asked = {
        "gpu": ([GPU_TEST, "-m", "gpu"], {}),
        "gpu required": ([GPU_TEST, "-m", "gpu"], {"REQUIRE_GPU": "1"}),
        "cpu, gpu required": ([GPU_TEST, "-m", "not gpu"], {"REQUIRE_GPU": "1"}),
        "no dask": ([CLUSTER_TEST], no_dask),
        "no dask, cluster required": ([CLUSTER_TEST], {**no_dask, "REQUIRE_CLUSTER": "1"}),
    }
    started = {
        name: subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
            cwd=ROOT,
            env={**os.environ, **switches},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, (args, switches) in asked.items()
    }
    return {
        name: SimpleNamespace(
            stdout=process.communicate(timeout=300)[0], returncode=process.returncode
        )
        for name, process in started.items()
    }


def test_require_gpu_fails_a_gpu_test_that_would_skip(sessions):
    plain, required = sessions["gpu"], sessions["gpu required"]
    if torch.cuda.is_available():  # the GPU is there: both run, both pass
        assert plain.returncode == required.returncode == 0, required.stdout
        return
    assert plain.returncode == 0 and "skipped" in plain.stdout, plain.stdout
    assert required.returncode == 1, required.stdout
    assert "REQUIRE_GPU=1, but this gpu test was skipped: needs CUDA" in required.stdout


def test_require_gpu_leaves_the_cpu_tests_alone(sessions):
    done = sessions["cpu, gpu required"]
    assert done.returncode == 0 and "passed" in done.stdout, done.stdout


def test_require_cluster_fails_without_dask(sessions):
    """A `distributed` that cannot be imported: skipped normally, a failure under the switch."""
    plain, required = sessions["no dask"], sessions["no dask, cluster required"]
    assert plain.returncode == 0 and "skipped" in plain.stdout, plain.stdout
    assert required.returncode == 1 and "no dask here" in required.stdout, required.stdout
