"""The retry policy of every call to the tracking store, and what its failures mean.

SQLite lets one writer in at a time, so parallel workers see transient ``database is locked``
errors: those are retried. A server that stopped answering (MLflow has retried it already), a
SQLite file locked through every try, or a store with no room left is :class:`StoreLost`: the
sweep stops with one line and exit code 75, and the same command resumes. A refused login is a
:class:`~experiments.stores.TrackingError`. Anything else is the call's own error and goes
through.
"""

from __future__ import annotations

import functools
import re
import time

from experiments import logins
from experiments.errors import first_line
from experiments.interrupts import shielded
from experiments.stores import TrackingError, sqlite_path, unusable

# MLflow retries an HTTP call with backoff 0, 4, 8, 16, 32 s: an outage of about a minute (a
# server restarted, a network blip) is absorbed; a longer one stops the sweep (StoreLost). Its
# own default, 7 retries, waits four minutes on every call before saying so.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}
TRIES = 12  # a locked SQLite store: ~10 s of backoff, besides SQLite's own 20 s in each try

# How a full disk reads: SQLite's SQLITE_FULL, ENOSPC from a file write (ours, or an artifact
# store's), PostgreSQL's "could not extend file", on this machine or in a server's 500 reply.
FULL = re.compile(r"database or disk is full|No space left on device|could not extend file")


class StoreLost(RuntimeError):
    """The store went away mid-sweep and stayed away longer than the client retries (about a
    minute on a tracking server), or has no room left; the message is one line."""


class StoreFull(StoreLost):
    """The store's disk (its database or its artifacts) is full; the message says what to free."""


def unreachable(err: BaseException) -> bool:
    """Whether MLflow gave up on a call because the server did not answer (refused, timed
    out, or 5xx after its retries), not because the call itself was wrong."""
    text = str(err)
    return text.startswith("API request to") and (
        "failed with exception" in text
        or "failed with timeout exception" in text
        or re.search(r"failed with error code 5\d\d", text) is not None
    )


def full(uri: str, err: BaseException) -> StoreFull | None:
    """The one line for a write refused for lack of space (None if ``err`` is something else):
    which store, and where to make room."""
    text = str(err)
    match = FULL.search(text)
    if match is None:
        return None
    path = sqlite_path(uri)
    where = (
        f"the filesystem holding {path.resolve().parent} (df -h {path.resolve().parent})"
        if path is not None
        else "the server's database or artifact disk"
    )
    return StoreFull(
        f"tracking store {uri} is full ({match.group(0)}): free space on {where}, then run the "
        "same command: it resumes"
    )


def lost(uri: str, call: str, err: BaseException) -> StoreLost:
    """The one line for a server call MLflow gave up on: the server is away, or it answers
    ``/health`` but failed the call through every retry (a full database or artifact disk
    answers 500, and MLflow's retries drop the reply that says so)."""
    quoted = first_line(err, limit=300)
    if unusable(uri) is None:
        return StoreLost(
            f"tracking server {uri} answers, but failed {call} with server errors through "
            f"every retry (a full database or artifact disk does this: see the server's log): "
            f"{quoted}"
        )
    return StoreLost(f"tracking store {uri} went away: {quoted}")


def retry_when_locked(method):
    """Retry a :class:`~experiments.tracking.Tracker` method while SQLite is locked (with
    backoff), and a unique key two processes inserted at once (two sweeps logging the same
    dataset: the retry finds it there); turn a lost, full or locked-for-good store into
    :class:`StoreLost` and a refused login into ``TrackingError``, each one line. An interrupt
    waits for the call: no transaction is cut in half."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        began = time.monotonic()
        with shielded():
            for attempt in range(TRIES):
                try:
                    return method(self, *args, **kwargs)
                except Exception as err:
                    last = attempt == TRIES - 1
                    if (no_room := full(self.uri, err)) is not None:
                        raise no_room from None
                    if unreachable(err):
                        raise lost(self.uri, method.__name__, err) from None
                    if refused := logins.refusal(err, self.uri, method.__name__):
                        raise TrackingError(refused) from None
                    locked = "database is locked" in str(err)
                    if locked and last:
                        waited = time.monotonic() - began
                        raise StoreLost(
                            f"tracking store {self.uri} stayed locked by another process for "
                            f"{waited:.0f} s: {first_line(err, limit=300)}"
                        ) from None
                    clash = any(t in str(err) for t in ("IntegrityError", "UNIQUE constraint"))
                    if not (locked or clash) or last:
                        raise
                    time.sleep(min(0.02 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    return wrapper
