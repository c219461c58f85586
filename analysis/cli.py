"""``python -m analysis report``: a sweep's tables, figures and report.html."""

from __future__ import annotations

import click

from analysis.runs import AnalysisError
from experiments.tracking import TrackingError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Compare a sweep's manual runs against their autograd baselines."""


@main.command()
@click.option("--experiment", default="default", show_default=True, help="the sweep's experiment")
@click.option(
    "--tracking-uri", metavar="URI", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
)
@click.option("--out", metavar="DIR", help="default: reports/<experiment>/")
def report(experiment: str, tracking_uri: str | None, out: str | None) -> None:
    """Write report.html, pairs.csv, best_lr.csv, reference.csv, devices.csv and the figures
    for the latest sweep of EXPERIMENT, and log them on its parent run."""
    from analysis.report import make_report

    result, folder = make_report(experiment, tracking_uri, out)
    pairs = result.pairs
    agree = int(pairs["agrees"].sum()) if len(pairs) else 0
    click.echo(f"{agree} of {len(pairs)} pairs agree with autograd within tolerance")
    click.echo(f"report: {(folder / 'report.html').resolve()}")


@main.command()
@click.option("--experiment", default="default", show_default=True, help="the sweep's experiment")
@click.option(
    "--tracking-uri", metavar="URI", help="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
)
@click.option("--out", metavar="DIR", help="default: reports/<experiment>/notebooks/")
def notebooks(experiment: str, tracking_uri: str | None, out: str | None) -> None:
    """Execute analysis/notebooks/*.ipynb against the latest sweep; write the executed copies
    to DIR (the stored notebooks keep no outputs)."""
    from analysis.run_notebooks import execute

    folder = out or f"reports/{experiment}/notebooks"
    for path in execute(experiment, tracking_uri, folder):
        click.echo(f"executed: {path}")


def run(argv: list[str] | None = None) -> int:
    try:
        main.main(args=argv, prog_name="python -m analysis", standalone_mode=False)
    except (AnalysisError, TrackingError, click.UsageError) as err:
        message = err.format_message() if isinstance(err, click.ClickException) else str(err)
        click.echo(f"error: {message}", err=True)
        return 2
    except (KeyboardInterrupt, click.Abort):
        click.echo("interrupted", err=True)
        return 130
    return 0
