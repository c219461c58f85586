"""Where grid points run: the one seam between a sweep and the engine that runs it.

A sweep hands its training passes to an :class:`Engine`: this process, one pass after another
(:class:`InlineEngine`), the local process pool, or a Dask cluster through
``Client.get_executor()``. All three answer ``submit`` with a ``concurrent.futures.Future``, so
:mod:`experiments.sweep` has one code path. Another engine (Ray, say) is another subclass here;
the training code does not change.

An engine is a context manager, and :func:`experiments.sweep.run_sweep` its one owner: opened
and checked before anything is written (an engine that is not installed or a scheduler that
does not answer is an :class:`EngineError` with a one-line message), stopped when the sweep is
interrupted or fails (its workers gone before the driver marks their runs KILLED), closed when
it ends. :meth:`Engine.devices` says where its runs can train: the devices of the machines
that will run them, not the driver's.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import torch

from experiments.errors import first_line
from manual_models.validation import DEVICE_TYPES, available_devices

ENGINES = ("local", "dask")
INSTALL_HINT = "pip install -e '.[cluster]' (make install does)"


class EngineError(ValueError):
    """The engine cannot be used as asked; the message is one line and says why."""


class Engine:
    """Runs ``fn(*args)`` for a training pass somewhere, and says what a failure means."""

    name = "engine"
    # Whether workers must check that the driver has not ended a run before they finish it:
    # true where the engine cannot stop a task that is already running.
    guard = False
    # Whether a lost worker breaks the executor for everyone (then it is renewed once the work
    # in flight has failed).
    breaks = False
    # Whether passes run in the sweep's own process (which then records them in the background).
    runs_here = False

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is None:
            self.close()
        else:
            self.stop()

    def submit(self, fn: Callable, *args, gpu: bool = False) -> Future:
        raise NotImplementedError

    def devices(self) -> list[str]:
        """The device types its runs can train on, in the order cpu, cuda, mps."""
        return available_devices()

    def where(self) -> str:
        """Where its runs train, for a message: ``here``, or the cluster."""
        return "here"

    def check(self, probe: Callable[[], str | None]) -> None:
        """Raise :class:`EngineError` if ``probe`` (can a worker reach and log in to the store?
        None if so, else why not) says why not on a worker with an environment of its own."""

    def capacity(self) -> int:
        """How many passes to keep in flight."""
        raise NotImplementedError

    def lost_worker(self, err: BaseException) -> bool:
        """True if ``err`` means the worker process died (its runs fail, the sweep goes on)."""
        return False

    def renew(self) -> None:
        """Make the executor usable again after a lost worker, where it needs that."""

    def stop(self) -> None:
        """On interruption: stop the work in flight before its runs are marked KILLED."""

    def close(self) -> None:
        """Release the executor at the end of a sweep."""

    def describe(self) -> str:
        return self.name


class InlineEngine(Engine):
    """This process, one pass at a time: the sequential sweep, through the same loop as the
    others. A pass runs inside ``submit``; Ctrl-C and SIGTERM reach it as they reach the
    driver, which then marks its runs KILLED."""

    name = "inline"
    runs_here = True

    def submit(self, fn, *args, gpu=False):
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as err:  # the pass failed: its runs fail, the sweep goes on
            future.set_exception(err)
        return future

    def capacity(self) -> int:
        return 1

    def describe(self) -> str:
        return "this process"


class LocalEngine(Engine):
    """``workers`` spawned processes on this machine (one torch thread each)."""

    name = "local"
    breaks = True  # ProcessPoolExecutor: one dead process fails the pool

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = self._new_pool()

    def _new_pool(self):
        context = multiprocessing.get_context("spawn")  # no forked torch or SQLite state
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_init_worker)

    def submit(self, fn, *args, gpu=False):
        return self.pool.submit(fn, *args)

    def capacity(self) -> int:
        return self.workers

    def lost_worker(self, err):
        return isinstance(err, BrokenProcessPool)

    def renew(self) -> None:
        # A dead process breaks the whole pool: the runs it held fail, a fresh pool goes on.
        self.pool.shutdown(wait=False)
        self.pool = self._new_pool()

    def stop(self) -> None:
        # Kill the workers first, so none can end a run FINISHED after the driver marked it
        # KILLED. (ProcessPoolExecutor has no public terminate before Python 3.14; after a
        # shutdown its _processes is None, so a second stop does nothing.)
        processes = list((getattr(self.pool, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()
        for process in processes:  # gone before the driver writes KILLED, or killed
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown()

    def describe(self) -> str:
        return f"local ({self.workers} processes)"


def _init_worker() -> None:
    # The driver answers Ctrl-C for everyone; one thread each, as the workers share the cores.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)


class DaskEngine(Engine):
    """A Dask cluster: the scheduler at ``address``, or a ``LocalCluster`` of ``workers``
    single-threaded processes on this machine when there is none. CUDA grid points ask for a
    ``GPU`` resource, so only workers started with ``--resources GPU=1`` take them."""

    name = "dask"
    guard = True  # Dask cannot stop a task that is running on a remote worker

    def __init__(self, address: str | None, workers: int, timeout: float = 5.0) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise EngineError(f"the dask engine needs Dask distributed: {INSTALL_HINT}") from None
        self.address, self.cluster = address, None
        try:
            if address is None:
                self.cluster = LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=logging.ERROR,
                )
                self.client = Client(self.cluster)
            else:
                self.client = Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError, RuntimeError) as err:
            where = address or "a local cluster"
            raise EngineError(
                f"dask scheduler {where} cannot be reached: {first_line(err)}"
            ) from None
        self.cpu = self.client.get_executor(pure=False)
        self.gpu = self.client.get_executor(pure=False, resources={"GPU": 1})

    def submit(self, fn, *args, gpu=False):
        # A local cluster shares this machine's GPU among its workers: no resource to ask for.
        return (self.gpu if gpu and self.cluster is None else self.cpu).submit(fn, *args)

    def check(self, probe: Callable[[], str | None]) -> None:
        for worker, why in self.client.run(probe, on_error="return").items():
            if why is not None:  # each worker's own environment: its login, its network
                raise EngineError(f"dask worker {worker}: {why}")

    def devices(self) -> list[str]:
        """What the workers have; CUDA only on a worker that offers the ``GPU`` resource CUDA
        points ask for (on a local cluster, this machine's GPU, shared)."""
        if self.cluster is not None:
            return available_devices()
        found = self.client.run(available_devices, on_error="return")
        workers = self.client.scheduler_info()["workers"]
        offered = {"cpu"}
        for worker, present in found.items():
            if not isinstance(present, list):
                continue  # a worker that failed to answer offers nothing
            gpu = workers.get(worker, {}).get("resources", {}).get("GPU")
            offered |= {d for d in present if d != "cuda" or gpu}
        return [device for device in DEVICE_TYPES if device in offered]

    def where(self) -> str:
        if self.cluster is not None:
            return "here"
        return (
            f"on the Dask cluster at {self.address} (a CUDA worker starts with "
            "`dask worker ADDRESS --resources GPU=1`)"
        )

    def capacity(self) -> int:
        # Every worker thread busy; workers may join or leave while the sweep runs.
        return max(1, sum(self.client.nthreads().values()))

    def lost_worker(self, err):
        return type(err).__name__ in ("KilledWorker", "CommClosedError", "FutureCancelledError")

    def stop(self) -> None:
        self.cpu.shutdown(wait=False)  # cancels every task not done, queued or running
        self.gpu.shutdown(wait=False)  # (a second stop does nothing: both are idempotent)
        if self.cluster is not None:  # ours: its workers go with it
            self.client.close()
            self.cluster.close()

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def describe(self) -> str:
        if self.cluster is not None:
            return f"dask (local cluster, {len(self.cluster.workers)} workers)"
        return f"dask ({self.address})"


def open_engine(name: str, address: str | None = None, workers: int = 1) -> Engine:
    """The engine a sweep runs on: this process for one local worker, else a pool or Dask."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "local":
        if address:
            raise EngineError("--address is for --engine dask")
        return InlineEngine() if workers == 1 else LocalEngine(workers)
    return DaskEngine(address or os.environ.get("DASK_SCHEDULER_ADDRESS") or None, workers)
