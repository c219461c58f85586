"""A sweep: the grid's training passes on an engine, every run recorded in the store, resumable.

This is the one module that knows both the training (:mod:`experiments.training`, plain
PyTorch) and the store (:mod:`experiments.tracking`, :mod:`experiments.records`). The state of
a sweep in progress is a :class:`Sweep`: its parent run, the grid points already finished, the
runs in flight. The driver creates every run before handing its pass to the engine, so a pass
whose worker raises or dies is marked FAILED here, and an interrupt marks what is in flight
KILLED: nothing is left RUNNING, and the same command resumes.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

import click
import pandas as pd

from experiments import edges, findings, halving, lr_batch, models, records
from experiments.choices import HalvingConfig
from experiments.config import RunConfig, SweepConfig
from experiments.engines import Engine, open_engine
from experiments.errors import first_line
from experiments.interrupts import shielded
from experiments.lease import Lease
from experiments.retries import StoreLost
from experiments.stores import check_reachable, unusable
from experiments.tracking import Tracker
from experiments.training import RunResult, train_pass
from experiments.writer import Writer

BACKGROUND_AFTER_S = 2.0  # a sweep still training after this long starts a writer


@dataclass
class SweepOutcome:
    experiment_id: str
    parent_id: str | None
    runs: pd.DataFrame  # one row per run of this sweep (every attempt), from the store
    seconds: float
    train_seconds: float  # inside the passes; the rest is tracking and bookkeeping
    skipped: int  # grid points already FINISHED by an earlier invocation of the same sweep


def run_sweep(
    config: SweepConfig,
    tracker: Tracker,
    *,
    engine: Engine | None = None,
    workers: int = 1,
    experiment: str | None = None,
    command: str = "",
    nested: bool = True,
    progress: bool = True,
    restart: bool = False,
    outer_run: str | None = None,
) -> SweepOutcome:
    """Train and record every grid point not finished yet, on ``engine`` (else the one the
    config names, with ``workers``), which this opens, checks and closes.

    Running the same sweep again resumes it: the parent run is reopened, grid points whose
    config key already FINISHED under it are skipped, and runs left RUNNING by a killed
    process are marked KILLED and run again. One driver at a time: while another holds the
    sweep's lease (:mod:`experiments.lease`) this one stops before writing anything.
    ``restart`` starts a fresh parent instead, whoever runs the old one; ``nested=False``
    (``experiments train``) records the runs without a parent. ``outer_run``: the run
    ``mlflow run`` made (its ``MLFLOW_RUN_ID``) becomes the parent, in its experiment.
    """
    lease = Lease(tracker) if nested else None  # a sweep with a parent is held by one driver
    check_reachable(tracker.uri)  # before an engine starts, and before anything is written
    engine = engine or open_engine(config.engine, config.address, workers)
    with engine:  # closed at the end; stopped at once on any error
        engine.check(functools.partial(unusable, tracker.uri))
        config = config.on(engine.devices(), engine.where())
        if progress:
            click.echo(f"engine: {engine.describe()}", err=True)
        grid = config.grid()
        tracker.open()
        if outer_run is None:
            experiment_id = tracker.experiment(experiment or config.name)
        else:
            experiment_id = tracker.run(outer_run).info.experiment_id
        sweep = Sweep(
            tracker, experiment_id, lease=lease, halving=config.halving, batch=config.batch_lrs
        )
        with _ending(sweep, engine):
            if nested:
                sweep.open_parent(config, grid, command, restart, outer_run)
            skipped = _train(sweep, engine, config, grid, "runs to do", progress)
            if config.extend_edges is not None:
                skipped += _widen(sweep, engine, config, grid, progress)
            return sweep.close(skipped=skipped)


def _train(sweep: Sweep, engine: Engine, config, points, what: str, progress: bool) -> int:
    """Train the points not finished yet, in passes; how many were. With ``halving`` a pass
    is a whole setting, its finished points included: they are trained again for the
    decisions, not recorded again."""
    todo = [point for point in points if point.key not in sweep.finished]
    if config.halving is not None:
        passes = halving.passes(points, sweep.finished)
    else:
        passes = lr_batch.passes(todo, config.batch_lrs)
    label = f"{config.name}: {len(todo)} of {len(points)} {what}"
    with _progress(label, len(todo), progress) as bar:
        sweep.drive(engine, passes, bar)
    return len(points) - len(todo)


def _widen(sweep: Sweep, engine: Engine, config, grid: list[RunConfig], progress: bool) -> int:
    """``extend_edges``: train the rates beyond each edge that holds a best rate, until none
    does (:mod:`experiments.edges`); how many of them had finished before (a resumed sweep
    reaches the same decisions from the same runs)."""
    points, skipped = list(grid), 0
    while added := edges.beyond(points, sweep.runs(), config.lrs, config.extend_edges):
        sweep.tags.update({point.key: {records.ADDED_BY: "extend_edges"} for point in added})
        skipped += _train(sweep, engine, config, added, "runs beyond the grid's edges", progress)
        points += added
    return skipped


@dataclass
class Sweep:
    """A sweep in progress: where it records, and what is finished, in flight and started."""

    tracker: Tracker
    experiment_id: str
    parent_id: str | None = None
    finished: set[str] = field(default_factory=set)  # config keys FINISHED before this run
    in_flight: dict[str, RunConfig] = field(default_factory=dict)  # run id → its grid point
    started: list[str] = field(default_factory=list)
    train_seconds: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    writer: Writer | None = None  # records this process's passes in the background
    lease: Lease | None = None  # this driver's hold on the sweep (a sweep with a parent)
    tags: dict[str, dict[str, str]] = field(default_factory=dict)  # a search's, by config key
    halving: HalvingConfig | None = None  # then a pass is a setting, judged at each rung
    batch: bool = True  # rates side by side in a pass, where the implementation batches

    def open_parent(
        self, config: SweepConfig, grid: list[RunConfig], command: str, restart: bool,
        outer_run: str | None = None,
    ) -> None:  # fmt: skip
        """The sweep's parent run, held by this driver: reopened if this sweep ran before
        (then its finished grid points are known, and runs a dead driver left RUNNING are
        marked KILLED), else new; with ``restart`` new in any case; ``outer_run`` (made by
        ``mlflow run``) made the parent, or resumed if it is one already."""
        with shielded():  # an interrupt waits until parent_id is known (and marked KILLED)
            stamp = time.strftime("%Y-%m-%d %H:%M")
            name = f"sweep · {config.name} · {len(grid)} runs · {stamp}"
            tags = records.sweep_tags(config, len(grid), command)

            def create(claim: dict[str, str]) -> str:  # the run alone: filled once held
                return self.tracker.start_run(self.experiment_id, name, tags={**tags, **claim})

            if outer_run is not None:
                named = {**tags, "mlflow.runName": name}
                self.parent_id, existed = outer_run, self.lease.adopt(outer_run, config.key, named)
            elif restart:
                self.parent_id, existed = self.lease.start(create), False
            else:
                self.parent_id, existed = self.lease.acquire(self.experiment_id, config.key, create)
            if existed:
                self.tracker.reopen(self.parent_id)
                self._resume()
            else:
                records.describe_sweep(self.tracker, self.parent_id, config, grid)

    def _resume(self) -> None:
        for child in self.tracker.children(self.experiment_id, self.parent_id):
            if child.info.status == "FINISHED":
                self.finished.add(child.data.tags.get("config_key"))
            elif child.info.status == "RUNNING":  # its process was killed (SIGKILL, lost node)
                stale = {"failure": "killed", "failure_reason": "its process ended mid-run"}
                self.tracker.log(child.info.run_id, tags=stale)
                self.tracker.finish(child.info.run_id, "KILLED")

    # --- the passes, on the engine ---------------------------------------------------------
    def drive(self, engine: Engine, passes: list[list[RunConfig]], bar) -> None:
        """Keep the engine's workers busy until every pass is in; each logs its own runs.

        An engine that a dead worker breaks (the local pool: every future still pending fails,
        and so does a submit) takes no new pass until those futures are in; then it is renewed,
        and a pass it refused goes to the new one under the runs already created for it.
        """
        queue = deque((group, None) for group in passes)  # (pass, its run ids once created)
        futures: dict[Future, list[str]] = {}
        broken = False  # a dead worker broke the engine: let what is in flight drain first
        while queue or futures:
            if engine.runs_here and queue:
                self._record_aside()
            while queue and not broken and len(futures) < engine.capacity():
                broken = not self._submit(engine, queue, futures)
            done = wait(futures, return_when=FIRST_COMPLETED).done if futures else set()
            for future in done:
                broken |= self._collect(engine, future, futures.pop(future), bar)
            if broken and not futures:
                engine.renew()
                broken = False

    def _record_aside(self) -> None:
        """A sweep that trains in this process and is still going after a few seconds is
        long enough to pay for a writer: it records the runs on a core of its own, while
        training keeps the others (one thread fewer for torch)."""
        if self.writer is None and time.perf_counter() - self.start > BACKGROUND_AFTER_S:
            self.writer = Writer(self.tracker.uri, take_a_thread=True)

    def record(self, run_id: str, result: RunResult, *, inputs: bool, guard: bool) -> None:
        """Record a pass's run trained in this process: through the writer once it is up."""
        if self.writer is not None and self.writer.ready():
            self.writer.write(run_id, result, inputs=inputs, guard=guard)
        else:
            records.write(self.tracker, run_id, result, inputs=inputs, guard=guard)

    def _submit(self, engine: Engine, queue: deque, futures: dict) -> bool:
        """Hand the next pass to the engine; False if a broken engine refused it (then it
        waits at the head of the queue, under its runs, for the renewed engine)."""
        group, run_ids = queue.popleft()
        run_ids = run_ids or self._start_runs(group)
        # A run another driver has ended meanwhile (KILLED when it took the sweep over, or on
        # an interrupt) keeps that status.
        guard = engine.guard or self.lease is not None
        inputs = self.parent_id is None
        job = Pass(self.tracker.uri, run_ids, group, inputs, guard, self.halving, self.batch)
        work = functools.partial(job, record=self.record) if engine.runs_here else job
        try:
            futures[engine.submit(work, gpu=group[0].device == "cuda")] = run_ids
        except Exception as err:
            if not engine.lost_worker(err):
                raise
            queue.appendleft((group, run_ids))
            return False
        return True

    def _start_runs(self, group: list[RunConfig]) -> list[str | None]:
        """A run for each point of the pass not finished yet (None for one that is: a halving
        pass trains its whole setting again)."""
        if self.lease is not None:
            self.lease.check()  # a driver that lost the sweep starts nothing more
        run_ids: list[str | None] = []
        for point in group:
            if point.key in self.finished:
                run_ids.append(None)
                continue
            with shielded():  # the run exists in the store only together with in_flight
                tags = {**records.run_tags(point), **self.tags.get(point.key, {})}
                run_id = self.tracker.start_run(
                    self.experiment_id, point.name, tags=tags, parent_id=self.parent_id
                )
                self.in_flight[run_id] = point
            self.started.append(run_id)
            run_ids.append(run_id)
        return run_ids

    def _collect(self, engine: Engine, future: Future, run_ids: list[str | None], bar) -> bool:
        """A pass came back; True if its worker died and that broke the engine."""
        broke, run_ids = False, [run_id for run_id in run_ids if run_id is not None]
        try:
            self.train_seconds += future.result()
        except StoreLost:
            raise  # not the run's fault: it stays RUNNING, and the sweep stops
        except Exception as err:  # one pass's crash does not end the sweep
            died = engine.lost_worker(err)
            broke = died and engine.breaks
            reason = "its worker process died" if died else first_line(err, named=True)
            for run_id in run_ids:
                records.fail(self.tracker, run_id, reason)
        for run_id in run_ids:
            self.in_flight.pop(run_id, None)
        bar.update(len(run_ids))
        return broke

    # --- the end ------------------------------------------------------------------------------
    def kill(self) -> None:
        """Interrupted: what the writer holds is recorded first (no trained run is lost), then
        every run in flight, and the parent, end KILLED (MLflow alone would leave them
        RUNNING). A worker may have ended one meanwhile: that one stands. A driver that lost
        the sweep leaves its parent to the driver that holds it."""
        unrecorded: set[str] = set()
        if self.writer is not None:
            writer = self.writer
            try:
                unrecorded = self._settle_writer()
            except BaseException:  # a second interrupt: stop waiting for the writer
                unrecorded = writer.unrecorded()
        ours = self.parent_id is not None and (self.lease is None or self.lease.held())
        for run_id in [*self.in_flight, *unrecorded, *([self.parent_id] if ours else [])]:
            with contextlib.suppress(Exception):
                if self.tracker.status(run_id) == "RUNNING":
                    self.tracker.finish(run_id, "KILLED")
        self._release()

    def abandon(self) -> None:
        """The store went away: stop the writer without waiting (what it holds is trained
        again on resume), and leave the runs in flight RUNNING, for the next run of the same
        command to mark KILLED once the store is back."""
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
        if self.lease is not None:
            self.lease.abandon()

    def runs(self) -> pd.DataFrame:
        """Every run so far as the store has it, what the writer holds recorded first: with a
        parent, all its children, one row per attempt; without, the runs this one started."""
        if self.writer is not None:  # it keeps running: the sweep may go on
            for run_id in self.writer.drain():
                records.fail(self.tracker, run_id, "its writer process ended before recording it")
        if self.parent_id is not None:
            return records.runs_table(self.tracker.children(self.experiment_id, self.parent_id))
        return records.runs_table(self.tracker.run(run_id) for run_id in self.started)

    def close(self, skipped: int) -> SweepOutcome:
        """The runs as the store has them; on the parent: runs.csv, summary.csv, the counts."""
        if self.writer is not None:
            for run_id in self._settle_writer():
                records.fail(self.tracker, run_id, "its writer process ended before recording it")
        runs = self.runs()
        if self.lease is not None:
            self.lease.check()  # the parent's summary is the holder's to write
        seconds = time.perf_counter() - self.start
        if self.parent_id is not None:
            timing = {"sweep/seconds": seconds, "sweep/train_seconds": self.train_seconds}
            _conclude(self.tracker, self.experiment_id, self.parent_id, runs, timing)
        self._release()
        return SweepOutcome(
            self.experiment_id, self.parent_id, runs, seconds, self.train_seconds, skipped
        )

    def _release(self) -> None:
        if self.lease is not None:
            lease, self.lease = self.lease, None
            with contextlib.suppress(Exception):  # the store may be away: the claim goes stale
                lease.release()

    def _settle_writer(self) -> set[str]:
        """Wait until the writer has recorded every run it holds, then stop it; the runs it
        could not record come back, still RUNNING."""
        writer, self.writer = self.writer, None
        try:
            return writer.drain()
        finally:
            writer.close()  # stops it even when a second interrupt cut the wait short


