"""One sweep, one driver, whatever the timing: real `experiments sweep` processes racing on
one store (SQLite, and a real `mlflow server`), and a server that goes away mid-sweep.

Every test ends by reading the store: each grid point FINISHED exactly once, under one parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from experiments.cli import CONFIGS
from experiments.config import load_sweep
from experiments.stores import sqlite_path

QUICK = CONFIGS / "quick.yaml"
STEPS = 6000  # 6 runs of a second or two: long enough for a second driver to arrive mid-sweep
LEASE = {"EXPERIMENTS_LEASE_SECONDS": "20"}  # a short lease, for the test that outwaits one


@pytest.fixture(params=["sqlite", pytest.param("server", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """The store drivers share: a SQLite file, or a tracking server (``.server`` to stop it)."""
    if request.param == "sqlite":
        return SimpleNamespace(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", server=None)
    server = request.getfixturevalue("server")
    return SimpleNamespace(uri=server.uri, server=server)


def start(uri: str, env: dict | None = None, steps: int = STEPS) -> subprocess.Popen:
    command = [sys.executable, "-m", "experiments", "sweep", str(QUICK), "--tracking-uri", uri]
    options = ["--quiet", "--set", f"steps={steps}", "--set", "lrs=[0.1]"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    return subprocess.Popen([*command, *options], env=environment, **pipes)


def finish(uri: str, env: dict | None = None) -> tuple[int, str, str]:
    process = start(uri, env)
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def runs(uri: str) -> list:
    client = MlflowClient(uri)
    found = [e for e in client.search_experiments() if e.name == "quick"]
    if not found:
        return []
    return client.search_runs([found[0].experiment_id], max_results=1000)


def children(uri: str, status: str | None = None) -> list:
    return [
        r
        for r in runs(uri)
        if "mlflow.parentRunId" in r.data.tags and status in (None, r.info.status)
    ]


def wait_for(uri: str, finished: int, process: subprocess.Popen, running: bool = False) -> None:
    deadline = time.monotonic() + 180
    while len(children(uri, "FINISHED")) < finished or (running and not children(uri, "RUNNING")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.1)


def assert_complete(uri: str, steps: int = STEPS) -> list:
    """Every grid point FINISHED exactly once, under one FINISHED parent; nothing RUNNING."""
    found = runs(uri)
    parents = [r for r in found if r.data.tags.get("kind") == "sweep"]
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert not [k for k in parents[0].data.tags if k.startswith("lease.")]  # released
    kids = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    finished = sorted(r.data.tags["config_key"] for r in kids if r.info.status == "FINISHED")
    grid = load_sweep(QUICK, {"steps": steps, "lrs": [0.1]}).grid()
    assert finished == sorted(p.key for p in grid)  # each once
    assert "RUNNING" not in {r.info.status for r in found}
    return kids


def freeze(process: subprocess.Popen, uri: str) -> None:
    """SIGSTOP a driver at a moment it is not writing: on SQLite, one stopped inside a write
    holds the file's one write lock until it goes on, which no lease can take from it (the
    others' writes wait, then stop with exit 75: docs/reliability.md). Mid-read is fine: the
    store's write-ahead log lets the others write past a reader."""
    path = sqlite_path(uri)
    for _ in range(200):
        process.send_signal(signal.SIGSTOP)
        if path is None or writable(path):
            return
        process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the driver was always inside a write")


def writable(path) -> bool:
    with contextlib.closing(sqlite3.connect(path, timeout=1)) as con:
        try:
            con.execute("BEGIN IMMEDIATE")  # the write lock, at once or within a second
        except sqlite3.OperationalError:
            return False
        con.rollback()
        return True


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "Warning" not in line and "warn(" not in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.slow  # 20 s; the next test keeps one driver a sweep in make test
def test_two_drivers_started_together_run_each_grid_point_once(store):
    a, b = start(store.uri, steps=2000), start(store.uri, steps=2000)  # they race at the start
    (_out_a, err_a), (_out_b, err_b) = a.communicate(timeout=600), b.communicate(timeout=600)
    assert sorted([a.returncode, b.returncode]) == [0, 2], (err_a, err_b)
    winner, loser_err = (a, err_b) if a.returncode == 0 else (b, err_a)
    line = one_line(loser_err)
    assert line.startswith("error: this sweep is being run by another driver (host ")
    assert f"pid {winner.pid}, heartbeat" in line and "--restart" in line
    assert_complete(store.uri, steps=2000)


