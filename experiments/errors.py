"""What a one-line error quotes of an exception: its first line (the messages of MLflow, SQLite
and Dask run to a traceback's length: SQL, parameters, a link)."""

from __future__ import annotations


def first_line(err: BaseException, *, named: bool = False, limit: int | None = None) -> str:
    """The message's first line (at most ``limit`` characters), else the exception's type;
    ``named``: always ``Type: first line``, as a run's ``failure_reason`` records it."""
    text = str(err).strip()
    line = text.splitlines()[0][:limit] if text else ""
    if named:
        return f"{type(err).__name__}: {line}"
    return line or type(err).__name__
