"""``python -m experiments sweep|train|ui|bench|tracking-user``: the command line over configs,
engine and tracker.

Every user mistake (a bad key or value, a missing or malformed file, an absent device, a store
that cannot be reached, a login it refuses) ends as one line on stderr and exit code 2, before
anything is written.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from experiments import interrupts, users
from experiments.bench import run_bench
from experiments.bench_report import markdown, write
from experiments.choices import integral
from experiments.config import (
    CONFIGS,
    ConfigError,
    RunConfig,
    SweepConfig,
    as_yaml,
    build,
    load_sweep,
    parse_overrides,
    parse_value,
    run_keys,
)
from experiments.engines import ENGINES, EngineError
from experiments.findings import summary
from experiments.lease import LeaseLost
from experiments.records import latest_attempts
from experiments.retries import StoreFull, StoreLost
from experiments.stores import TrackingError, check_reachable
from experiments.sweep import SweepOutcome, run_sweep
from experiments.tracking import Tracker, runs_page
from manual_models.validation import resolve_device

DEFAULT_CONFIG = CONFIGS / "default.yaml"


class Integer(click.IntRange):
    """An integer option as people type it: 4, 1e1 or 10_000 (1.5 is an error, not 1)."""

    def convert(self, value, param, ctx):
        try:
            number = integral(value)
        except ValueError:
            number = value
        if not isinstance(number, int) or isinstance(number, bool):
            self.fail(f"{value!r} is not an integer", param, ctx)
        return super().convert(number, param, ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train the manual, autograd and Function logistic regressions; track them in MLflow."""


def tracking_options(command):
    command = click.option(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store: sqlite:///PATH.db or http://HOST:PORT "
        "(default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )(command)
    command = click.option(
        "--experiment", metavar="NAME", help="experiment (default: the config's name)"
    )(command)
    command = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="override a config key; VALUE is YAML, e.g. lrs=[0.01,0.1]",
    )(command)
    command = click.option(
        "--sets",
        metavar="'KEY=VALUE …'",
        default="",
        help="several overrides in one argument, as `mlflow run -P overrides=…` passes them "
        "(shell words: quote a VALUE with spaces)",
    )(command)
    return click.option("--quiet", is_flag=True, help="no progress bar")(command)


def all_overrides(overrides: tuple[str, ...], sets: str) -> dict[str, object]:
    """--set KEY=VALUE, each, and --sets 'KEY=VALUE KEY=VALUE', together."""
    try:
        words = shlex.split(sets)
    except ValueError as err:
        raise ConfigError(f"--sets {sets!r}: {err}") from None
    return parse_overrides((*overrides, *words))


@main.command()
@click.argument("config", required=False, metavar="[CONFIG]")
@click.option(
    "--workers",
    type=Integer(min=1),
    default=1,
    show_default=True,
    help="grid points trained at once, each in its own process (with --engine dask "
    "and no scheduler: the local cluster's workers)",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    help="where grid points run: local processes, or a Dask cluster [config: local]",
)
@click.option(
    "--address",
    metavar="tcp://HOST:PORT",
    help="Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, else a local cluster)",
)
@click.option("--restart", is_flag=True, help="start a fresh sweep instead of resuming")
@tracking_options
def sweep(
    config, workers, engine, address, restart, overrides, sets, experiment, tracking_uri, quiet
) -> int:
    """Run every grid point of CONFIG (default: experiments/configs/default.yaml)."""
    path = Path(config) if config else DEFAULT_CONFIG
    chosen = {k: v for k, v in {"engine": engine, "address": address}.items() if v}
    sweep_config = load_sweep(path, {**all_overrides(overrides, sets), **chosen})
    command = " ".join(
        [
            "python -m experiments sweep",
            shlex.quote(str(path)),
            *(f"--set {shlex.quote(o)}" for o in (*overrides, *shlex.split(sets))),
        ]
    )
    return execute(
        sweep_config,
        tracking_uri,
        experiment,
        command,
        nested=True,
        quiet=quiet,
        workers=workers,
        restart=restart,
    )


def run_key_options(command):
    """One option per key of a run (``RunConfig``), its help and default read off the model:
    ``--steps 200`` is ``--set steps=200``, VALUE YAML as in a config file."""
    for key, field in reversed(run_keys().items()):
        if field.is_required():
            shown = " [required]"
        else:
            shown = "" if field.default is None else f" [default: {as_yaml(field.default)}]"
        command = click.option(
            f"--{key.replace('_', '-')}",
            key,
            metavar="VALUE",
            help=f"{field.description or key}{shown}",
        )(command)
    return command


