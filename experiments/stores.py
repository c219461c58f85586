"""Whether a tracking store can be used, asked of the store itself before anything trains.

The checks MLflow's client would otherwise answer after minutes of retries, or with a
traceback: is the URI one this repo takes (and without a password), does a server answer
``/health`` and let this login in, may the login write runs to the experiment, can a SQLite
file be written. And what a SQLite store needs before parallel use: its schema made by one
process at a time, and write-ahead logging. :func:`rest` is a server's REST API in one call,
without retries, for these checks and the lease's heartbeat.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from experiments import logins

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line and says why."""


def resolve_uri(uri: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else MLflow's default local store;
    never one with a password in it."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if why := logins.password_in(uri):
        raise TrackingError(why)
    return uri


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast, before any training, on a store that cannot be reached or written."""
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme == "sqlite":
        path = sqlite_path(uri)
        if path is None or str(path) in ("", "."):
            raise TrackingError(
                f"bad SQLite URI {uri!r}; write sqlite:///relative.db or sqlite:////abs.db"
            )
        folder = path.resolve().parent
        if not folder.is_dir():
            raise TrackingError(f"tracking store {uri!r}: folder {str(folder)!r} does not exist")
        _check_sqlite_writable(uri, path)
    elif scheme in ("http", "https"):
        base = uri.rstrip("/")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=timeout) as reply:
                if reply.status != 200:
                    raise TrackingError(f"tracking server {uri} answered {reply.status} on /health")
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise TrackingError(f"tracking server {uri} cannot be reached: {reason}") from None
        _check_login(base, timeout)
    elif scheme in ("postgresql", "mysql", "mssql") or scheme.startswith(("postgresql+", "mysql+")):
        pass  # reached when the store opens, still before any training
    else:
        raise TrackingError(
            f"unsupported tracking URI {uri!r}; use sqlite:///PATH.db, http(s)://HOST:PORT "
            "or a database URI (postgresql://...)"
        )


def unusable(uri: str) -> str | None:
    """Why this process cannot use the store (:func:`check_reachable`'s one line), or None: what
    a worker of a cluster answers, from its own environment and network."""
    try:
        check_reachable(uri)
    except TrackingError as err:
        return str(err)
    return None


def _check_login(base: str, timeout: float) -> None:
    """A server with logins (MLflow's basic-auth app) answers 401 to a request without a good
    one: say so now, in one line, rather than on the first write."""
    asked = urllib.request.Request(
        f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers=logins.headers()
    )
    try:
        urllib.request.urlopen(asked, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise TrackingError(logins.not_let_in(base)) from None
    except (urllib.error.URLError, OSError):
        pass  # /health answered: the store's first call says what is wrong


def _check_sqlite_writable(uri: str, path: Path) -> None:
    """Probe what MLflow would otherwise retry for minutes: can this file be written?"""
    try:
        if path.exists():
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True)) as con:
                con.execute("BEGIN IMMEDIATE")  # takes the write lock: fails on a read-only file
                con.rollback()
        else:
            with tempfile.NamedTemporaryFile(dir=path.resolve().parent):
                pass
    except (OSError, sqlite3.Error) as err:
        raise TrackingError(f"tracking store {uri!r} cannot be written: {err}") from None


@contextlib.contextmanager
def schema_lock(uri: str):
    """One process at a time creates or migrates a SQLite store's schema: MLflow's migrations
    run by two processes at once (two drivers started together) break each other and leave
    the store half made. The lock is on the database file itself (flock, which SQLite's own
    locks do not see); a server creates its schema itself."""
    path = sqlite_path(uri)
    if path is None:
        yield
        return
    with open(path, "a") as handle:  # an empty file is a new database to SQLite
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_ahead_log(uri: str) -> None:
    """Put a SQLite store in write-ahead-log mode, once (the file keeps it). In SQLite's default
    mode a reader blocks the writer's commit: a driver frozen mid-read (Ctrl-Z, SIGSTOP, a
    paused VM) stops every other process's writes until it wakes, and the UI reading a live
    sweep makes the sweep wait. With the log, readers and the one writer never wait for each
    other (sqlite.org/wal.html). Switching needs no other process inside a read or a write:
    if one is, the store stays as it is, and the next open tries again."""
    path = sqlite_path(uri)
    if path is None:
        return
    with (
        contextlib.closing(sqlite3.connect(path, timeout=5)) as con,
        contextlib.suppress(sqlite3.OperationalError),
    ):
        con.execute("PRAGMA journal_mode=WAL")


def check_may_write(uri: str, experiment_id: str, name: str) -> None:
    """Before anything is written: may this login write runs to the experiment? (MLflow's
    basic-auth app answers for the asking user; a server without it has no such call.)"""
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    if not uri.startswith(("http://", "https://")) or not user:
        return
    from requests import HTTPError  # MLflow's own HTTP client: imported with it

    asked = {"username": user, "resource_type": "experiment", "resource_id": experiment_id}
    try:
        found = rest(uri, "GET", "3.0/mlflow/users/permissions/get", asked)
    except HTTPError as err:
        if err.response.status_code == 404:
            return  # no logins on this server (or an MLflow without the call)
        raise
    if found.get("permission") in ("EDIT", "MANAGE"):
        return
    if rest(uri, "GET", "2.0/mlflow/users/get", {"username": user}).get("user", {}).get("is_admin"):
        return
    raise TrackingError(
        f"user {user!r} may not write runs to experiment {name!r} on {uri} "
        f"(it has {found.get('permission')}): its admin grants it with "
        f"make tracking-user NAME={user} ROLE=edit"
    )


def rest(uri: str, method: str, path: str, body: dict | None = None, *, timeout: float = 10.0):
    """One call of a server's REST API (``path`` after ``/api/``: ``2.0/mlflow/runs/get``;
    ``body`` is the query of a GET, the JSON of anything else), no retries, with the
    credentials MLflow's own client would send (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``,
    ``TOKEN``, ...); a ``requests.HTTPError`` for an answer that is not 2xx."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    payload = {"params" if method == "GET" else "json": body} if body is not None else {}
    reply = http_request(
        get_default_host_creds(uri), f"/api/{path}", method,
        max_retries=0, timeout=timeout, **payload,
    )  # fmt: skip
    reply.raise_for_status()
    return reply.json() if reply.content else {}
