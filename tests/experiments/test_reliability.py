"""Real processes, real signals: interrupt a sweep, kill it, resume it, run it in parallel.

Each test starts `python -m experiments sweep` in a subprocess on a fresh temporary store,
acts on it from outside, and then reads the store run by run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from experiments import records
from experiments.cli import CONFIGS, run
from experiments.config import load_sweep
from experiments.engines import Engine
from experiments.retries import StoreFull, StoreLost, retry_when_locked
from experiments.sweep import Sweep
from experiments.tracking import Tracker

QUICK = CONFIGS / "quick.yaml"
# 6 runs of ~0.5 s: slow enough to stop in the middle, quick enough for `make test`.
GRID = {"steps": 800, "lrs": [0.1]}
SLOWER = ["--set", "steps=800", "--set", "lrs=[0.1]"]


def sweep_command(uri: str, *extra: str) -> list[str]:
    sweep = [sys.executable, "-m", "experiments", "sweep", str(QUICK)]
    return [*sweep, "--tracking-uri", uri, "--quiet", *SLOWER, *extra]


def finish(command: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=timeout)


def start(uri: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.Popen(sweep_command(uri, *extra), text=True, env=env, **pipes)


def children_with(db, status: str) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as con:
        try:
            return con.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'mlflow.parentRunId' and r.status = ?",
                (status,),
            ).fetchone()[0]
        except sqlite3.OperationalError:  # tables not there yet
            return 0


def wait_for(db, n: int, process: subprocess.Popen, timeout: float = 60, running=False) -> None:
    """Until n child runs have FINISHED (and, with ``running``, another one is in flight)."""
    deadline = time.monotonic() + timeout
    while children_with(db, "FINISHED") < n or (running and not children_with(db, "RUNNING")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the sweep did not get going"
        time.sleep(0.05)


def state(uri: str) -> pd.DataFrame:
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "quick"]
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return pd.DataFrame(
        {
            "run_id": r.info.run_id,
            "status": r.info.status,
            "parent": r.data.tags.get("mlflow.parentRunId"),
            "key": r.data.tags.get("config_key"),
            "kind": r.data.tags.get("kind"),
            "train_loss": r.data.metrics.get("train/loss"),
        }
        for r in runs
    )


def assert_complete(uri: str, grid: dict = GRID) -> pd.DataFrame:
    """Every grid point FINISHED exactly once, under one parent, which is FINISHED too."""
    runs = state(uri)
    parents = runs[runs.kind == "sweep"]
    assert len(parents) == 1 and parents.status.item() == "FINISHED"
    children = runs[runs.parent == parents.run_id.item()]
    finished = children[children.status == "FINISHED"]
    expected = {p.key for p in load_sweep(QUICK, grid).grid()}
    assert sorted(finished.key) == sorted(expected)  # each key once: no duplicates
    assert "RUNNING" not in set(children.status)
    return children


@pytest.mark.parametrize(
    ("signum", "code", "options"),
    [
        pytest.param(signal.SIGTERM, 143, ["--workers", "1"], id="SIGTERM"),
        pytest.param(signal.SIGINT, 130, ["--workers", "1"], id="SIGINT", marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, 143, ["--workers", "4"], id="SIGTERM-4-workers",
                     marks=pytest.mark.slow),
        pytest.param(signal.SIGTERM, 143, ["--engine", "dask", "--workers", "2"],
                     id="SIGTERM-dask-local-cluster", marks=pytest.mark.slow),
    ],
)  # fmt: skip
def test_interrupt_marks_killed_and_the_same_command_resumes(
    signum, code, options, tmp_path, request, capsys
):
    if "dask" in options:
        request.getfixturevalue("distributed")  # skipped without Dask, unless REQUIRE_CLUSTER=1
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    process = start(uri, *options)
    wait_for(db, 2, process, timeout=120)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "KILLED" in err and "Traceback" not in err
    after_stop = state(uri)
    assert "RUNNING" not in set(after_stop.status)  # nothing left hanging
    assert after_stop[after_stop.kind == "sweep"].status.item() == "KILLED"
    kept = after_stop[after_stop.status == "FINISHED"].set_index("run_id").train_loss

    resumed = sweep_command(uri, *options)[3:]  # the same command, run in this process
    assert run(resumed) == 0
    assert f"({len(kept)} already finished before)" in capsys.readouterr().out
    children = assert_complete(uri)
    # What had finished is intact, and was not run again.
    again = children.set_index("run_id").train_loss
    assert all(again[run_id] == loss for run_id, loss in kept.items())


def test_runs_a_dead_driver_left_running_are_marked_killed_and_run_again(tmp_path, capsys):
    """What a SIGKILLed driver leaves, made in place: a grid point's run RUNNING under the
    sweep's parent. The same command marks it KILLED, runs the point again, and keeps the rest
    (the real kill is the slow test below)."""
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    args = ["sweep", str(QUICK), "--tracking-uri", uri, "--quiet", "--set", "steps=5"]
    assert run(args) == 0
    tracker = Tracker(uri)
    first = state(uri)
    left = first[first.kind != "sweep"].run_id.iloc[0]
    tracker.reopen(left)  # the run in flight when the driver died
    capsys.readouterr()
    assert run(args) == 0
    assert "(11 already finished before)" in capsys.readouterr().out
    children = assert_complete(uri, {"steps": 5})
    assert children.set_index("run_id").status[left] == "KILLED"
    assert len(children) == 13  # the 12 points, and the one run again


@pytest.mark.slow
def test_sigkill_leaves_running_runs_that_resume_marks_and_reruns(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    process = start(uri)
    wait_for(db, 2, process, running=True)
    process.kill()
    process.wait(timeout=30)
    killed = state(uri)
    assert "RUNNING" in set(killed[killed.parent.notna()].status)  # what MLflow alone leaves
    resumed = finish(sweep_command(uri))
    assert resumed.returncode == 0, resumed.stderr
    children = assert_complete(uri)
    stale = children[children.status == "KILLED"]
    assert len(stale) >= 1  # the run in flight at the kill, marked and then run again


@pytest.mark.slow  # 6 s of make test
def test_a_process_stopped_mid_read_does_not_hold_up_a_sweep(tmp_path):
    """A read left open on the store, as a process stopped mid-read leaves it (Ctrl-Z, a paused
    VM), does not block the sweep's writes: the store keeps a write-ahead log. In SQLite's
    default mode the sweep waited on it and failed with `database is locked` after 4 min."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    Tracker(uri).open()
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as reader:
        assert reader.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM runs").fetchall()  # its snapshot, held open
        grid = ["--set", "steps=20", "--set", "lrs=[0.1]"]
        assert run(["sweep", str(QUICK), "--tracking-uri", uri, "--quiet", *grid]) == 0
        reader.execute("COMMIT")
    assert_complete(uri, {"steps": 20, "lrs": [0.1]})


