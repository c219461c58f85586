"""The same sweep on a Dask cluster: one code path, the same runs, the same numbers.

Fast tests (in ``make test``) run a ``LocalCluster`` against a SQLite store. The ``cluster`` tests
use what ``.ci/run`` starts: a PostgreSQL-backed ``mlflow server`` ($CLUSTER_TRACKING_URI), a
``dask scheduler`` ($DASK_SCHEDULER_ADDRESS) and two ``dask worker`` processes whose pids are in
$CLUSTER_WORKER_PIDS; they skip without them unless REQUIRE_CLUSTER=1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from mlflow import MlflowClient

from experiments.cli import CONFIGS, run

QUICK = str(CONFIGS / "quick.yaml")
ENV = ("CLUSTER_TRACKING_URI", "DASK_SCHEDULER_ADDRESS", "CLUSTER_WORKER_PIDS")


def db_uri(path) -> str:
    return f"sqlite:///{path}"


def children(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    return [r for r in runs if r.data.tags.get("kind") != "sweep"]


def finals(runs) -> dict[str, dict[str, float]]:
    return {r.data.tags["config_key"]: r.data.metrics for r in runs}


def assert_same_numbers(got, expected):
    assert got.keys() == expected.keys()
    for key, metrics in got.items():
        for name in ("train/loss", "val/loss", "param/w_norm", "param/b"):
            a, b = metrics[name], expected[key][name]
            assert abs(a - b) <= 1e-6 * max(1.0, abs(b)), (key, name, a, b)


@pytest.fixture(scope="module")
def local_engine_runs(tmp_path_factory):
    """quick.yaml on the local engine: what every other engine must reproduce."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('local') / 'local.db'}"
    assert run(["sweep", QUICK, "--tracking-uri", uri, "--quiet"]) == 0
    return finals(children(uri, "quick"))


@pytest.mark.slow  # 17 s of make test; the cluster tests run Dask against a server
def test_local_dask_cluster_gives_the_local_engine_runs(local_engine_runs, tmp_path, distributed):
    uri = f"sqlite:///{tmp_path / 'dask.db'}"
    args = ["sweep", QUICK, "--engine", "dask", "--workers", "2", "--tracking-uri", uri, "--quiet"]
    assert run(args) == 0
    runs = children(uri, "quick")
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    assert_same_numbers(finals(runs), local_engine_runs)
    # The engine is not part of what a sweep is: the local engine resumes it, with nothing to do.
    assert run(["sweep", QUICK, "--tracking-uri", uri, "--quiet"]) == 0
    assert len(children(uri, "quick")) == 12


def test_an_unreachable_scheduler_is_one_line_and_nothing_is_written(
    tmp_path, capsys, free_port, distributed
):
    db = tmp_path / "never.db"
    address = f"tcp://127.0.0.1:{free_port()}"
    args = ["sweep", QUICK, "--engine", "dask", "--address", address, "--tracking-uri", db_uri(db)]
    assert run(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: dask scheduler {address} cannot be reached")
    assert len(err.splitlines()) == 1 and not db.exists()


def test_the_dask_engine_without_dask_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed → ImportError
    db = tmp_path / "never.db"
    assert run(["sweep", QUICK, "--engine", "dask", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install -e '.[cluster]'" in err and len(err.splitlines()) == 1
    assert not db.exists()


def test_an_address_needs_the_dask_engine(tmp_path, capsys):
    db = tmp_path / "x.db"
    args = ["sweep", QUICK, "--address", "tcp://127.0.0.1:8786", "--tracking-uri", db_uri(db)]
    assert run(args) == 2
    assert "--address is for --engine dask" in capsys.readouterr().err


# --- on the cluster .ci/run starts ------------------------------------------------------------
def cluster_env() -> dict[str, str]:
    missing = [name for name in ENV if not os.environ.get(name)]
    if missing:
        if os.environ.get("REQUIRE_CLUSTER") == "1":
            pytest.fail(f"REQUIRE_CLUSTER=1 but {', '.join(missing)} not set")
        pytest.skip(f"no cluster: {', '.join(missing)} not set (.ci/run starts one)")
    return {name: os.environ[name] for name in ENV}


@pytest.mark.cluster
def test_the_quick_grid_on_the_cluster_against_postgres(local_engine_runs):
    env = cluster_env()
    uri, address = env["CLUSTER_TRACKING_URI"], env["DASK_SCHEDULER_ADDRESS"]
    assert uri.startswith("http")
    experiment = f"cluster-{uuid.uuid4().hex[:8]}"
    args = ["sweep", QUICK, "--engine", "dask", "--address", address, "--tracking-uri", uri]
    args += ["--experiment", experiment, "--quiet"]
    assert run(args) == 0
    runs = children(uri, experiment)
    assert len(runs) == 12 and {r.info.status for r in runs} == {"FINISHED"}
    assert_same_numbers(finals(runs), local_engine_runs)
    # Artifacts went through the server's proxied store.
    client = MlflowClient(uri)
    names = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert {"history.parquet", "trajectory.parquet"} <= names


@pytest.mark.cluster
def test_a_worker_lost_mid_sweep(tmp_path):
    """SIGKILL one of the two workers while runs are in flight: the sweep completes (Dask
    reruns the lost task elsewhere), or its resume does; no grid point has two FINISHED runs."""
    env = cluster_env()
    uri, address = env["CLUSTER_TRACKING_URI"], env["DASK_SCHEDULER_ADDRESS"]
    victim = int(env["CLUSTER_WORKER_PIDS"].split()[0])
    experiment = f"lost-worker-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, "-m", "experiments", "sweep", QUICK, "--engine", "dask"]
    command += ["--address", address, "--tracking-uri", uri, "--experiment", experiment]
    command += ["--quiet", "--set", "steps=4000", "--set", "batch_lrs=false"]
    sweep = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done = [r for r in children(uri, experiment) if r.info.status == "FINISHED"]
        if len(done) >= 2:
            break
        time.sleep(0.5)
    else:
        sweep.kill()
        pytest.fail("no run finished on the cluster within 120 s")
    os.kill(victim, signal.SIGKILL)
    output, _ = sweep.communicate(timeout=400)
    if sweep.returncode != 0:  # the lost runs failed: the same command resumes them
        resumed = subprocess.run(command, capture_output=True, text=True, timeout=400)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = children(uri, experiment)
    finished = [r.data.tags["config_key"] for r in runs if r.info.status == "FINISHED"]
    assert len(finished) == len(set(finished)) == 12, output
    assert "RUNNING" not in {r.info.status for r in runs}
