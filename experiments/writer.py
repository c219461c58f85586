"""Runs recorded in the background, so the store's writes overlap the next pass's training.

The sweep's own process, when it trains the passes itself, hands each trained run to a
:class:`Writer` and goes on to the next pass; the writer records the run and ends it: FINISHED,
or FAILED if it diverged, or FAILED with the reason if recording it failed (its failures reach
the run's status). The writer is a process of its own: MLflow's ``log_batch`` is Python work
(~70 µs a metric point on SQLite, in its ORM), so a thread would take turns with the training
for the GIL (measured: no faster than writing in turn), where a process gets the core that
training on small data leaves idle.

Until the writer is up (the imports take seconds) the training process records runs itself, so
a short sweep never waits for it. :meth:`Writer.drain` waits until every run handed over is
recorded, and names those a dead writer left; the sweep drains on its way out, after Ctrl-C and
SIGTERM too, so no trained run is lost.
"""

from __future__ import annotations

import atexit
import multiprocessing
import queue
import signal

import torch

from experiments import records
from experiments.errors import first_line
from experiments.retries import StoreLost
from experiments.tracking import Tracker
from experiments.training import RunResult

READY = "ready"  # what the writer says once MLflow is imported and the store is open


class Writer:
    """A process that records trained runs in the store they belong to."""

    def __init__(self, uri: str, *, take_a_thread: bool = False) -> None:
        """``take_a_thread``: the writer's core is one of this process's torch threads, given
        back on :meth:`close` (the sweep's own process trains on the others meanwhile)."""
        self._threads = torch.get_num_threads() if take_a_thread else None
        if self._threads is not None:
            torch.set_num_threads(max(1, self._threads - 1))
        context = multiprocessing.get_context("spawn")  # no forked torch, SQLite or threads
        self._jobs = context.Queue()
        self._done = context.Queue()
        self._process = context.Process(
            target=_serve, args=(uri, self._jobs, self._done), name="writer", daemon=True
        )
        self._process.start()
        atexit.register(self.close)  # before multiprocessing's own exit, which would wait
        self._ready = False
        self._pending: set[str] = set()  # handed over, not recorded yet
        self._lost: set[str] = set()  # handed over, and the writer could not end them
        self._store_lost: StoreLost | None = None  # why the store refused the writer, if it did

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def ready(self) -> bool:
        """Whether the writer is up and takes runs; :class:`StoreLost` once the store went
        away or filled up under it (the sweep stops as it would had it written itself)."""
        self._collect(timeout=0)
        if self._store_lost is not None:
            raise self._store_lost
        return self._ready and self._process.is_alive()

    def write(self, run_id: str, result: RunResult, *, inputs: bool, guard: bool) -> None:
        self._pending.add(run_id)
        self._jobs.put((run_id, result, inputs, guard))

    def drain(self) -> set[str]:
        """Wait until every run handed over is recorded; return those still RUNNING: left by a
        writer that died, or that it could not end at all; :class:`StoreLost` if the store went
        away or filled up under it."""
        while self._pending and self._process.is_alive():
            self._collect(timeout=0.2)
        self._collect(timeout=0)  # what it finished before it died
        if self._store_lost is not None:  # then nothing more can be recorded or marked
            raise self._store_lost
        lost = self._pending | self._lost
        self._pending, self._lost = set(), set()
        return lost

    def unrecorded(self) -> set[str]:
        """The runs handed over and not recorded yet, without waiting."""
        self._collect(timeout=0)
        return self._pending | self._lost

    def close(self) -> None:
        """Stop the process, after :meth:`drain`: it is told to, or killed if it is still
        starting up or stuck (it ignores SIGTERM, which a scheduler may send the whole group
        while the sweep still needs it to drain)."""
        self._collect(timeout=0)
        if self._process.is_alive() and self._ready:
            self._jobs.put(None)
            self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None

    def _collect(self, timeout: float) -> None:
        """Take the writer's messages: READY, or (run id, whether the run is ended, the
        StoreLost that stopped it or None)."""
        try:
            message = self._done.get(timeout=timeout) if timeout else self._done.get_nowait()
            while True:
                if message == READY:
                    self._ready = True
                else:
                    run_id, ended, lost = message
                    self._pending.discard(run_id)
                    if not ended:
                        self._lost.add(run_id)
                    self._store_lost = self._store_lost or lost
                message = self._done.get_nowait()
        except queue.Empty:
            pass


def _serve(uri: str, jobs, done) -> None:
    """The writer's loop: record each run it is handed, until told to stop or its parent dies."""
    for stop in (signal.SIGINT, signal.SIGTERM):  # the sweep answers them, then drains us
        signal.signal(stop, signal.SIG_IGN)
    torch.set_num_threads(1)
    tracker = Tracker(uri)
    tracker.client  # noqa: B018 - import MLflow and open the store before saying so
    done.put(READY)
    parent = multiprocessing.parent_process()
    while True:
        try:
            job = jobs.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():  # killed: nobody will drain us
                return
            continue
        if job is None:
            return
        run_id, result, inputs, guard = job
        done.put((run_id, *_record(tracker, run_id, result, inputs, guard)))


def _record(
    tracker: Tracker, run_id: str, result: RunResult, inputs: bool, guard: bool
) -> tuple[bool, StoreLost | None]:
    """Record one run and end it: whether it is ended (not even marked FAILED if not), and
    the StoreLost that stopped it."""
    try:
        records.write(tracker, run_id, result, inputs=inputs, guard=guard)
    except StoreLost as lost:  # not the run's fault: drain() names it, and it is trained again
        return False, lost
    except Exception as err:
        try:
            records.fail(tracker, run_id, f"recording failed: {first_line(err, named=True)}")
        except StoreLost as lost:
            return False, lost
        except Exception:  # the store itself is gone: drain() names the run
            return False, None
    return True, None
