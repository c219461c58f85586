"""The values a config is made of: numbers as people type them (``1e7``, ``10_000``), a
dataset by name with its loader parameters, and an update rule with its hyperparameters.

Each validates itself and says what is wrong in one line; :mod:`experiments.config` builds
the sweep and the run from them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from experiments.datasets import CLASSES, DATASETS
from manual_models import IMPLEMENTATIONS, Optimizer
from manual_models.optimizers import Rule

Impl = Literal["manual", "autograd", "function"]
Device = Literal["cpu", "cuda", "mps"]
Dtype = Literal["float32", "float64"]


def integral(value: Any) -> Any:
    """An integer as people type it: ``10000000``, ``10_000_000`` or ``1e7`` (YAML reads
    ``1e7`` as text, and so does a command line). ``1.5`` stays 1.5, for the field's own error
    ("a number with a fractional part") to name the key."""
    if isinstance(value, bool):  # pydantic's lax mode would read true as 1
        raise ValueError(f"takes an integer, got {str(value).lower()}")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            return value  # not a number: the field says so
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def real(value: Any) -> Any:
    """A float as people type it: ``1e-3``, ``0.001``, ``1_000.5``."""
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            return value
    return value


Count = Annotated[int, BeforeValidator(integral)]
Real = Annotated[float, BeforeValidator(real)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False), BeforeValidator(real)]
assert set(Impl.__args__) == set(IMPLEMENTATIONS)  # the registry and the config agree


class DatasetConfig(BaseModel):
    """A dataset by name, with loader parameters: ``moons`` or ``{name: moons, noise: 0.3}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and "params" not in value:
            params = {k: v for k, v in value.items() if k != "name"}
            return {"name": value.get("name"), "params": params}
        return value

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in DATASETS:
            raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
        return name

    @model_validator(mode="after")
    def _params_known(self) -> DatasetConfig:
        allowed = DATASETS[self.name].params
        for key, value in self.params.items():
            if key not in allowed:
                choices = ", ".join(allowed) or "none"
                raise ValueError(
                    f"dataset {self.name!r} takes no {key!r}; its parameters: {choices}"
                )
            self.params[key] = _as_default(key, value, allowed[key])
        return self

    @model_validator(mode="after")
    def _classes_known(self) -> DatasetConfig:
        classes = self.params.get("classes", "binary")
        if classes not in CLASSES:
            raise ValueError(f"classes must be one of {', '.join(CLASSES)}, got {classes!r}")
        return self

    @property
    def multiclass(self) -> bool:
        """``classes: all``: every class, trained by softmax regression."""
        return self.params.get("classes") == "all"

    @property
    def label(self) -> str:
        """``synthetic(n_features=100,n_samples=1000000)``, or just the name."""
        if not self.params:
            return self.name
        inside = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"{self.name}({inside})"

    def as_yaml(self) -> str | dict[str, Any]:
        """As a config file writes it: the name, or ``{name: …, **params}``."""
        return self.name if not self.params else {"name": self.name, **self.params}

    def __hash__(self) -> int:
        return hash(self.label)


def _as_default(key: str, value: Any, default: Any) -> Any:
    """A loader parameter typed as its default is: ``n_samples: 1e6`` is the int 1000000 (so
    the run's key and label are the same however it was written)."""
    if isinstance(default, bool) or not isinstance(default, int | float):
        return value
    typed = integral(value) if isinstance(default, int) else real(value)
    if isinstance(typed, bool) or not isinstance(typed, int | float):
        raise ValueError(f"dataset parameter {key!r} takes a number, got {value!r}")
    if isinstance(default, int) and not isinstance(typed, int):
        raise ValueError(f"dataset parameter {key!r} takes an integer, got {value!r}")
    return typed if isinstance(default, int) else float(typed)


class OptimizerConfig(BaseModel):
    """An update rule: ``sgd``, ``momentum``, ``nesterov``, ``adam``, or a mapping such as
    ``{name: momentum, momentum: 0.5, weight_decay: 1e-3}``; ``zero_grad: false`` lets the
    gradients accumulate across steps (the zero_grad ablation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The rule's own fields and defaults; their ranges are checked by the rule (``_valid``).
    name: Rule = Optimizer.name
    momentum: Real = Field(Optimizer.momentum, description="momentum and nesterov: μ")
    betas: tuple[Real, Real] = Optimizer.betas
    eps: Real = Optimizer.eps
    weight_decay: Real = Field(Optimizer.weight_decay, description="λ: L2 on the weights")
    zero_grad: bool = Optimizer.zero_grad

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _valid(self) -> OptimizerConfig:
        self.rule()  # the rule's checks: ranges, finiteness, momentum > 0 where it is used
        return self

    def rule(self) -> Optimizer:
        return Optimizer(**self.model_dump())

    @property
    def label(self) -> str:
        return self.rule().label

    def as_yaml(self) -> str | dict[str, Any]:
        """As a config file writes it: the name, or ``{name: …}`` with what is not default."""
        given = self.model_dump(mode="json", exclude_defaults=True, exclude={"name"})
        return self.name if not given else {"name": self.name, **given}

    def __hash__(self) -> int:
        return hash(self.label)


SGD = OptimizerConfig()


class _Search(BaseModel):
    """What a search over the rates is written as: ``true`` (the defaults) or a mapping, and
    the metric that makes a rate better (its final value, mean over seeds and implementations)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: Literal["val/loss", "train/loss"] = Field(
        "val/loss", description="what makes a rate better: its final value, mean over seeds"
    )

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        return {} if value is True else value


class EdgeConfig(_Search):
    """``extend_edges``: where a grid that widens itself stops (``true`` takes these defaults).

    A setting whose best rate is the grid's first or last gets the next rate beyond it, at the
    ratio of the two edge rates, until the best is inside, ``max_added`` rates were added on
    that side, or the next rate would leave [``lr_min``, ``lr_max``]. ``metric: train/loss``
    judges the optimisation itself: past the stable rates the training loss rises while a
    small validation set may still reward the noise."""

    max_added: Count = Field(4, ge=1, description="rates added at most beyond each edge")
    lr_min: PositiveFloat = Field(1e-6, description="no rate added below this")
    lr_max: PositiveFloat = Field(1e3, description="no rate added above this")

    @model_validator(mode="after")
    def _ordered(self) -> EdgeConfig:
        if self.lr_min >= self.lr_max:
            raise ValueError(f"lr_min ({self.lr_min:g}) must be below lr_max ({self.lr_max:g})")
        return self


class HalvingConfig(_Search):
    """``halving``: successive halving of the learning rates (``true`` takes these defaults).

    The run's steps are cut into ``rounds`` rungs that grow by 1/``keep``: with 1,000 steps, 3
    rounds and keep 0.5, every rate trains 250 steps, the best half 500, the best quarter all
    1,000. A rate is judged by its ``metric`` at the rung's end, averaged over the seeds and
    the implementations (which share data, split and start)."""

    rounds: Count = Field(3, ge=2, description="rungs, the last at the run's full steps")
    keep: Real = Field(0.5, gt=0, lt=1, description="the share of the rates each rung keeps")

    def rungs(self, steps: int) -> list[int]:
        """The steps at which rates are judged, the last being ``steps``: steps · keepʳ."""
        out = [max(1, round(steps * self.keep ** (self.rounds - r))) for r in range(1, self.rounds)]
        return sorted({*out, steps})
