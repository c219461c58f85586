"""``python -m analysis report|notebooks``: a sweep's tables, figures, report and notebooks."""

from __future__ import annotations

import os
from pathlib import Path

import click

from analysis.report import make_report
from analysis.run_notebooks import execute
from analysis.runs import AnalysisError, Sweep
from experiments.cli import entry
from experiments.stores import TrackingError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Compare a sweep's manual runs against their autograd baselines."""


def sweep_options(out_help: str):
    """--experiment, --tracking-uri and --out, as every command here takes them."""

    def decorate(command):
        options = (
            click.option("--out", metavar="DIR", help=out_help),
            click.option(
                "--tracking-uri",
                metavar="URI",
                help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db",
            ),
            click.option(
                "--experiment",
                default="default",
                show_default=True,
                help="whose latest sweep to read",
            ),
        )
        for option in options:
            command = option(command)
        return command

    return decorate


@main.command()
@sweep_options("default: reports/<experiment>/")
@click.option(
    "--baseline",
    metavar="EXPERIMENT",
    help="a halving sweep's full grid: the experiment whose latest sweep ran every rate",
)
def report(experiment: str, tracking_uri: str | None, out: str | None, baseline: str | None):
    """Write report.html, pairs.csv, best_lr.csv, reference.csv, devices.csv and the figures
    for the latest sweep of EXPERIMENT (and halving.csv for a halving sweep), and log them on
    its parent run."""
    outer_run = os.environ.pop("MLFLOW_RUN_ID", None)  # `mlflow run -e analyze` made it
    result, folder = make_report(experiment, tracking_uri, out, baseline)
    if outer_run:
        record_analysis(result.sweep, outer_run, folder / "report.html")
    pairs = result.pairs
    agree = int(pairs["agrees"].sum()) if len(pairs) else 0
    twinned = int(pairs["twin_run_id"].notna().sum()) if "twin_run_id" in pairs else 0
    alone = f" ({len(pairs) - twinned} runs have no autograd twin)" if twinned < len(pairs) else ""
    click.echo(f"{agree} of {twinned} pairs agree with autograd within tolerance{alone}")
    if result.sweep.set_aside:
        click.echo(
            f"{result.sweep.set_aside} earlier attempts of resumed grid points (KILLED or "
            "FAILED) set aside: each point is read from its FINISHED run"
        )
    click.echo(f"report: {(folder / 'report.html').resolve()}")


def record_analysis(sweep: Sweep, run_id: str, report: Path) -> None:
    """``mlflow run``'s run of the analysis: named for the sweep, its report attached, and a
    child of the sweep's parent where both are in one experiment (the UI nests it there)."""
    client = sweep.tracker.client
    client.set_tag(run_id, "mlflow.runName", f"analysis · {sweep.experiment_name}")
    client.set_tag(run_id, "analyzed_sweep", sweep.parent_id)
    if client.get_run(run_id).info.experiment_id == sweep.experiment_id:
        client.set_tag(run_id, "mlflow.parentRunId", sweep.parent_id)
    client.log_artifact(run_id, str(report))


@main.command()
@sweep_options("default: reports/<experiment>/notebooks/")
def notebooks(experiment: str, tracking_uri: str | None, out: str | None) -> None:
    """Execute analysis/notebooks/*.ipynb against the latest sweep; write the executed copies
    to DIR (the stored notebooks keep no outputs)."""
    folder = out or f"reports/{experiment}/notebooks"
    for path in execute(experiment, tracking_uri, folder):
        click.echo(f"executed: {path}")


def run(argv: list[str] | None = None) -> int:
    """``python -m analysis``."""
    return entry(main, "python -m analysis", (AnalysisError, TrackingError), argv)