@main.command()
@run_key_options
@tracking_options
def train(overrides, sets, experiment, tracking_uri, quiet, **options) -> int:
    """Train one run: the keys of a sweep's grid point, as options or --set KEY=VALUE."""
    given = {
        k: parse_value(f"--{k.replace('_', '-')}", v) for k, v in options.items() if v is not None
    }
    data = {**given, **all_overrides(overrides, sets)}
    missing = [k for k, field in run_keys().items() if field.is_required() and k not in data]
    if missing:
        raise ConfigError(f"missing option --{missing[0].replace('_', '-')}")
    if "steps" in data and data.get("epochs") is not None:
        raise ConfigError("give --steps or --epochs, not both")
    config = SweepConfig.of_run(build(RunConfig, data), name="train")
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "experiments", *sys.argv[1:]])
    return execute(config, tracking_uri, experiment, command, nested=False, quiet=True)


@main.command()
@click.option(
    "--tracking-uri", metavar="URI", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=Integer(1, 65535), default=5000, show_default=True)
def ui(tracking_uri, host, port) -> None:
    """Serve the MLflow UI for the store (one worker: it starts in seconds) and print the
    URL of the latest sweep's runs page."""
    tracker = Tracker(tracking_uri)
    tracker.open()
    base = f"http://{host}:{port}"
    latest = tracker.latest_sweep()
    if latest is None:
        click.echo(f"MLflow UI: {base} (no sweep in {tracker.uri} yet: `make sweep`)")
    else:
        click.echo(f"latest sweep: {latest.info.run_name}")
        click.echo(f"MLflow UI: {base}/{runs_page(latest.info.experiment_id)}")
    click.echo("Ctrl-C stops it.", err=True)
    # MLflow 3.17's server starts a job runner and queue consumers for GenAI jobs this project
    # never uses: ten processes and 2.4 GB, against two and 0.5 GB (docs/mlflow.md)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        tracker.uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    os.execv(sys.executable, command)


@main.command("tracking-user")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(sorted(users.ROLES)),
    default="edit",
    show_default=True,
    help="read: see every experiment; edit: also run sweeps into them",
)
@click.option("--tracking-uri", metavar="URI", help="the server (default: $MLFLOW_TRACKING_URI)")
def tracking_user(name, role, tracking_uri) -> None:
    """Add user NAME to a tracking server with logins (`make tracking-server`), or move an
    existing one to ROLE. Run it as the server's admin: `make tracking-user NAME=… ROLE=…`."""
    tracker = Tracker(tracking_uri)
    if not tracker.uri.startswith(("http://", "https://")):
        raise TrackingError(f"{tracker.uri} is not a tracking server: users live on one (http://…)")
    check_reachable(tracker.uri)
    password = users.add_user(tracker.uri, name, role)
    if password is None:
        click.echo(f"user {name!r} now has role {role} on {tracker.uri}; its password is unchanged")
        return
    click.echo(f"user {name!r} added to {tracker.uri} with role {role}. Give {name} these three")
    click.echo("lines by a private channel; the password is shown this once and kept nowhere:")
    click.echo(f"  export MLFLOW_TRACKING_URI={tracker.uri}")
    click.echo(f"  export MLFLOW_TRACKING_USERNAME={name}")
    click.echo(f"  export MLFLOW_TRACKING_PASSWORD={password}")


@main.command()
@click.option("--quick", is_flag=True, help="fewer sizes, K up to 16, 3 repeats (about a minute)")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or mps")
@click.option(
    "--out",
    default="reports",
    show_default=True,
    type=click.Path(file_okay=False),
    help="folder for bench.json and bench.md (bench-cuda.* on a GPU)",
)
@click.option(
    "--tracking-uri",
    metavar="URI",
    help="where the bench run is recorded (default: $MLFLOW_TRACKING_URI, else "
    "sqlite:///mlflow.db)",
)
def bench(quick, device, out, tracking_uri) -> None:
    """Step time against the memory floor, K learning rates against K runs, and tracking
    against MLflow's floor: medians and ratios, side by side (experiments/bench.py)."""
    try:
        resolve_device(device)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    tracker = Tracker(tracking_uri)
    check_reachable(tracker.uri)
    report = run_bench(device, quick=quick)
    path = write(report, Path(out), tracker)
    click.echo(markdown(report))
    click.echo(
        f"wrote {path} and {path.with_suffix('.md')}; run in experiment 'bench' of {tracker.uri}"
    )


