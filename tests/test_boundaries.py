"""The boundaries docs/design.md promises: data flows manual_models ← experiments ← analysis,
and the training loop and the models never import MLflow."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["manual_models", "experiments", "analysis"]  # each may import only those before it


def imported_packages(package: str) -> dict[str, set[str]]:
    """Each module of ``package`` → the top-level names it imports (anywhere in the file)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_each_package_imports_only_the_layers_below_it(package):
    later = set(LAYERS[LAYERS.index(package) + 1 :])
    wrong = {path: names & later for path, names in imported_packages(package).items()}
    assert not {path: names for path, names in wrong.items() if names}


def test_the_models_and_the_loop_do_not_import_mlflow():
    code = (
        "import sys, manual_models, experiments.loop, experiments.lr_batch, experiments.training\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'analysis'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_models_import_nothing_of_experiments():
    code = "import json, sys, manual_models\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    loaded = {name.split(".")[0] for name in json.loads(done.stdout)}
    assert not loaded & {"experiments", "analysis", "mlflow", "sklearn", "pandas"}