def test_a_store_locked_through_every_retry_is_lost_in_one_line(monkeypatch):
    """A process stopped inside a write keeps SQLite's one write lock: after SQLite's wait and
    the retries, the call stops the sweep as a lost store does (exit 75, resume later)."""
    tries = []

    class Store:
        uri = "sqlite:///x.db"

        @retry_when_locked
        def write(self):
            tries.append(time.monotonic())
            raise RuntimeError("(sqlite3.OperationalError) database is locked\n(Background: …)")

    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    line = r"^tracking store sqlite:///x.db stayed locked by another process for \d+ s: "
    with pytest.raises(StoreLost, match=line + r"\(sqlite3.OperationalError\) database is locked$"):
        Store().write()
    assert len(tries) == 12


@pytest.mark.slow
def test_four_workers_on_a_brand_new_store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    done = finish(sweep_command(uri, "--workers", "4"), timeout=180)
    assert done.returncode == 0, done.stderr
    children = assert_complete(uri)
    assert len(children) == 6


@pytest.mark.slow
def test_a_worker_killed_mid_run_fails_its_run_and_the_sweep_goes_on(tmp_path):
    import psutil

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    process = start(uri, "--workers", "2")
    wait_for(db, 1, process, timeout=120)
    children = psutil.Process(process.pid).children(recursive=True)
    workers = [c for c in children if "spawn" in " ".join(c.cmdline())]
    assert workers
    workers[0].kill()
    out, err = process.communicate(timeout=180)
    assert process.returncode == 1, out + err  # the sweep finished, and says a run failed
    assert "worker process died" in out, out + err
    runs = state(uri)
    assert "RUNNING" not in set(runs.status)
    resumed = finish(sweep_command(uri, "--workers", "2"))
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(uri)


