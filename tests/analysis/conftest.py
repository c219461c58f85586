"""Notebooks run in this process: every code cell in one IPython shell, as a kernel runs them
(``display``, a figure as a cell's value; ``%matplotlib inline``, which needs a kernel, left
out), without a kernel's start-up and imports: seconds, not half a minute. The notebooks in
real Jupyter kernels, as ``make notebooks`` runs them, are the ``slow`` tests'."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture
def run_notebook(monkeypatch, capsys):
    """``run_notebook(path, experiment, uri)`` → (what it printed, how many figures it showed:
    drawn with pyplot, or a Figure as a cell's value); a cell that raises fails the test with
    the cell and its error."""
    import matplotlib.pyplot as plt
    from IPython.core.interactiveshell import InteractiveShell
    from matplotlib.figure import Figure

    def run(path: Path, experiment: str, uri: str) -> tuple[str, int]:
        capsys.readouterr()  # what came before is not the notebook's
        monkeypatch.setenv("EXPERIMENT", experiment)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        shell = InteractiveShell()
        figures = 0
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"]).replace("%matplotlib inline", "")
            result = shell.run_cell(source, store_history=False)
            assert result.success, f"{path.name}: {source[:200]!r} raised {result.error_in_exec!r}"
            figures += len(plt.get_fignums()) + isinstance(result.result, Figure)
            plt.close("all")
        InteractiveShell.clear_instance()
        return capsys.readouterr().out, figures

    return run
