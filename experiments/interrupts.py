"""Ctrl-C and SIGTERM that never cut a write to the tracking store in half.

Python raises a signal's exception in the main thread between any two bytecodes: inside
SQLAlchemy's commit, or inside the ``session.close()`` that would have rolled a transaction
back. A SQLite connection cut off there keeps its write lock while the exception is alive, and
the driver's next write (marking the runs in flight KILLED) then waits on its own lock.

So while the main thread is inside a tracking call (:func:`shielded`), an interrupt is held
and raised as the call returns; a second one while the first is held goes through at once
(press Ctrl-C twice to force). Worker processes install nothing: the driver stops them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class Interrupted(BaseException):
    """SIGTERM (or another signal) asked the sweep to stop; ``exit_code`` is 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.exit_code = 128 + signum


_depth = 0  # tracking calls the main thread is inside
_pending: int | None = None  # a signal that arrived meanwhile


def _raise(signum: int) -> None:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Interrupted(signum)


def _handler(signum: int, frame) -> None:
    global _pending
    if _depth and _pending is None:
        _pending = signum
        return
    _pending = None
    _raise(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """SIGINT and SIGTERM handled as above for the duration (the CLI's whole command)."""
    global _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending = None


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Hold interrupts until the block ends (main thread only; elsewhere a no-op)."""
    global _depth, _pending
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0 and _pending is not None:
            signum, _pending = _pending, None
            _raise(signum)