def test_a_diverging_run_fails_with_its_step_and_the_sweep_goes_on(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    args = ["sweep", str(QUICK), "--tracking-uri", uri]
    args += ["--quiet", "--set", "lrs=[0.1,1.0e38]", "--set", "datasets=[breast_cancer]"]
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "3 finished, 3 diverged, 0 failed with an error" in out
    client = MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "quick"]
    runs = client.search_runs([experiment.experiment_id])
    diverged = [c for c in runs if c.info.status == "FAILED"]
    assert len(diverged) == 3
    for child in diverged:
        assert child.data.tags["failure"] == "diverged"
        assert child.data.tags["diverged_at_step"] == "1"
        folder = client.download_artifacts(child.info.run_id, "history.parquet", str(tmp_path))
        history = pd.read_parquet(folder)
        assert list(history.step) == [0, 1]  # kept up to the step it happened
        assert not torch.isfinite(torch.tensor(history["train/loss"].to_numpy())).all()


def test_a_run_that_raises_fails_alone(tmp_path, capsys):
    """moons with a negative noise passes the config (loader parameters are free) and fails at
    run time; its runs end FAILED with the reason and the others finish."""
    uri = f"sqlite:///{tmp_path / 'e.db'}"
    args = ["sweep", str(QUICK), "--tracking-uri", uri, "--quiet", "--set", "lrs=[0.1]"]
    args += ["--set", "datasets=[iris, {name: moons, noise: -1}]"]
    assert run(args) == 1
    out = capsys.readouterr().out
    assert "3 finished, 0 diverged, 3 failed with an error" in out
    assert "noise" in out and "  FAILED manual · moons" in out  # by name


def test_reruns_are_bit_identical(tmp_path):
    histories = []
    for attempt in range(2):
        uri = f"sqlite:///{tmp_path / f'{attempt}.db'}"
        args = ["train", "--dataset", "wine", "--impl", "function", "--lr", "0.3", "--steps", "200"]
        args += ["--tracking-uri", uri]
        assert run(args) == 0
        client = MlflowClient(uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "train"]
        (only,) = client.search_runs([experiment.experiment_id])
        assert only.data.tags["git_dirty"] in ("true", "false")
        assert {i.tags[0].value for i in only.inputs.dataset_inputs} == {"train", "val"}
        path = client.download_artifacts(
            only.info.run_id, "trajectory.parquet", str(tmp_path / f"a{attempt}")
        )
        histories.append(pd.read_parquet(path))
    pd.testing.assert_frame_equal(histories[0], histories[1], check_exact=True)


