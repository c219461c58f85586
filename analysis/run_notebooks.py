"""Execute the notebooks in ``analysis/notebooks/`` against a sweep; write executed copies
elsewhere, so the stored notebooks stay free of outputs."""

from __future__ import annotations

import os
from pathlib import Path

from analysis.runs import load_sweep
from experiments.stores import resolve_uri

NOTEBOOKS = Path(__file__).parent / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))


def execute(
    experiment: str,
    tracking_uri: str | None,
    out: str | Path,
    timeout: int = 600,
    only: list[Path] | None = None,
) -> list[Path]:
    """Run every notebook (or those in ``only``) top to bottom on the latest sweep of
    ``experiment``."""
    # nbformat and nbclient are the dev extra's: a plain install runs everything else.
    import nbformat
    from nbclient import NotebookClient

    load_sweep(experiment, tracking_uri)  # a missing sweep is a one-line error, not a traceback
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this process's environment: that is how the notebooks find the sweep.
    saved = {k: os.environ.get(k) for k in ("EXPERIMENT", "MLFLOW_TRACKING_URI")}
    os.environ["EXPERIMENT"] = experiment
    os.environ["MLFLOW_TRACKING_URI"] = resolve_uri(tracking_uri)
    written = []
    try:
        for path in only or notebooks():
            book = nbformat.read(path, as_version=4)
            NotebookClient(
                book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": "."}}
            ).execute()
            nbformat.write(book, out / path.name)
            written.append(out / path.name)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return written