def execute(
    config: SweepConfig,
    uri: str | None,
    experiment: str | None,
    command: str,
    *,
    nested: bool,
    quiet: bool,
    workers: int = 1,
    restart: bool = False,
) -> int:
    """Run the sweep (which checks the store and the engine before anything is written), and
    say how it went: exit code 1 if a run failed with an error, else 0.

    Under ``mlflow run`` the run it made (``$MLFLOW_RUN_ID``) is the sweep's parent, a single
    run's too. The variable leaves the environment first: a worker or writer process that
    inherited it would log to that run through MLflow's fluent API."""
    outer_run = os.environ.pop("MLFLOW_RUN_ID", None) or None
    nested = nested or outer_run is not None
    tracker = Tracker(uri)
    outcome = run_sweep(
        config,
        tracker,
        workers=workers,
        experiment=experiment,
        command=command,
        nested=nested,
        progress=not quiet,
        restart=restart,
        outer_run=outer_run,
    )
    name = experiment or config.name
    if outer_run is not None:  # the sweep is in the experiment of mlflow run's run
        name = tracker.client.get_experiment(outcome.experiment_id).name
    return say_outcome(outcome, tracker.uri, name, nested)


# What the closing table shows: each implementation at its best lr, or a single run's numbers.
BEST_LR_COLUMNS = [
    "dataset",
    "impl",
    "optimizer",
    "device",
    "dtype",
    "best_lr",
    "val_loss_mean",
    "val_accuracy_mean",
    "on_edge",
    "check/max_grad_err_vs_terms",
]
RUN_COLUMNS = [
    "dataset",
    "impl",
    "optimizer",
    "device",
    "dtype",
    "lr",
    "seed",
    "train/loss",
    "val/loss",
    "val/accuracy",
    "check/max_grad_err_vs_terms",
    "time/fit_s",
]


def say_outcome(outcome: SweepOutcome, uri: str, name: str, nested: bool) -> int:
    runs = outcome.runs
    if len(runs) and (runs.status == "FINISHED").any():
        table = summary(runs) if nested else runs[runs.status == "FINISHED"]
        columns = [c for c in (BEST_LR_COLUMNS if nested else RUN_COLUMNS) if c in table]
        click.echo(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    latest = latest_attempts(runs)  # how each grid point stands now
    counts = latest.status.value_counts().to_dict() if len(latest) else {}
    failures = latest[latest.status == "FAILED"] if len(latest) else latest
    diverged = int((failures.failure == "diverged").sum()) if len(failures) else 0
    errors = len(failures) - diverged
    halved = f"{counts['STOPPED']} stopped early by halving, " if "STOPPED" in counts else ""
    click.echo(
        f"\n{counts.get('FINISHED', 0)} finished, {halved}{diverged} diverged, {errors} failed "
        f"with an error ({outcome.skipped} already finished before) in {outcome.seconds:.1f} s "
        f"({outcome.train_seconds:.1f} s training) → experiment {name!r} "
        f"(id {outcome.experiment_id}) in {uri}"
    )
    for row in failures.itertuples():  # by name: a run that failed early has no params
        click.echo(f"  FAILED {row.run_name}: {row.failure_reason}")
    page = runs_page(outcome.experiment_id)
    if uri.startswith("http"):
        click.echo(f"view: {uri.rstrip('/')}/{page}")
    else:
        click.echo(
            f"view: mlflow ui --backend-store-uri {uri} --port 5000 (or `make ui`), then "
            f"http://127.0.0.1:5000/{page}"
        )
    return 1 if errors else 0


EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the same command later will go on


def entry(group: click.Group, prog_name: str, user_errors: tuple, argv=None) -> int:
    """Run a click group; a user's mistake becomes one line on stderr and exit code 2; a store
    that went away or filled up mid-sweep, or a sweep another driver took over, exit code 75."""
    try:
        with interrupts.installed():
            code = group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except (*user_errors, click.UsageError) as err:
        message = err.format_message() if isinstance(err, click.ClickException) else str(err)
        click.echo(f"error: {message}", err=True)
        return 2
    except (KeyboardInterrupt, click.Abort):
        click.echo(
            "interrupted: runs in flight marked KILLED; run the same command to resume", err=True
        )
        return 130
    except interrupts.Interrupted as stop:
        click.echo(
            f"{stop}: runs in flight marked KILLED; run the same command to resume", err=True
        )
        return stop.exit_code
    except StoreFull as full:
        click.echo(f"error: {full} (the runs in flight stay RUNNING until then)", err=True)
        return EX_TEMPFAIL
    except StoreLost as lost:
        click.echo(
            f"error: {lost}; the runs in flight stay RUNNING until the same command runs again "
            "with the store back: it marks them KILLED and resumes",
            err=True,
        )
        return EX_TEMPFAIL
    except LeaseLost as lost:
        click.echo(f"error: {lost}", err=True)
        return EX_TEMPFAIL
    return code if isinstance(code, int) else 0


def run(argv: list[str] | None = None) -> int:
    """``python -m experiments``."""
    return entry(main, "python -m experiments", (ConfigError, TrackingError, EngineError), argv)
