from experiments.cli import run

raise SystemExit(run())
