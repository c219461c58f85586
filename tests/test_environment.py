"""environment.yml and pyproject.toml describe one environment; constraints.txt pins it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}  # conda-forge names that differ from PyPI's


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pip_requirements() -> dict[str, SpecifierSet]:
    reqs = (Requirement(r) for r in pyproject()["project"]["dependencies"])
    return {canonicalize_name(r.name): r.specifier for r in reqs}


def conda_environment() -> tuple[dict[str, SpecifierSet], list[str], str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"]
    conda, pip_section, python = {}, [], None
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_section += dep["pip"]
        elif dep.startswith("python="):
            python = dep.split("=", 1)[1]
        elif dep != "pip":
            req = Requirement(dep)
            conda[canonicalize_name(CONDA_TO_PIP.get(req.name, req.name))] = req.specifier
    return conda, pip_section, python


def test_environment_yml_matches_pyproject():
    conda, pip_section, python = conda_environment()
    assert conda == pip_requirements()
    assert pip_section == ["-e .[dev,cluster]"]
    assert Version(python) in SpecifierSet(pyproject()["project"]["requires-python"])


def test_constraints_pin_every_dependency_within_its_range():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    extras = pyproject()["project"]["optional-dependencies"]
    optional = (Requirement(r) for r in extras["dev"] + extras["cluster"])
    wanted = {**pip_requirements(), **{canonicalize_name(r.name): r.specifier for r in optional}}
    for name, spec in wanted.items():
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert pins[name] in spec, f"{name}=={pins[name]} is outside {spec}"
    assert pins["torch"] == Version("2.13.0")


def test_torch_range_admits_the_gpu_machines_torch():
    assert Version("2.11.0") in pip_requirements()["torch"]
