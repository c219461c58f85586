"""One validated config object per sweep, and one per run: the grid is the product of the lists.

A sweep config is a YAML file of the :class:`SweepConfig` keys; ``--set KEY=VALUE`` overrides a
key with VALUE parsed as YAML (``--set lrs=[0.01,0.1]``). Anything wrong — a typo'd key, a bad
value, a file that is not there or not YAML, a device this machine lacks — is a
:class:`ConfigError` with a one-line message, raised before anything is written anywhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shlex
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from experiments.batches import per_epoch
from experiments.choices import (
    SGD,
    Count,
    DatasetConfig,
    Device,
    Dtype,
    EdgeConfig,
    HalvingConfig,
    Impl,
    OptimizerConfig,
    PositiveFloat,
    Real,
)
from manual_models import load_kind
from manual_models.curvature import ITERATIONS, SHARPNESS_EVERY
from manual_models.validation import available_devices

CONFIGS = Path(__file__).parent / "configs"  # the shipped sweep configs
BatchSize = Annotated[Count, Field(ge=1)] | None


class ConfigError(ValueError):
    """A user's mistake in a config or an option; its message is one line."""


# How many points a chart gets is how a run is recorded, not what it is: the key hashes it at
# its first default, 2, whatever it is, so sweeps recorded before resume.
RECORDING_ONLY = {"max_metric_points": 2}
COMPILERS = ("g++", "c++", "clang++")  # what torch.compile's inductor builds its kernels with
# Keys added since the first release, at their defaults: left out of the keys (see _key).
ADDED = {
    "compile": False,
    "batch_size": None,
    "drop_last": False,
    "eval_every": None,
    "epochs": None,
    "model": None,
}
# The sharpness is measured on a run and changes nothing in it: its keys are never hashed, so a
# sweep resumes at any cadence (a run measured at another one counts as done, as above).
MEASURED_ONLY = ("sharpness_every", "sharpness_iterations")