@pytest.mark.slow
def test_a_second_driver_mid_sweep_exits_2_and_writes_nothing(store):
    first = start(store.uri)
    wait_for(store.uri, 1, first)
    code, out, err = finish(store.uri)
    assert code == 2 and out == ""
    line = one_line(err)
    assert f"pid {first.pid}, heartbeat" in line and "taken for dead after 120 s" in line
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    kids = assert_complete(store.uri)
    # It wrote nothing: one parent, no run of its own, none of the first's marked.
    assert len(runs(store.uri)) == 1 + len(kids) == 7
    assert {r.info.status for r in kids} == {"FINISHED"}


@pytest.mark.slow
def test_a_frozen_driver_loses_the_sweep_once_its_lease_expires(store):
    """SIGSTOP, not SIGKILL: the first driver's process still exists, so only the silence of
    its heartbeat frees the sweep. The second takes over after the lease; the first, let go
    again, finds it lost the sweep and stops without ending anything of the second's."""
    first = start(store.uri, LEASE)
    wait_for(store.uri, 1, first, running=True)
    freeze(first, store.uri)
    stopped = time.monotonic()
    try:
        code, _, err = finish(store.uri, LEASE)  # within the lease: refused
        assert code == 2 and "taken for dead after 20 s" in one_line(err)
        time.sleep(max(0.0, stopped + 21 - time.monotonic()))
        second = start(store.uri, LEASE)
        wait_for(store.uri, 2, second)
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=600)
    assert first.returncode == 75, err
    assert one_line(err).startswith("error: this driver lost the sweep (")
    _out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    kids = assert_complete(store.uri)
    assert any(r.info.status == "KILLED" for r in kids)  # the first's run in flight, marked


@pytest.mark.slow
def test_a_claim_from_another_machine_is_waited_out_then_taken_over(store):
    """A driver SIGKILLed on another machine: its pid cannot be checked from here, so the
    sweep is held until its heartbeat is older than the lease (60 s here; its age is set by
    writing the claim as that machine would have), then taken over."""
    first = start(store.uri)
    wait_for(store.uri, 1, first, running=True)
    first.kill()  # SIGKILL: RUNNING runs and a claim left behind
    first.wait(timeout=30)
    client = MlflowClient(store.uri)
    (parent,) = [r for r in runs(store.uri) if r.data.tags.get("kind") == "sweep"]
    for key in [k for k in parent.data.tags if k.startswith("lease.")]:
        client.delete_tag(parent.info.run_id, key)

    def claim(age: float) -> None:  # its last heartbeat, `age` seconds ago
        beat = {"host": "elsewhere", "pid": 4242, "pidns": None, "heartbeat": time.time() - age}
        text = json.dumps({**beat, "lease_s": 60})
        client.set_tag(parent.info.run_id, "lease.elsewhere", text)

    claim(age=30)
    code, _, err = finish(store.uri)
    # 30 s old when written; a loaded machine takes seconds more to start the second driver
    seen = re.search(r"host elsewhere, pid 4242, heartbeat (\d+) s ago", one_line(err))
    assert code == 2 and seen and 30 <= int(seen.group(1)) < 60, err
    assert len(children(store.uri, "RUNNING")) >= 1  # not marked: its driver may be alive
    claim(age=61)
    code, _, err = finish(store.uri)
    assert code == 0, err
    kids = assert_complete(store.uri)
    assert any(r.info.status == "KILLED" for r in kids)  # what the dead driver had in flight


@pytest.mark.slow
def test_a_30_s_outage_of_the_server_loses_nothing(server):
    sweep = start(server.uri)
    wait_for(server.uri, 1, sweep)
    server.stop()
    time.sleep(30)
    server.start()
    out, err = sweep.communicate(timeout=600)
    assert sweep.returncode == 0, err
    assert "6 finished, 0 diverged, 0 failed with an error" in out
    for run in assert_complete(server.uri):
        names = {a.path for a in MlflowClient(server.uri).list_artifacts(run.info.run_id)}
        assert {"history.parquet", "trajectory.parquet"} <= names


@pytest.mark.slow
def test_an_outage_longer_than_the_retries_stops_the_sweep_and_the_same_command_resumes(server):
    short = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    sweep = start(server.uri, short)
    wait_for(server.uri, 1, sweep)
    server.stop()
    _, err = sweep.communicate(timeout=300)
    assert sweep.returncode == 75
    line = one_line(err)
    assert line.startswith(f"error: tracking store {server.uri} went away: ")
    assert "the same command runs again" in line
    server.start()
    left = children(server.uri, "RUNNING")
    code, out, err = finish(server.uri)
    assert code == 0, err
    assert "already finished before" in out
    kids = assert_complete(server.uri)
    status = {r.info.run_id: r.info.status for r in kids}
    assert all(status[r.info.run_id] == "KILLED" for r in left)  # marked on the resume
