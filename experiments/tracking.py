"""The tracking layer: everything this repo writes to MLflow, and nothing else does.

Speed matters here: MLflow's per-call ``log_metric`` costs milliseconds a point against SQLite,
so each run sends its params, thinned metric series and tags in ``log_batch`` calls, and the full
per-step record as two Parquet artifacts (``history.parquet``, ``trajectory.parquet``).

MLflow is imported where it is first used: its import takes about a second, and the command
line checks its input and the store before paying for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import sqlite3
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from experiments import logins
from experiments.data import digest
from experiments.datasets import Split
from experiments.errors import first_line
from experiments.interrupts import shielded
from experiments.loop import History

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(RuntimeError):
    """The tracking store cannot be used; the message is one line and says why."""


class StoreLost(RuntimeError):
    """The store went away mid-sweep and stayed away longer than the client retries (about a
    minute on a tracking server); the message is one line."""


# MLflow retries an HTTP call with backoff 0, 4, 8, 16, 32 s: an outage of about a minute (a
# server restarted, a network blip) is absorbed; a longer one stops the sweep (StoreLost). Its
# own default, 7 retries, waits four minutes on every call before saying so.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2"}


def unreachable(err: BaseException) -> bool:
    """Whether MLflow gave up on a call because the server did not answer (refused, timed
    out, or 5xx after its retries), not because the call itself was wrong."""
    text = str(err)
    return text.startswith("API request to") and (
        "failed with exception" in text
        or "failed with timeout exception" in text
        or re.search(r"failed with error code 5\d\d", text) is not None
    )


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
def _schema_lock(uri: str):
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


def _write_ahead_log(uri: str) -> None:
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


def thin(n: int, max_points: int) -> np.ndarray:
    """At most ``max_points`` of the steps 0 … n − 1, the first and the last included.

    Up to ``max_points`` steps, every one. Beyond, half the points are spaced evenly (no stretch
    of the curve goes unsampled) and half geometrically, dense at the start, where gradient
    descent moves fastest (a large learning rate's loss falls by orders of magnitude in its
    first steps); the points left where the two coincide bisect the widest gaps.
    """
    if n <= max_points:
        return np.arange(n)
    if max_points <= 2:
        return np.array([n - 1] if max_points == 1 else [0, n - 1])
    even = np.linspace(0, n - 1, max_points // 2)
    early = np.geomspace(1, n, max_points - max_points // 2) - 1
    keep = np.unique(np.round(np.concatenate([even, early])).astype(np.int64))
    while len(keep) < max_points:
        gap = int(np.argmax(np.diff(keep)))
        keep = np.insert(keep, gap + 1, (keep[gap] + keep[gap + 1]) // 2)
    return keep


# The series drawn as curves, sent at up to ``max_metric_points`` points: the losses and
# accuracies, how far w and the gradient are from 0, and the gradient checks on a log10 scale
# (the raw checks live near the float epsilon, and a linear axis labels them 0, 0, 0). Every
# other series (the bias, the raw checks) goes at its first and last step; every series is
# whole in history.parquet.
CURVES = (
    "train/loss",
    "val/loss",
    "train/accuracy",
    "val/accuracy",
    "grad/w_norm",
    "param/w_norm",
    "check/log10_grad_rel_err",
    "check/log10_grad_err_vs_terms",
)
LOG10_FLOOR = 1e-18  # an exact 0 (bit-identical gradients) is drawn at −18


def series(history: History) -> dict[str, np.ndarray]:
    """Every metric as MLflow gets it: the history's, and log10 of each gradient check."""
    out = {name: values.double().numpy() for name, values in history.metrics.items()}
    for name in [n for n in out if n.startswith("check/")]:
        log10 = np.log10(np.maximum(out[name], LOG10_FLOOR))  # NaN (unchecked) stays NaN
        out[name.replace("check/", "check/log10_")] = log10
    return out


def charted(history: History, max_points: int) -> list[tuple[str, float, int]]:
    """(name, value, step) of every point a run sends to MLflow's charts: each of
    :data:`CURVES` at up to ``max_points`` points, every other series at its ends."""
    points = []
    for name, values in series(history).items():
        steps = np.flatnonzero(~np.isnan(values))
        for i in steps[thin(len(steps), max_points if name in CURVES else 2)]:
            points.append((name, float(values[i]), int(i)))
    return points