@contextlib.contextmanager
def _ending(sweep: Sweep, engine: Engine):
    """On the way out of a sweep cut short, the engine is stopped first (no worker ends a run
    after this), then: the store went away, nothing can be marked, and the next run of the
    command does it; anything else (Ctrl-C, SIGTERM, the tracking itself failed), the runs in
    flight end KILLED and nothing stays RUNNING."""
    try:
        yield
    except StoreLost:
        engine.stop()
        sweep.abandon()
        raise
    except BaseException:
        engine.stop()
        sweep.kill()
        raise


def _conclude(tracker: Tracker, experiment_id: str, parent: str, runs, timing: dict) -> None:
    """The finished sweep on its parent run: runs.csv, summary.csv, the counts, the answer;
    and the best runs' models."""
    tracker.log_text(parent, runs.reindex(columns=records.RUNS_CSV).to_csv(index=False), "runs.csv")
    if (runs.status == "FINISHED").any():
        tracker.log_text(parent, findings.summary(runs).to_csv(index=False), "summary.csv")
    latest = records.latest_attempts(runs)
    # Each point once, by its latest attempt; a count that is 0 now is logged as 0, not left
    # at what an earlier invocation of a resumed sweep logged.
    counts = {f"sweep/{status}": 0 for status in ("finished", "failed", "killed")}
    counts.update({f"sweep/{k.lower()}": v for k, v in latest.status.value_counts().items()})
    if (runs[records.HALVING] != "").any():  # what successive halving chose, at what cost
        tracker.log_text(parent, findings.halving(runs).to_csv(index=False), "halving.csv")
        counts["sweep/steps_share"] = findings.halving_share(runs)
    if (latest[records.ADDED_BY] != "").any():  # extend_edges widened the grid
        counts["sweep/added"] = int((latest[records.ADDED_BY] != "").sum())
    logged = models.log_best(tracker, experiment_id, runs)
    tracker.log(parent, metrics={**timing, **counts, **findings.headline(runs), **logged})
    tracker.finish(parent)