def test_bad_worker_count(capsys):
    assert run(["sweep", str(QUICK), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and err.count("\n") == 1


@pytest.mark.slow  # 9 s of make test
def test_restart_starts_a_fresh_sweep(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    args = ["sweep", str(QUICK), "--tracking-uri", uri, "--quiet", "--set", "steps=5"]
    assert run(args) == 0
    capsys.readouterr()
    assert run(args) == 0  # the same command again: everything is done, nothing reruns
    assert "(12 already finished before)" in capsys.readouterr().out
    assert run([*args, "--restart"]) == 0
    runs = state(uri)
    parents = runs[runs.kind == "sweep"]
    assert len(parents) == 2 and set(parents.status) == {"FINISHED"}
    for parent in parents.run_id:
        assert (runs.parent == parent).sum() == 12


def test_an_interrupt_waits_for_the_tracking_call_and_a_second_one_forces(tmp_path):
    """A signal inside a tracking call is raised when the call returns, never inside it."""
    from experiments import interrupts
    from experiments.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 's.db'}")
    tracker.open()
    experiment_id = tracker.experiment("shield")
    real_create = tracker.client.create_run
    created = []

    def create_run(*args, **kwargs):  # the signal lands in the middle of MLflow's write
        os.kill(os.getpid(), signal.SIGTERM)
        run = real_create(*args, **kwargs)
        created.append(run.info.run_id)
        return run

    tracker.client.create_run = create_run
    with interrupts.installed(), pytest.raises(interrupts.Interrupted) as stop:
        tracker.start_run(experiment_id, "r", tags={})
    assert stop.value.exit_code == 143
    assert len(created) == 1  # the write completed, then the interrupt came
    tracker.client.create_run = real_create
    tracker.finish(created[0], "KILLED")  # the store is not locked
    assert tracker.status(created[0]) == "KILLED"

    with interrupts.installed(), pytest.raises(KeyboardInterrupt), interrupts.shielded():
        os.kill(os.getpid(), signal.SIGINT)  # held...
        os.kill(os.getpid(), signal.SIGINT)  # ...and the second goes through at once
        time.sleep(1)
        pytest.fail("the second interrupt was held too")


class BreakingPool(Engine):
    """A local pool in miniature: the second pass's worker dies while the first pass's
    result is already in, so the driver's next submit meets a broken pool (the race CI hit)."""

    breaks = True

    def __init__(self):
        self.submitted, self.renewed, self.broken = [], 0, False

    def submit(self, fn, *args, gpu=False):
        if self.broken:
            raise BrokenProcessPool("A child process terminated abruptly")
        future = Future()
        self.submitted.append(fn.run_ids)  # the pass it was handed
        if len(self.submitted) == 2:  # this worker dies; its future fails a moment later
            self.broken = True
            threading.Timer(0.2, future.set_exception, [BrokenProcessPool("died")]).start()
        else:
            future.set_result(1.0)
        return future

    def capacity(self):
        return 2

    def lost_worker(self, err):
        return isinstance(err, BrokenProcessPool)

    def renew(self):
        self.renewed += 1
        self.broken = False


class ScriptedStore:
    """The tracker calls a sweep's driver makes, kept in memory."""

    uri = "sqlite://"

    def __init__(self):
        self.status_of, self.reasons = {}, {}

    def start_run(self, experiment_id, name, *, tags, parent_id=None):
        run_id = f"run{len(self.status_of)}"
        self.status_of[run_id] = "RUNNING"
        return run_id

    def status(self, run_id):
        return self.status_of[run_id]

    def log(self, run_id, *, tags=(), **_):
        self.reasons[run_id] = dict(tags).get("failure_reason")

    def finish(self, run_id, status="FINISHED"):
        self.status_of[run_id] = status


def test_a_pass_refused_by_a_broken_pool_goes_to_the_renewed_one_under_its_runs(monkeypatch):
    monkeypatch.setattr(records, "run_tags", lambda point: {})
    engine, store = BreakingPool(), ScriptedStore()
    sweep = Sweep(store, experiment_id="0", parent_id="parent")
    points = [SimpleNamespace(device="cpu", name=f"point {i}", key=f"k{i}") for i in range(4)]
    sweep.drive(engine, [[point] for point in points], SimpleNamespace(update=lambda n: None))
    assert list(store.status_of) == ["run0", "run1", "run2", "run3"]  # one run a point, once
    assert engine.submitted == [["run0"], ["run1"], ["run2"], ["run3"]]  # run2 refused once
    assert store.reasons == {"run1": "its worker process died"}
    assert [store.status_of[r] for r in ("run0", "run1")] == ["RUNNING", "FAILED"]
    assert engine.renewed == 1
    assert sweep.train_seconds == 3.0 and not sweep.in_flight


@pytest.mark.slow
def test_an_interrupt_while_the_writer_holds_runs_loses_none(tmp_path):
    """A sweep long enough to record in the background (24 runs of 800 steps), stopped by
    SIGTERM once its writer is up: what the writer holds is recorded before the sweep exits,
    the run in training ends KILLED, the writer does not outlive the sweep, and the same
    command resumes and completes the grid."""
    import psutil

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    seeds = ["--set", "seeds=[0,1,2,3]"]
    process = start(uri, *seeds)
    deadline = time.monotonic() + 120
    while not (writers := [c for c in psutil.Process(process.pid).children() if "spawn" in
                           " ".join(c.cmdline())]):  # fmt: skip
        assert process.poll() is None and time.monotonic() < deadline, "no writer started"
        time.sleep(0.1)
    while str(db) not in {f.path for f in writers[0].open_files()}:  # up: MLflow has the store
        assert process.poll() is None and time.monotonic() < deadline, "the writer never came up"
        time.sleep(0.1)
    wait_for(db, children_with(db, "FINISHED") + 2, process, timeout=120)  # handed to it
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert not writers[0].is_running() or writers[0].status() == psutil.STATUS_ZOMBIE
    stopped = state(uri)
    assert "RUNNING" not in set(stopped.status)
    assert (stopped.status == "FINISHED").sum() >= 4  # the parent is KILLED; runs are in
    resumed = finish(sweep_command(uri, *seeds))
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(uri, {**GRID, "seeds": [0, 1, 2, 3]})


# --- a full disk ------------------------------------------------------------------------------
SERVER_FULL = (
    "API request to /api/2.0/mlflow/runs/log-batch failed with error code 500 != 200. Response "
    """body: '{"message": "could not extend file \\"base/16384/2613\\": wrote only 4096"}'"""
)


@pytest.mark.parametrize(
    ("raised", "named"),
    [
        (RuntimeError("(sqlite3.OperationalError) database or disk is full\n[SQL: …]"), "disk is"),
        (OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/m/1/x/history.parquet"), "No space"),
        (RuntimeError(SERVER_FULL), "could not extend file"),
    ],
    ids=["sqlite", "artifact", "postgresql"],
)
def test_a_write_refused_for_lack_of_space_is_one_line_that_names_the_store(
    raised, named, tmp_path
):
    tries = []

    class Store:
        uri = f"sqlite:///{tmp_path / 'm.db'}"

        @retry_when_locked
        def write(self):
            tries.append(1)
            raise raised

    with pytest.raises(StoreFull) as caught:
        Store().write()
    assert len(tries) == 1  # no retry fills a full disk
    line = str(caught.value)
    assert "\n" not in line and named in line
    assert line.startswith(f"tracking store sqlite:///{tmp_path / 'm.db'} is full (")
    assert f"free space on the filesystem holding {tmp_path} (df -h {tmp_path})" in line
    assert isinstance(caught.value, StoreLost)  # exit 75 and a resume, as a lost store


def _tmpfs_namespace() -> bool:
    """Whether this machine lets a process mount a small filesystem of its own (a user and
    mount namespace: root, or unprivileged user namespaces)."""
    probe = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
             "mount -t tmpfs -o size=1m tmpfs /tmp"]  # fmt: skip
    try:
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _tmpfs_namespace(), reason="no user and mount namespaces here")
def test_a_full_disk_stops_the_sweep_in_one_line_and_the_same_command_resumes(tmp_path):
    """The store on a 3 MB filesystem of its own, a grid long enough for the background writer:
    the sweep stops at the first write that finds no room with one line and exit code 75,
    nothing FAILED; with room made, the same command finishes every grid point once."""
    folder = tmp_path / "small"
    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    grid = {**GRID, "steps": 2000, "seeds": list(range(8))}
    sweep = " ".join(sweep_command(uri, "--set", "steps=2000", "--set", "seeds=[0,1,2,3,4,5,6,7]"))
    script = (
        f"mount -t tmpfs -o size=3m tmpfs {folder} && {{ {sweep} 2> {tmp_path}/first.err; "
        f"echo $? > {tmp_path}/first.rc; mount -o remount,size=200m {folder}; "
        f"{sweep} > {tmp_path}/second.out 2>&1; echo $? > {tmp_path}/second.rc; "
        f"cp {folder}/mlflow.db {tmp_path}/kept.db; }}"
    )
    namespace = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script]
    subprocess.run(namespace, capture_output=True, timeout=600, check=True, cwd=Path.cwd())
    first = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "75", first
    assert first.count("\n") == 1 and first.startswith(f"error: tracking store {uri} is full (")
    second = (tmp_path / "second.out").read_text()  # what went wrong, if it did
    assert (tmp_path / "second.rc").read_text().strip() == "0", second
    children = assert_complete(f"sqlite:///{tmp_path / 'kept.db'}", grid)
    assert "FAILED" not in set(children.status)  # a full disk is no run's fault
