"""The MLflow client: every call this repo makes to a tracking store, through the retry policy.

Speed matters here: MLflow's per-call ``log_metric`` costs milliseconds a point against SQLite,
so a run's params, thinned metric series and tags go in ``log_batch`` calls, and its full
per-step record as Parquet artifacts. What a run writes is :mod:`experiments.records`' to say;
whether a store can be used, :mod:`experiments.stores`'; how a failed call is retried or
reported, :mod:`experiments.retries`'.

MLflow is imported where it is first used: its import takes about a second, and the command
line checks its input and the store before paying for it.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq

from experiments.data import digest
from experiments.errors import first_line
from experiments.interrupts import shielded
from experiments.retries import HTTP_RETRIES, StoreLost, full, retry_when_locked
from experiments.stores import (
    TrackingError,
    check_may_write,
    check_reachable,
    resolve_uri,
    schema_lock,
    sqlite_path,
    write_ahead_log,
)

__all__ = ["StoreLost", "Tracker", "TrackingError", "batches"]

BATCH = 1000  # MLflow's limit of metrics in one log_batch


def batches(
    params: Mapping[str, object] = (),
    metrics: Mapping[str, float] = (),
    tags: Mapping[str, str] = (),
    points: Sequence[tuple[str, float, int]] = (),
) -> Iterator[dict[str, list]]:
    """The ``log_batch`` calls for a record: ``metrics`` at step 0, then every point, at most
    :data:`BATCH` a call, the params and tags with the first (one call when all is empty)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    values = [Metric(k, float(v), now, 0) for k, v in dict(metrics).items()]
    values += [Metric(k, float(v), now, step) for k, v, step in points]
    for start in range(0, max(len(values), 1), BATCH):
        first = start == 0
        yield {
            "metrics": values[start : start + BATCH],
            "params": [Param(k, str(v)) for k, v in dict(params).items()] if first else [],
            "tags": [RunTag(k, str(v)) for k, v in dict(tags).items()] if first else [],
        }


def _mlflow_client(uri: str):
    """MLflow's client of the store, MLflow quieted first. Imported here: the CLI validates its
    input before paying for MLflow's import."""
    from mlflow import MlflowClient

    # Importing mlflow sets its loggers to INFO; quiet them before the store is made.
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
    return MlflowClient(uri)


def upload(uri: str, artifacts: str, tables: Mapping[str, object]) -> None:
    """Arrow tables as Parquet files, straight to a run's artifact store at ``artifacts``
    (MLflow's own repository for it: a local folder, or the server's proxied store)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    with tempfile.TemporaryDirectory() as tmp:
        for name, table in tables.items():
            # Dictionary encoding only slows float columns down (it is tried, then dropped).
            pq.write_table(table, Path(tmp) / name, use_dictionary=False)
        get_artifact_repository(artifacts, tracking_uri=uri).log_artifacts(tmp)


# MLflow 3's UI has two views of an experiment, GenAI (traces, judges, an assistant) and model
# training (the runs); the experiment's kind tag, and the link's workflowType, choose the one.
KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"


def runs_page(experiment_id: str) -> str:
    """The UI's path to an experiment's runs, in the model-training view."""
    return f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"


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
            self._client = _mlflow_client(self.uri)
        return self._client

    def open(self) -> None:
        """Check the store is there, and create its schema once (before any parallel work)."""
        check_reachable(self.uri)
        try:
            with shielded(), schema_lock(self.uri):  # may create or migrate the schema
                self.client.search_experiments(max_results=1)
                write_ahead_log(self.uri)
        except Exception as err:  # MLflow raises many kinds; the user needs the first line
            if (no_room := full(self.uri, err)) is not None:
                raise no_room from None
            raise TrackingError(
                f"tracking store {self.uri} cannot be used: {first_line(err, limit=300)}"
            ) from None

    @retry_when_locked
    def experiment(self, name: str) -> str:
        """The experiment's id, created on first use (artifacts beside a SQLite store); on a
        server with logins, one this user may write runs to. Its kind is model training, so
        the UI opens it on its runs, not on traces."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            check_may_write(self.uri, found.experiment_id, name)
            if found.tags.get(KIND) is None:  # made before this tag was set
                self.client.set_experiment_tag(found.experiment_id, KIND, MODEL_TRAINING)
            return found.experiment_id
        location = None
        path = sqlite_path(self.uri)
        if path is not None:
            slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
            location = (path.resolve().parent / "mlartifacts" / slug).as_uri()
        try:
            return self.client.create_experiment(
                name, artifact_location=location, tags={KIND: MODEL_TRAINING}
            )
        except Exception:
            found = self.client.get_experiment_by_name(name)  # another driver made it just now
            if found is None:
                raise
            return found.experiment_id

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
        points: Sequence[tuple[str, float, int]] = (),
        tables: Mapping[str, object] = (),
    ) -> None:
        """Params, single-valued metrics, ``(name, value, step)`` points and tags in as few
        ``log_batch`` calls as MLflow allows, and ``tables`` (file name → Arrow table) as
        Parquet artifacts, uploaded while the database takes the batches (Arrow and file I/O
        release the GIL, so the two overlap; an error in either is raised here)."""
        client = self.client  # MLflow imported in this thread before the upload's imports it
        calls = list(batches(params, metrics, tags, points))
        with ThreadPoolExecutor(1) as pool:
            upload = pool.submit(self._upload, run_id, tables) if tables else None
            for batch in calls:
                client.log_batch(run_id, **batch)
            if upload is not None:
                upload.result()

    def _upload(self, run_id: str, tables: Mapping[str, object]) -> None:
        artifacts = self._artifact_uris.get(run_id) or self.client.get_run(run_id).info.artifact_uri
        upload(self.uri, artifacts, tables)

    @retry_when_locked
    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    @retry_when_locked
    def log_dataset(
        self, run_id: str, key: tuple, name: str, loader: str, parts: Mapping[str, tuple]
    ) -> None:
        """Data as run inputs: ``parts`` maps a context (train, val) to its (X, y), each
        logged with a full-content digest and made once per ``key`` in this process."""
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.numpy_dataset import from_numpy
        from mlflow.entities import DatasetInput, InputTag

        if key not in self._inputs:
            source = CodeDatasetSource(tags={"loader": loader})
            inputs = []
            for context, (X, y) in parts.items():
                dataset = from_numpy(
                    X,
                    source=source,
                    targets=y,
                    name=f"{name} {context}",
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

    @retry_when_locked
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
