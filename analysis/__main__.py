from analysis.cli import run

raise SystemExit(run())