def _key(dumped: dict[str, Any], defaults: dict[str, Any]) -> str:
    """A stable hash; keys added since the first release are left out at their default, so
    runs and sweeps recorded before them keep their keys (and resume)."""
    for name, default in defaults.items():
        if dumped.get(name) == default:
            dumped.pop(name, None)
    for name in MEASURED_ONLY:
        dumped.pop(name, None)
    canonical = json.dumps({**dumped, **RECORDING_ONLY}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _Common(BaseModel):
    """The keys a sweep and a single run share."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: Count = Field(1000, ge=1, description="gradient-descent steps per run (one a batch)")
    epochs: Count | None = Field(
        None,
        ge=1,
        description="passes over the training set, instead of steps: a run takes epochs × "
        "(batches an epoch) steps, worked out for each dataset (1 an epoch without batch_size)",
    )
    drop_last: bool = Field(
        False,
        description="with batch_size: leave each epoch's last, smaller batch out (default: keep "
        "it, a step of its own)",
    )
    eval_every: Count | None = Field(
        None,
        ge=1,
        description="with batch_size: steps between measurements of the whole training set "
        "and the validation set (default: once an epoch; the first and last step always)",
    )
    dtype: Dtype = Field("float32", description="float32 or float64")
    model: str | None = Field(
        None,
        description="a kind of your own, 'package.module:Class' (a manual_models.Kind subclass "
        "importable where the runs train): trained with its derivation (impl manual) beside "
        "autograd of its own reference loss (impl autograd); default: logistic regression, "
        "softmax for more classes",
    )
    val_fraction: Real = Field(0.25, gt=0, lt=1, description="held-out, stratified share")
    check_every: Count | None = Field(
        None,
        ge=1,
        description="steps between grad_rel_err checks; default: every step when the training "
        "set has at most 1e6 values, else 100 checks per run",
    )
    sharpness_every: Count | None = Field(
        SHARPNESS_EVERY,
        ge=1,
        description="steps between measurements of the sharpness λ_max(∇²J) on the whole "
        "training set (curv/sharpness, curv/lr_x_sharpness), from the hand-written "
        "Hessian-vector product, the first and last step always; null: never",
    )
    sharpness_iterations: Count = Field(
        ITERATIONS,
        ge=1,
        description="block-iteration steps (two Hessian-vector products each) a sharpness "
        "measurement takes from the last measurement's pair of vectors",
    )
    max_metric_points: Count = Field(
        200,
        ge=1,
        description="points each charted series sends to MLflow (all of them up to this many "
        "steps; beyond, evenly spaced and denser at the start, the first and last included); "
        "the full per-step series is in history.parquet either way",
    )
    max_trajectory_values: Count = Field(
        10_000_000,
        ge=1,
        description="parameter and gradient values a run keeps (trajectory.parquet); beyond, "
        "every k-th step and the last, chosen before the loop, so a run's memory does not grow "
        "with steps",
    )
    cuda_graphs: bool = Field(
        True, description="on CUDA, replay each step as a captured CUDA graph (ignored elsewhere)"
    )
    compile: bool = Field(
        False,
        description="the manual model's loss and gradient through torch.compile (the "
        "elementwise work over the logits fused); the twins, the references, stay eager",
    )

    @field_validator("model")
    @classmethod
    def _importable(cls, value: str | None) -> str | None:
        if value is not None:
            load_kind(value)  # a ValueError in one line names what is wrong
        return value

    @field_validator("compile")
    @classmethod
    def _compiler_here(cls, value: bool) -> bool:
        if value and not any(map(shutil.which, COMPILERS)):
            raise ValueError(
                "needs a C++ compiler for torch.compile's generated code, and none is on PATH "
                f"({', '.join(COMPILERS)}): install one (apt install g++), or leave compile off"
            )
        return value


class SweepConfig(_Common):
    """A grid of runs: every combination of the list-valued keys."""

    name: str = Field("default", min_length=1, description="the MLflow experiment")
    datasets: list[DatasetConfig] = Field(min_length=1)
    impls: list[Impl] = Field(min_length=1)
    lrs: list[PositiveFloat] = Field(min_length=1)
    devices: list[Literal["auto", "cpu", "cuda", "mps"]] = Field(["auto"], min_length=1)
    seeds: list[Annotated[Count, Field(ge=0)]] = Field([0], min_length=1)
    optimizers: list[OptimizerConfig] = Field(
        [SGD], min_length=1, description="update rules: sgd, momentum, nesterov, adam, or maps"
    )
    batch_sizes: list[BatchSize] = Field(
        [None],
        min_length=1,
        description="samples a step sees (null: the whole training set, full-batch descent)",
    )
    engine: Literal["local", "dask"] = Field(
        "local", description="where grid points run: this machine, or a Dask cluster"
    )
    address: str | None = Field(
        None,
        description="the Dask scheduler, tcp://HOST:PORT (default: $DASK_SCHEDULER_ADDRESS, "
        "else a local cluster of --workers processes)",
    )
    batch_lrs: bool = Field(
        True,
        description="train the manual and function runs that differ only in lr together, in "
        "one pass over the data (each is still its own run); autograd runs stay one per run",
    )
    extend_edges: EdgeConfig | None = Field(
        None,
        description="true, or {max_added, lr_min, lr_max}: where a setting's best rate is the "
        "grid's first or last, add rates beyond it at the grid's spacing until it is inside",
    )
    halving: HalvingConfig | None = Field(
        None,
        description="true, or {rounds, keep, metric}: train every rate a few steps, go on with "
        "the best share of them, and so on to the full steps (successive halving)",
    )

    _offered: list[str] | None = PrivateAttr(None)  # where the runs train (see on())

    @field_validator("lrs", mode="before")
    @classmethod
    def _logspace(cls, value: Any) -> Any:
        """``{logspace: [1e-3, 10, 8]}``: 8 learning rates evenly spaced in log from 1e-3 to 10."""
        if isinstance(value, dict) and set(value) == {"logspace"}:
            try:
                start, stop, num = (float(v) for v in value["logspace"])
            except (TypeError, ValueError):
                raise ValueError("logspace takes [start, stop, count]") from None
            if not (start > 0 and stop > 0 and num >= 1 and num == int(num)):
                raise ValueError("logspace takes [start, stop, count] with start, stop > 0")
            if num == 1:
                return [start]
            ratio = math.log10(stop / start) / (num - 1)
            return [float(f"{start * 10 ** (ratio * k):.6g}") for k in range(int(num))]
        return value

    @field_validator("extend_edges", "halving", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return None if value is False else value

    @model_validator(mode="after")
    def _searches(self) -> SweepConfig:
        if self.extend_edges is not None and len(self.lrs) < 2:
            raise ValueError("extend_edges needs at least two lrs (their ratio is the spacing)")
        if self.halving is not None and len(self.lrs) < 2:
            raise ValueError("halving needs at least two lrs to choose from")
        if self.epochs is not None and "steps" in self.model_fields_set:
            raise ValueError("give steps or epochs, not both")
        if self.model is not None and "function" in self.impls:
            raise ValueError(
                "impls: a model of your own trains as manual and autograd (function needs an "
                "autograd.Function of your own)"
            )
        if self.halving is not None and self.extend_edges is not None:
            raise ValueError(
                "halving and extend_edges: choose one (halving keeps rates, extend_edges adds them)"
            )
        return self

    @field_validator("datasets", "impls", "lrs", "devices", "seeds", "optimizers", "batch_sizes")
    @classmethod
    def _no_repeats(cls, values: list) -> list:
        if len(set(values)) != len(values):
            raise ValueError("has a repeated entry")
        return values

    @property
    def key(self) -> str:
        """A stable hash of the whole sweep: the same command resumes the same sweep, on any
        engine (where it runs is not part of what it is)."""
        dumped = self.model_dump(mode="json", exclude={"engine", "address"})
        defaults = {
            "optimizers": [SGD.model_dump(mode="json")],
            "extend_edges": None,
            "batch_sizes": [None],
        }
        return _key(dumped, {**defaults, "halving": None, **ADDED})

    def on(self, offered: list[str], where: str = "here") -> SweepConfig:
        """This sweep where its runs will train, which ``offered`` those devices (an engine's
        workers: :meth:`experiments.engines.Engine.devices`): ``auto`` becomes each of them; a
        device named but not offered is a :class:`ConfigError`. Its key does not change."""
        for device in self.devices:
            if device != "auto" and device not in offered:
                raise ConfigError(
                    f"devices: device {device!r} is not available {where}; "
                    f"present: {', '.join(offered)}"
                )
        placed = self.model_copy()
        placed._offered = list(offered)
        return placed

    def resolved_devices(self) -> list[str]:
        """The devices of the grid, in the order cpu, cuda, mps: ``auto`` is every device
        offered where the runs train (:meth:`on`; this process's own until then)."""
        offered = self._offered if self._offered is not None else available_devices()
        out: list[str] = []
        for device in self.devices:
            out += [d for d in (offered if device == "auto" else [device]) if d not in out]
        return out

    def params(self) -> dict[str, str]:
        """The sweep's keys for its parent run: lists as text, datasets by label, ``auto``
        devices resolved."""
        dumped = self.model_dump(mode="json")
        dumped["datasets"] = [d.label for d in self.datasets]
        dumped["devices"] = self.resolved_devices()
        return {k: str(v) for k, v in dumped.items()}

    def to_yaml(self) -> str:
        """The config as a file that ``load_sweep`` reads back to the same config."""
        data = self.model_dump(mode="json")
        data["datasets"] = [d.as_yaml() for d in self.datasets]
        return yaml.safe_dump(data, sort_keys=False)

    def grid(self) -> list[RunConfig]:
        """The runs, grouped so that runs differing only in impl and lr sit together."""
        shared = {k: getattr(self, k) for k in _Common.model_fields}
        lists = [
            self.resolved_devices() if key == "device" else getattr(self, plural)
            for key, plural in AXES.items()
        ]
        points = (dict(zip(AXES, point, strict=True)) for point in itertools.product(*lists))
        return [RunConfig(**point, **shared).in_epochs() for point in points]

    @classmethod
    def of_run(cls, run: RunConfig, name: str) -> SweepConfig:
        """The sweep of this one run (``experiments train``)."""
        data = {AXES.get(k, k): [v] if k in AXES else v for k, v in run.model_dump().items()}
        if run.epochs is not None:  # the steps follow from them
            data.pop("steps")
        return build(cls, {"name": name, **data})  # checks the device is here


def by_setting(points: list[RunConfig]) -> list[list[RunConfig]]:
    """Grid points by setting (all but lr, seed and impl: what a search over the rates chooses
    for, every seed and implementation together), in the grid's order."""
    groups: dict[str, list[RunConfig]] = defaultdict(list)
    for point in points:
        groups[point.model_dump_json(exclude={"lr", "seed", "impl"})].append(point)
    return list(groups.values())


def rate_means(points: list[RunConfig], values: dict[str, float]) -> dict[float, float]:
    """Each rate's mean value over its points (``values`` by config key); inf for a rate with
    a value missing (a run that diverged or failed) or not finite."""
    by_lr: dict[float, list[float]] = defaultdict(list)
    for point in points:
        by_lr[point.lr].append(values.get(point.key, math.inf))
    return {
        lr: sum(v) / len(v) if all(map(math.isfinite, v)) else math.inf for lr, v in by_lr.items()
    }


# A run's key → the sweep's list of them; the grid is their product, in this order.
AXES = {
    "dataset": "datasets",
    "device": "devices",
    "seed": "seeds",
    "optimizer": "optimizers",
    "batch_size": "batch_sizes",
    "impl": "impls",
    "lr": "lrs",
}


class RunConfig(_Common):
    """One grid point: everything that determines one run, logged whole as its params."""

    dataset: DatasetConfig = Field(
        description="a name, or YAML with the loader's parameters: '{name: moons, noise: 0.3}'"
    )
    impl: Impl = Field(description="manual, autograd or function")
    lr: PositiveFloat = Field(description="learning rate > 0")
    device: Device = Field("cpu", description="cpu, cuda or mps")
    seed: Count = Field(0, ge=0, description="seed of the split and the initialisation")
    optimizer: OptimizerConfig = Field(
        SGD,
        description="sgd, momentum, nesterov, adam, or YAML: '{name: adam, weight_decay: 0.01}'",
    )
    batch_size: BatchSize = Field(
        None,
        description="samples a step sees, in an order drawn afresh each epoch from the seed: "
        "the same batches for every implementation and learning rate; default (or the "
        "training set's size or more): the whole set, full-batch descent",
    )

    @property
    def key(self) -> str:
        """A stable hash of the whole config: the same key means the same run."""
        defaults = {"optimizer": SGD.model_dump(mode="json"), **ADDED}
        return _key(self.model_dump(mode="json"), defaults)

    @property
    def name(self) -> str:
        rule = "" if self.optimizer == SGD else f" · {self.optimizer.label}"
        batch = "" if self.batch_size is None else f" · b={self.batch_size}"
        model = "" if self.model is None else f" {self.model.rpartition(':')[2]}"
        return (
            f"{self.impl}{model} · {self.dataset.label} · lr={self.lr:g}{rule}{batch} · "
            f"{self.device} · s{self.seed}"
        )

    def params(self) -> dict[str, str]:
        """Flat ``key → str`` for MLflow: ``dataset``, ``dataset.noise``, ``lr``,
        ``optimizer`` (its label), ``optimizer.momentum``, ..."""
        flat = {k: v for k, v in self.model_dump().items() if k not in ("dataset", "optimizer")}
        flat["dataset"] = self.dataset.name
        flat.update({f"dataset.{k}": v for k, v in self.dataset.params.items()})
        flat["optimizer"] = self.optimizer.label
        flat.update({f"optimizer.{k}": v for k, v in self.optimizer.model_dump().items()})
        return {k: _text(v) for k, v in flat.items()}

    def command(self) -> str:
        """The shell command that repeats this run on its own: ``experiments train`` with
        every key that has no default or is not at it, as ``train`` reads them."""
        parts = ["python -m experiments train"]
        for key, field in run_keys().items():
            value = getattr(self, key)
            if key == "steps" and self.epochs is not None:
                continue  # they follow from the epochs
            if field.is_required() or value != field.default:
                text = as_yaml(value)
                if not isinstance(text, str | int | float):  # a mapping: YAML on one line
                    text = yaml.safe_dump(text, default_flow_style=True, width=10**6).strip()
                parts.append(f"--{key.replace('_', '-')} {shlex.quote(str(text))}")
        return " ".join(parts)

    def in_epochs(self) -> RunConfig:
        """This run with its steps worked out from ``epochs`` (as it is without them)."""
        if self.epochs is None:
            return self
        from experiments.data import load_split  # the data reads configs: import when used

        n = load_split(self.dataset, self.seed, self.val_fraction).X_train.shape[0]
        steps = self.epochs * per_epoch(n, self.batch_size, self.drop_last)
        return self.model_copy(update={"steps": steps})

    def check_every_for(self, n_values: int) -> int:
        if self.check_every is not None:
            return self.check_every
        return 1 if n_values <= 1_000_000 else max(1, math.ceil(self.steps / 100))


def run_keys() -> dict[str, Any]:
    """A run's keys and their fields: its own first (the grid's axes), then the shared ones."""
    own = [k for k in RunConfig.model_fields if k not in _Common.model_fields]
    return {k: RunConfig.model_fields[k] for k in [*own, *_Common.model_fields]}


def _text(value: object) -> str:
    return str(value)  # floats print their shortest exact repr: 0.0031622776601683794


# --- reading configs ------------------------------------------------------------------------
def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys, got {type(data).__name__}")
    return data


def parse_overrides(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["lrs=[0.01,0.1]", "steps=10"]`` → ``{"lrs": [0.01, 0.1], "steps": 10}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = parse_value(f"--set {key.strip()}", raw)
    return out


def parse_value(where: str, raw: str) -> Any:
    """One value as a config file would hold it: ``raw`` read as YAML."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"{where}: {raw!r} is not a YAML value") from None


def as_yaml(value: Any) -> Any:
    """A key's value as a config file writes it (a dataset or rule by name where it can)."""
    return value.as_yaml() if isinstance(value, BaseModel) else value


def build(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate ``data`` as ``model``; the first problem becomes a one-line ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(describe(err, model)) from None


def describe(err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        keys = ", ".join(_model_at(model, first["loc"][:-1]).model_fields)
        return f"unknown config key {loc!r}; valid keys: {keys}"
    if first["type"] == "missing":
        return f"missing config key {loc!r}"
    message = first["msg"].removeprefix("Value error, ")
    shown = first.get("input")
    got = "" if isinstance(shown, dict) or first["type"] == "value_error" else f" (got {shown!r})"
    return f"{loc}: {message}{got}" if loc else message


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The config model that holds the key at ``loc`` (``optimizers.0.foo``: an
    OptimizerConfig's), found through the field types (``list[X]``, ``X | None``)."""
    for part in loc:
        if isinstance(part, str) and part in model.model_fields:
            hint = model.model_fields[part].annotation
            found = [t for t in (hint, *get_args(hint)) if _is_model(t)]
            model = found[0] if found else model
    return model


def _is_model(hint: Any) -> bool:
    return isinstance(hint, type) and issubclass(hint, BaseModel)


def load_sweep(path: str | Path | None, overrides: dict[str, Any]) -> SweepConfig:
    data = read_yaml(path) if path is not None else {}
    return build(SweepConfig, {**data, **overrides})
