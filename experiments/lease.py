"""One live driver per sweep: a lease held in the tracking store, the only state drivers share.

A driver claims its sweep with a tag on the sweep's parent run, ``lease.<claim id>``, whose
value says who holds it and when it last said so (host, pid, heartbeat). A thread renews the
heartbeat every ``lease_s / 9`` seconds (at most 10), one quick attempt each time (no minute of
retries: it must know as soon as the store is back). A claim is live while its heartbeat is
younger than its ``lease_s`` (:func:`lease_seconds`); on the claimant's own machine it is dead
at once when its process is gone (SIGKILL, a crash), so the next driver there need not wait.

MLflow has no compare-and-swap, so two drivers are kept apart by reading after writing: a
driver places its claim, then reads every claim on every parent run of the sweep, and goes on
only if it sees no other live claim; otherwise it withdraws its claim and tries again after a
random pause. Of two drivers, the one that reads second sees the first's claim (placed before
the first read, and never withdrawn by a driver that went on), so at most one goes on.

A holder stops acting on the sweep when it has not renewed its claim for 2/3 of the lease (the
store was away, or the process was stopped), before any other driver may take it over; and a
driver that takes a sweep over removes the dead claims, so a holder that comes back finds its
claim gone and stops too. Whichever way a driver ends, it removes its own claim last.
"""

from __future__ import annotations

import json
import math
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from experiments.config import ConfigError
from experiments.stores import TrackingError, rest
from experiments.tracking import Tracker

PREFIX = "lease."
ATTEMPTS = 8  # rounds of claim, read, withdraw before two drivers that keep colliding give up


def lease_seconds() -> float:
    """The silence after which a claim is dead: 120 s, or ``$EXPERIMENTS_LEASE_SECONDS``. A
    holder stops acting after 2/3 of it, 80 s: an outage of the store up to a minute (MLflow's
    own retries) costs no lease."""
    text = os.environ.get("EXPERIMENTS_LEASE_SECONDS", "120")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise ConfigError(f"EXPERIMENTS_LEASE_SECONDS takes seconds > 0, got {text!r}")
    return value


class SweepHeld(TrackingError):
    """Another driver holds the sweep; the message names it (one line)."""


class LeaseLost(RuntimeError):
    """This driver no longer holds its sweep: it stops, and leaves the sweep to the holder."""


@dataclass(frozen=True)
class Claim:
    """Who holds (or asks for) a sweep, as its tag value says."""

    host: str
    pid: int
    pidns: int | None  # the pid namespace: containers on one host share a hostname
    heartbeat: float  # time.time() of the last renewal
    lease_s: float

    @classmethod
    def mine(cls, lease_s: float) -> Claim:
        return cls(socket.gethostname(), os.getpid(), _pid_namespace(), time.time(), lease_s)

    @classmethod
    def parse(cls, text: str) -> Claim | None:
        try:
            return cls(**json.loads(text))
        except (TypeError, ValueError):
            return None  # not a claim this code wrote: ignored

    def text(self) -> str:
        return json.dumps(self.__dict__)

    @property
    def age(self) -> float:
        return max(0.0, time.time() - self.heartbeat)

    def live(self) -> bool:
        if self.age > self.lease_s:
            return False
        here = self.host == socket.gethostname() and self.pidns == _pid_namespace()
        return not here or _process_exists(self.pid)

    def describe(self) -> str:
        return f"host {self.host}, pid {self.pid}, heartbeat {self.age:.0f} s ago"


