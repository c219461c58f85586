"""Argument and data checks, one place for all models: each names the problem in one line.

Every check that only looks at metadata (shape, dtype, device) is free on any device. The label
checks also read values, which synchronises a GPU with the host, so a caller that has already
checked its labels can skip that part with ``values=False`` (the models' ``check=False``).
"""

from __future__ import annotations

import math

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_count(name: str, value: object, least: int = 1) -> int:
    """An integer ≥ ``least`` (not a bool, not a float that happens to be whole)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return value


def check_lr(lr: object) -> float:
    if isinstance(lr, list | tuple):
        raise ValueError(
            f"lr must be a positive finite number, got {lr!r} (several rates in one pass: "
            "experiments.LrBatch)"
        )
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return seed


def check_dtype(dtype: object) -> torch.dtype:
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype in DTYPES.values():
        return dtype  # type: ignore[return-value]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def device_available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "mps":
        return torch.backends.mps.is_available()
    return kind in ("cpu", "meta")  # meta: shapes without data, used to test device checks


def available_devices() -> list[str]:
    """The device types this process can use, in the order cpu, cuda, mps."""
    return [kind for kind in DEVICE_TYPES if device_available(kind)]


def resolve_device(device: object) -> torch.device:
    """A concrete device (``cuda`` becomes ``cuda:0``), or a ValueError naming the choices."""
    if device is None:
        device = torch.get_default_device()
    try:
        device = torch.device(device)  # type: ignore[arg-type]
    except (RuntimeError, TypeError):
        raise ValueError(
            f"unknown device {device!r}; choose one of {', '.join(DEVICE_TYPES)}"
        ) from None
    if not device_available(device.type):
        present = ", ".join(available_devices())
        raise ValueError(f"device {str(device)!r} is not available here; present: {present}")
    return torch.empty(0, device=device).device


def check_X(X: object, n_features: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"X must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim != 2 or X.shape[1] != n_features:
        raise ValueError(
            f"X must have shape (n_samples, {n_features}) (rows are samples, as in "
            f"scikit-learn and nn.Linear), got {tuple(X.shape)}"
        )
    if X.shape[0] == 0:
        raise ValueError("X has no rows")
    if X.device != device:
        raise ValueError(f"X is on {X.device} but the model is on {device}")
    if X.dtype != dtype:
        raise ValueError(f"X has dtype {X.dtype} but the model uses {dtype}")
    return X


def _check_label_tensor(y: object, n_samples: int, device: torch.device) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},) to match X, got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"y is on {y.device} but the model is on {device}")
    return y


def check_binary_labels(
    y: object, n_samples: int, device: torch.device, dtype: torch.dtype, *, values: bool
) -> torch.Tensor:
    """Labels of shape (n_samples,) in {0, 1}, returned in the model's dtype."""
    y = _check_label_tensor(y, n_samples, device)
    if y.is_complex():
        raise ValueError(f"y must hold real labels in {{0, 1}}, got dtype {y.dtype}")
    if values and y.device.type != "meta" and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("y must hold binary labels in {0, 1}")
    return y if y.dtype == dtype else y.to(dtype)


def check_class_labels(
    y: object, n_samples: int, device: torch.device, n_classes: int, *, values: bool
) -> torch.Tensor:
    """Class indices of shape (n_samples,) in {0, …, n_classes − 1}, returned as int64."""
    y = _check_label_tensor(y, n_samples, device)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must hold class indices (an integer tensor), got dtype {y.dtype}")
    if values and y.device.type != "meta" and not bool(((y >= 0) & (y < n_classes)).all()):
        raise ValueError(f"y must hold class indices in 0..{n_classes - 1}")
    return y if y.dtype == torch.int64 else y.long()