# --- what a worker runs -----------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """A training pass as the driver hands it to a worker: everything the worker needs.

    ``run_ids``: the runs the driver created for ``configs``, in order (None: a point
    finished before, trained again for a halving pass's decisions, not recorded). ``inputs``:
    log each run's data too (a run without a parent). ``guard``: a run the driver has ended
    meanwhile (KILLED on an interrupt) keeps that status. ``halving`` and ``batch``: as
    :func:`experiments.training.train_pass` takes them.
    """

    uri: str
    run_ids: list[str | None]
    configs: list[RunConfig]
    inputs: bool
    guard: bool
    halving: HalvingConfig | None = None
    batch: bool = True

    def __call__(self, record: Callable | None = None) -> float:
        """Train the pass and record each run under its id (through ``record`` where the
        driver gave one, else straight to the store): FINISHED, or FAILED if it diverged.
        Returns the training time."""
        results = train_pass(self.configs, self.halving, self.batch)
        record = record or functools.partial(records.write, _tracker(self.uri))
        for run_id, result in zip(self.run_ids, results, strict=True):
            if run_id is not None:
                record(run_id, result, inputs=self.inputs, guard=self.guard)
        return sum(result.seconds for result in results)


@functools.cache
def _tracker(uri: str) -> Tracker:
    """A worker's client of the store, one per store for the life of its process."""
    return Tracker(uri)


class _Silent:
    def update(self, n: int) -> None:
        pass


def _progress(label: str, length: int, show: bool):
    if not show:
        return contextlib.nullcontext(_Silent())
    return click.progressbar(length=length, label=label, file=sys.stderr)
