"""The data a run trains on: its dataset's seeded, stratified, standardised split, the split's
digest, and the split as tensors for one run.

Every run with the same (dataset, seed, val_fraction) shares one split, whatever its
implementation or learning rate: that is what pairs a manual run with its autograd twin. The
analysis reads the same splits back from here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

from experiments import datasets
from experiments.choices import DatasetConfig
from experiments.config import RunConfig


@cache
def load_split(dataset: DatasetConfig, seed: int, val_fraction: float) -> datasets.Split:
    """The split every run with this key shares (computed once per process)."""
    X, y = datasets.load(dataset.name, **dataset.params)
    return datasets.split(X, y, val_fraction=val_fraction, seed=seed)


@cache
def split_digest(dataset: DatasetConfig, seed: int, val_fraction: float) -> str:
    split = load_split(dataset, seed, val_fraction)
    return digest(split.X_train, split.y_train, split.X_val, split.y_val)


def digest(*arrays: np.ndarray) -> str:
    """SHA-256 over every byte and shape: changes whenever the data does (MLflow's own
    numpy digest samples rows, and misses a change in the middle of a large array)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class RunData:
    """One run's split as tensors on its device: X in its dtype; y in its dtype for logistic
    regression, as class indices (int64) for softmax regression."""

    X: torch.Tensor
    y: torch.Tensor
    X_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    @property
    def shape(self) -> dict[str, int]:
        return {
            "n_train": self.X.shape[0],
            "n_val": self.X_val.shape[0],
            "n_features": self.X.shape[1],
            "n_classes": self.n_classes,
        }


def run_data(config: RunConfig) -> RunData:
    split = load_split(config.dataset, config.seed, config.val_fraction)
    dtype = getattr(torch, config.dtype)
    label = torch.int64 if config.dataset.multiclass else dtype
    n_classes = int(split.y_train.max()) + 1 if config.dataset.multiclass else 2

    def tensor(values: np.ndarray, kind: torch.dtype) -> torch.Tensor:
        return torch.tensor(values, dtype=kind, device=config.device)

    X, X_val = tensor(split.X_train, dtype), tensor(split.X_val, dtype)
    return RunData(X, tensor(split.y_train, label), X_val, tensor(split.y_val, label), n_classes)
