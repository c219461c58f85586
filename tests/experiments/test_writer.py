"""The background writer: what it is handed it records and ends, or marks FAILED with the
reason; what it cannot record (it died, the store went away) drain() names, still RUNNING."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from experiments.config import RunConfig, build
from experiments.tracking import Tracker
from experiments.training import train_pass
from experiments.writer import Writer

CONFIG = {"dataset": "iris", "impl": "manual", "lr": 0.5, "device": "cpu", "steps": 30}


@pytest.fixture(scope="module")
def trained():
    """A trained run to hand over (a RunResult: config, history, shape)."""
    (result,) = train_pass([build(RunConfig, CONFIG)])
    return result


def store(folder: Path) -> tuple[Tracker, str]:
    tracker = Tracker(f"sqlite:///{folder / 'mlflow.db'}")
    tracker.open()
    return tracker, tracker.experiment("writer")


def ready(writer: Writer, timeout: float = 120) -> Writer:
    deadline = time.monotonic() + timeout
    while not writer.ready():
        assert time.monotonic() < deadline, "the writer did not come up"
        time.sleep(0.1)
    return writer


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A store and a writer that is up, shared by the tests of what it records (starting one
    costs seconds of imports); Ctrl-C and a scheduler's SIGTERM reach it first, and it ignores
    them."""
    folder = tmp_path_factory.mktemp("writer")
    tracker, experiment = store(folder)
    writer = ready(Writer(tracker.uri))
    for stop in (signal.SIGINT, signal.SIGTERM):
        os.kill(writer.pid, stop)
    yield tracker, experiment, writer, folder
    writer.close()


def test_a_run_handed_over_is_recorded_and_ended(served, trained):
    tracker, experiment, writer, _ = served
    run_id = tracker.start_run(experiment, "r", tags={})
    writer.write(run_id, trained, inputs=True, guard=False)
    assert writer.drain() == set()
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(MlflowClient(tracker.uri).get_metric_history(run_id, "train/loss")) == 31
    names = {a.path for a in MlflowClient(tracker.uri).list_artifacts(run_id)}
    assert names == {"history.parquet", "trajectory.parquet"}
    assert {i.tags[0].value for i in run.inputs.dataset_inputs} == {"train", "val"}


def test_a_run_it_cannot_record_ends_failed_with_the_reason(served, trained):
    """Artifacts that cannot be written (their folder would sit under a file): the run is
    FAILED, not FINISHED and not left RUNNING."""
    tracker, _, writer, folder = served
    (folder / "a-file").write_text("not a folder")
    unwritable = (folder / "a-file" / "artifacts").as_uri()
    experiment = tracker.client.create_experiment("unwritable", artifact_location=unwritable)
    run_id = tracker.start_run(experiment, "r", tags={})
    writer.write(run_id, trained, inputs=False, guard=False)
    assert writer.drain() == set()
    run = MlflowClient(tracker.uri).get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["failure"] == "error"
    assert run.data.tags["failure_reason"].startswith("recording failed: ")


def test_a_writer_that_dies_names_the_runs_it_left(tmp_path, trained):
    tracker, experiment = store(tmp_path)
    run_ids = [tracker.start_run(experiment, f"r{i}", tags={}) for i in range(3)]
    writer = ready(Writer(tracker.uri))
    os.kill(writer.pid, signal.SIGKILL)
    for run_id in run_ids:
        writer.write(run_id, trained, inputs=False, guard=False)
    assert writer.drain() == set(run_ids)
    writer.close()
    assert {tracker.status(run_id) for run_id in run_ids} == {"RUNNING"}  # for the sweep to end