class Lease:
    """This driver's claim on one sweep: acquired once, renewed by a thread, released at the end.
    Made before the store is touched: a bad ``$EXPERIMENTS_LEASE_SECONDS`` writes nothing."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.lease_s = lease_seconds()
        self.beat_s = min(10.0, self.lease_s / 9)
        self.key = f"{PREFIX}{uuid.uuid4().hex[:12]}"
        self.parent_id: str | None = None
        self._renewed = now()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tags(self) -> dict[str, str]:
        """The claim, as a tag to create a parent run with."""
        return {self.key: Claim.mine(self.lease_s).text()}

    def acquire(
        self, experiment_id: str, sweep_key: str, create: Callable[[dict], str]
    ) -> tuple[str, bool]:
        """Hold the sweep: its latest parent run, or one made by ``create(tags)`` if it has
        none. Returns (parent run id, whether it existed). Raises :class:`SweepHeld`, having
        written nothing, if another driver holds it."""
        for attempt in range(ATTEMPTS):
            parents = self.tracker.sweeps(experiment_id, sweep_key)
            self._refuse_if_held(parents)
            placed = now()  # the claim's heartbeat is no later than this
            if parents:
                parent_id, existed = parents[0].info.run_id, True
                self.tracker.log(parent_id, tags=self.tags())
            else:
                parent_id, existed = create(self.tags()), False
            other = self._other(self.tracker.sweeps(experiment_id, sweep_key))
            if other is None:
                self._hold(parent_id, placed)
                return parent_id, existed
            # Someone claimed at the same time: withdraw, and try again after a random pause.
            if existed:
                self.tracker.delete_tag(parent_id, self.key)
            else:
                self.tracker.delete_run(parent_id)
            time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
        raise SweepHeld(
            f"this sweep is claimed by another driver at the same time ({other.describe()}): "
            "wait for it to finish, or start a separate sweep with --restart"
        )

    def start(self, create: Callable[[dict], str]) -> str:
        """Hold a new parent run made by ``create(tags)``, no question asked (``--restart``:
        a separate sweep, whoever runs the old one)."""
        placed = now()
        parent_id = create(self.tags())
        self._hold(parent_id, placed)
        return parent_id

    def adopt(self, run_id: str, sweep_key: str, tags: dict[str, str]) -> bool:
        """Hold a run made elsewhere as the sweep's parent (``mlflow run``'s): ``tags`` make it
        one, unless it is already this sweep's parent (``mlflow run --run-id``: then it
        resumes). Returns whether it was. Refuses a run of another sweep, or one another driver
        holds, having written nothing."""
        run = self.tracker.run(run_id)
        held_key = run.data.tags.get("sweep_key")
        if held_key not in (None, sweep_key):
            raise ConfigError(
                f"run {run_id} is the parent of another sweep (key {held_key}): give "
                "`mlflow run` no --run-id to start this one"
            )
        self._refuse_if_held([run])
        placed = now()
        self.tracker.log(run_id, tags={**self.tags(), **({} if held_key else tags)})
        other = self._other([self.tracker.run(run_id)])
        if other is not None:  # another driver claimed it at the same moment
            self.tracker.delete_tag(run_id, self.key)
            self._refuse_if_held([self.tracker.run(run_id)])
        self._hold(run_id, placed)
        return held_key is not None

    def held(self) -> bool:
        """Whether this driver may still act on the sweep (renewed recently, claim intact)."""
        silent = now() - self._renewed
        if self._lost is None and silent > 2 * self.lease_s / 3:
            self._lost = f"its claim was not renewed for {silent:.0f} s"
        return self._lost is None

    def check(self) -> None:
        if not self.held():
            raise LeaseLost(
                f"this driver lost the sweep ({self._lost}); another driver may hold it now: "
                "run the same command to resume once it is done"
            )

    def release(self) -> None:
        """Stop renewing, then remove this driver's claim (the next driver need not wait for
        it to go stale), held or lost: a renewal this process was stopped in the middle of
        writes the claim again when it wakes, after a taker removed it. Once the thread has
        stopped, nothing of this driver's can write it again; if it has not, the claim is left
        to go stale."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)  # a renewal is two calls of at most 5 s each
            if self._thread.is_alive():
                return
        if self.parent_id is not None:
            self.tracker.delete_tag(self.parent_id, self.key)

    def abandon(self) -> None:
        """Stop renewing, without a word to the store (it is away): the claim goes stale, or
        dies with this process on its machine."""
        self._stop.set()

    # --- inside -----------------------------------------------------------------------------
    def _hold(self, parent_id: str, placed: float) -> None:
        self.parent_id = parent_id
        self._renewed = placed
        for key in _claims(self.tracker.run(parent_id)):  # dead claims go: their holders stop
            if key != self.key:
                self.tracker.delete_tag(parent_id, key)
        self._thread = threading.Thread(target=self._beat, name="lease", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Renew the claim while it is safe to: never after a silence long enough that another
        driver may have taken over (it waits a whole lease; this stops at 2/3), and never by a
        write so slow (this process stopped in the middle of it) that another driver could
        have read the old heartbeat meanwhile."""
        tracker = Tracker(self.tracker.uri)  # a client of its own for this thread
        while not self._stop.wait(self.beat_s):
            start = now()
            if not self.held():
                return
            try:
                if not renew(tracker, self.parent_id, self.key, self.tags()[self.key]):
                    self._lost = "another driver took it over"
                    return
            except Exception:  # the store is away for now: held() judges by the silence
                continue
            if now() - start > self.lease_s / 3:
                self._lost = f"renewing its claim took {now() - start:.0f} s"
                return
            self._renewed = start

    def _other(self, parents) -> Claim | None:
        """Another live claim on any parent run of the sweep, or None."""
        for run in parents:
            for key, claim in _claims(run).items():
                if key != self.key and claim is not None and claim.live():
                    return claim
        return None

    def _refuse_if_held(self, parents) -> None:
        other = self._other(parents)
        if other is not None:
            raise SweepHeld(
                f"this sweep is being run by another driver ({other.describe()}; it is taken "
                f"for dead after {other.lease_s:.0f} s without one): wait for it to finish, or "
                "start a separate sweep with --restart"
            )


def renew(tracker: Tracker, run_id: str, key: str, value: str, timeout: float = 5.0) -> bool:
    """Set a tag that the run still has, in one quick attempt: False if the tag is gone; an
    exception if the store does not answer. On a server this is one GET and one POST of
    MLflow's REST API without MLflow's minute of retries (the heartbeat tries again on its own
    clock, and must know at once when the server is back)."""
    uri = tracker.uri
    if not uri.startswith(("http://", "https://")):
        if key not in tracker.run(run_id).data.tags:
            return False
        tracker.log(run_id, tags={key: value})
        return True
    found = rest(uri, "GET", "2.0/mlflow/runs/get", {"run_id": run_id}, timeout=timeout)
    if key not in {tag["key"] for tag in found["run"]["data"].get("tags", [])}:
        return False
    rest(uri, "POST", "2.0/mlflow/runs/set-tag", {"run_id": run_id, "key": key, "value": value},
         timeout=timeout)  # fmt: skip
    return True


def _claims(run) -> dict[str, Claim | None]:
    return {k: Claim.parse(v) for k, v in run.data.tags.items() if k.startswith(PREFIX)}


def now() -> float:
    """Seconds on a clock that runs while the machine sleeps (a laptop's lid shut is silence
    too), where there is one."""
    return (
        time.clock_gettime(time.CLOCK_BOOTTIME)
        if hasattr(time, "CLOCK_BOOTTIME")
        else time.monotonic()
    )


def _pid_namespace() -> int | None:
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