def history_table(history: History):
    """Every metric at every step, one column each, as an Arrow table (``history.parquet``)."""
    columns = {"step": np.arange(history.steps + 1)}
    columns.update({name: v.double().numpy() for name, v in history.metrics.items()})
    return pa.table(columns)


def trajectory_table(history: History):
    """The kept rows' parameters and gradients as columns ``step, w_0 …, dw_0 …`` (the loop
    keeps every k-th row and the last, as ``max_trajectory_values`` allows). The columns are w
    (logistic regression, whose one-number b is the ``param/b`` series), or W row by row and
    then b (softmax regression)."""
    rows = history.w.shape[0]
    parts = (
        (history.w, history.dw)
        if history.b.ndim == 1
        else (
            torch.cat([history.w.reshape(rows, -1), history.b], 1),
            torch.cat([history.dw.reshape(rows, -1), history.db], 1),
        )
    )
    w, dw = (t.reshape(rows, -1).double().numpy() for t in parts)
    n = w.shape[1]
    names = ["step", *(f"w_{j}" for j in range(n)), *(f"dw_{j}" for j in range(n))]
    arrays = [history.kept.numpy(), *w.T, *dw.T]
    return pa.Table.from_arrays([pa.array(a) for a in arrays], names=names)


def retry_when_locked(method):
    """SQLite lets one writer in at a time; parallel workers see transient `database is
    locked` errors. Retry those with backoff (~10 s besides SQLite's own 20 s wait in each
    try), and a unique key two processes inserted at once (two sweeps logging the same dataset:
    the retry finds it there). A server that stopped answering (MLflow has retried it already),
    or a SQLite file locked through every try (a process stopped mid-write holds its one write
    lock until it goes on), is :class:`StoreLost`; anything else goes through."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        began = time.monotonic()
        with shielded():  # an interrupt waits for the call: no transaction cut in half
            for attempt in range(12):
                try:
                    return method(self, *args, **kwargs)
                except Exception as err:
                    if unreachable(err):
                        lost = f"tracking store {self.uri} went away: {first_line(err, limit=300)}"
                        raise StoreLost(lost) from None
                    if refused := logins.refusal(err, self.uri, method.__name__):
                        raise TrackingError(refused) from None
                    locked = "database is locked" in str(err)
                    if locked and attempt == 11:
                        waited = time.monotonic() - began
                        raise StoreLost(
                            f"tracking store {self.uri} stayed locked by another process for "
                            f"{waited:.0f} s: {first_line(err, limit=300)}"
                        ) from None
                    clash = any(t in str(err) for t in ("IntegrityError", "UNIQUE constraint"))
                    if not (locked or clash) or attempt == 11:
                        raise
                    time.sleep(min(0.02 * 2**attempt, 2.0))
        raise AssertionError("unreachable")

    return wrapper


class Tracker:
    """One MLflow store: open it once, then create, fill and end runs in it."""

    def __init__(self, uri: str | None = None) -> None:
        self.uri = resolve_uri(uri)
        self._client = None
        self._inputs: dict[tuple, object] = {}
        self._artifact_uris: dict[str, str] = {}

    @property
    def client(self):
        if self._client is None:
            # Imported here: the CLI validates its input before paying for MLflow's import.
            # Importing mlflow sets its loggers to INFO; quiet them before the store is made.
            from mlflow import MlflowClient

            for name in ("mlflow", "alembic"):
                logging.getLogger(name).setLevel(logging.WARNING)
            # Its SQL store logs each database error with its traceback, then raises it:
            # retry_when_locked takes what passes, and the sweep says in one line what does not.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            # On a tracking server MLflow prints two "View run" lines per run it ends: a sweep
            # prints its progress and one runs page instead.
            os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
            for name, value in HTTP_RETRIES.items():  # the user's own settings win
                os.environ.setdefault(name, value)
            self._client = MlflowClient(self.uri)
        return self._client

    def open(self) -> None:
        """Check the store is there, and create its schema once (before any parallel work)."""
        check_reachable(self.uri)
        try:
            with shielded(), _schema_lock(self.uri):  # may create or migrate the schema
                self.client.search_experiments(max_results=1)
                _write_ahead_log(self.uri)
        except Exception as err:  # MLflow raises many kinds; the user needs the first line
            raise TrackingError(
                f"tracking store {self.uri} cannot be used: {first_line(err, limit=300)}"
            ) from None

    @retry_when_locked
    def experiment(self, name: str) -> str:
        """The experiment's id, created on first use (artifacts beside a SQLite store); on a
        server with logins, one this user may write runs to."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            self._check_writable(found.experiment_id, name)
            return found.experiment_id
        location = None
        path = sqlite_path(self.uri)
        if path is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            location = (path.resolve().parent / "mlartifacts" / slug).as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:
            found = self.client.get_experiment_by_name(name)  # another driver made it just now
            if found is None:
                raise
            return found.experiment_id

    def _check_writable(self, experiment_id: str, name: str) -> None:
        """Before anything is written: may this login write runs to the experiment? (MLflow's
        basic-auth app answers for the asking user; a server without it has no such call.)"""
        user = os.environ.get("MLFLOW_TRACKING_USERNAME")
        if not self.uri.startswith(("http://", "https://")) or not user:
            return
        from requests import HTTPError  # MLflow's own HTTP client: imported with it

        asked = {"username": user, "resource_type": "experiment", "resource_id": experiment_id}
        try:
            found = self.rest("GET", "3.0/mlflow/users/permissions/get", asked)
        except HTTPError as err:
            if err.response.status_code == 404:
                return  # no logins on this server (or an MLflow without the call)
            raise
        if found.get("permission") not in ("EDIT", "MANAGE") and not self._is_admin(user):
            raise TrackingError(
                f"user {user!r} may not write runs to experiment {name!r} on {self.uri} "
                f"(it has {found.get('permission')}): its admin grants it with "
                f"make tracking-user NAME={user} ROLE=edit"
            )

    def _is_admin(self, user: str) -> bool:
        found = self.rest("GET", "2.0/mlflow/users/get", {"username": user})
        return bool(found.get("user", {}).get("is_admin"))

    @retry_when_locked
    def start_run(
        self,
        experiment_id: str,
        name: str,
        *,
        tags: Mapping[str, str],
        parent_id: str | None = None,
    ) -> str:
        all_tags = dict(tags)
        if parent_id is not None:
            all_tags["mlflow.parentRunId"] = parent_id
        run = self.client.create_run(experiment_id, run_name=name, tags=all_tags)
        self._artifact_uris[run.info.run_id] = run.info.artifact_uri
        return run.info.run_id

    @retry_when_locked
    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, object] = (),
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        """Params, single-valued metrics and tags in one batch."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in dict(metrics).items()],
            params=[Param(k, str(v)) for k, v in dict(params).items()],
            tags=[RunTag(k, str(v)) for k, v in dict(tags).items()],
        )

    @retry_when_locked
    def log_run(
        self,
        run_id: str,
        history: History,
        *,
        max_points: int,
        params: Mapping[str, object],
        metrics: Mapping[str, float] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        """A finished run's record in as few calls as MLflow allows: ``log_batch`` calls of
        at most 1,000 metrics (MLflow's limit), the first with the params and tags, carrying the
        single metrics and every series (:data:`CURVES` at up to ``max_points`` points, the
        rest at their first and last step), and one upload of the complete per-step record as
        ``history.parquet`` and ``trajectory.parquet`` (with the param ``trajectory_every``:
        the spacing of its rows, 1 when every step is there)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items()]
        points += [Metric(k, v, now, step) for k, v, step in charted(history, max_points)]
        params = {**params, "trajectory_every": history.every}
        params = [Param(k, str(v)) for k, v in params.items()]
        tags = [RunTag(k, str(v)) for k, v in dict(tags).items()]
        tables = {
            "history.parquet": history_table(history),
            "trajectory.parquet": trajectory_table(history),
        }
        # The files go up while the database takes the batch: Arrow and file I/O release
        # the GIL, so the two overlap (an error in either is raised here).
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(self._log_tables, run_id, tables)
            for start in range(0, max(len(points), 1), 1000):
                self.client.log_batch(
                    run_id,
                    metrics=points[start : start + 1000],
                    params=params if start == 0 else [],
                    tags=tags if start == 0 else [],
                )
            upload.result()

    def _log_tables(self, run_id: str, tables: Mapping[str, object]) -> None:
        """Arrow tables as Parquet artifacts, straight to the run's artifact store (MLflow's own
        repository for its URI: a local folder, or the server's proxied store)."""
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        uri = self._artifact_uris.get(run_id) or self.client.get_run(run_id).info.artifact_uri
        with tempfile.TemporaryDirectory() as tmp:
            for name, table in tables.items():
                # Dictionary encoding only slows float columns down (it is tried, then dropped).
                pq.write_table(table, Path(tmp) / name, use_dictionary=False)
            get_artifact_repository(uri, tracking_uri=self.uri).log_artifacts(tmp)

    @retry_when_locked
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @retry_when_locked
    def log_dataset(self, run_id: str, key: tuple, name: str, loader: str, split: Split) -> None:
        """The training and validation data as run inputs, each with a full-content digest;
        ``key`` is (dataset, seed, val_fraction)."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag

        if key not in self._inputs:
            source = CodeDatasetSource(tags={"loader": loader})
            inputs = []
            for context in ("train", "val"):
                X, y = getattr(split, f"X_{context}"), getattr(split, f"y_{context}")
                dataset = from_numpy(
                    X,
                    source=source,
                    targets=y,
                    name=f"{name} s{key[1]} {context}",
                    digest=digest(X, y),
                )
                tags = [InputTag("mlflow.data.context", context)]
                inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags))
            self._inputs[key] = inputs
        self.client.log_inputs(run_id, datasets=self._inputs[key])

    @retry_when_locked
    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    @retry_when_locked
    def status(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.status

    @retry_when_locked
    def reopen(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")

    @retry_when_locked
    def sweeps(self, experiment_id: str, sweep_key: str) -> list:
        """Every parent run of the sweep with this key, the latest first."""
        return list(
            self.client.search_runs(
                [experiment_id],
                f"tags.sweep_key = '{sweep_key}'",
                order_by=["attributes.start_time DESC"],
                max_results=1000,
            )
        )

    @retry_when_locked
    def run(self, run_id: str):
        return self.client.get_run(run_id)

    def renew(self, run_id: str, key: str, value: str, timeout: float = 5.0) -> bool:
        """Set a tag that the run still has, in one quick attempt: False if the tag is gone;
        an exception if the store does not answer. On a server this is one GET and one POST
        of MLflow's REST API without MLflow's minute of retries (a lease's heartbeat tries
        again on its own clock, and must know at once when the server is back)."""
        if not self.uri.startswith(("http://", "https://")):
            if key not in self.run(run_id).data.tags:
                return False
            self.log(run_id, tags={key: value})
            return True
        found = self.rest("GET", "2.0/mlflow/runs/get", {"run_id": run_id}, timeout=timeout)
        if key not in {tag["key"] for tag in found["run"]["data"].get("tags", [])}:
            return False
        tag = {"run_id": run_id, "key": key, "value": value}
        self.rest("POST", "2.0/mlflow/runs/set-tag", tag, timeout=timeout)
        return True

    def rest(self, method: str, path: str, body: dict | None = None, *, timeout: float = 10.0):
        """One call of a server's REST API (``path`` after ``/api/``: ``2.0/mlflow/runs/get``;
        ``body`` is the query of a GET, the JSON of anything else), no retries, with the
        credentials MLflow's own client would send (``MLFLOW_TRACKING_USERNAME``/``PASSWORD``,
        ``TOKEN``, ...); a ``requests.HTTPError`` for an answer that is not 2xx."""
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        payload = {"params" if method == "GET" else "json": body} if body is not None else {}
        reply = http_request(
            get_default_host_creds(self.uri), f"/api/{path}", method,
            max_retries=0, timeout=timeout, **payload,
        )  # fmt: skip
        reply.raise_for_status()
        return reply.json() if reply.content else {}

    @retry_when_locked
    def delete_tag(self, run_id: str, key: str) -> None:
        try:
            self.client.delete_tag(run_id, key)
        except Exception as err:
            if getattr(err, "error_code", None) != "RESOURCE_DOES_NOT_EXIST":
                raise  # gone already is what was asked for; anything else is not

    @retry_when_locked
    def delete_run(self, run_id: str) -> None:
        self.client.delete_run(run_id)

    def latest_sweep(self, experiment_id: str | None = None):
        """The most recently started sweep parent run of the experiment (any experiment if
        None), or None."""
        experiments = (
            [experiment_id]
            if experiment_id is not None
            else [e.experiment_id for e in self.client.search_experiments()]
        )
        if not experiments:
            return None
        found = self.client.search_runs(
            experiments,
            "tags.kind = 'sweep'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return found[0] if found else None

    @retry_when_locked
    def children(self, experiment_id: str, parent_id: str) -> list:
        """Every run under ``parent_id``, in pages."""
        runs, token = [], None
        while True:
            page = self.client.search_runs(
                [experiment_id],
                f"tags.mlflow.parentRunId = '{parent_id}'",
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs
