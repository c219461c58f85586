"""Argument checks and the shared initialisation: one place, so all three models agree.

Every check that only looks at metadata (shape, dtype, device) is free on any device. The one
check that reads values (labels in {0, 1}) synchronises a GPU with the host, so the hot-path
methods let a caller that has already checked its labels skip it with ``check=False``.
"""

from __future__ import annotations

import math

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_n_features(n_features: object) -> int:
    if isinstance(n_features, bool) or not isinstance(n_features, int) or n_features < 1:
        raise ValueError(f"n_features must be an integer >= 1, got {n_features!r}")
    return n_features


def check_lr(lr: object) -> float:
    if isinstance(lr, bool) or not isinstance(lr, int | float):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def check_lrs(lr: object) -> tuple[float | tuple[float, ...], tuple[float, ...]]:
    """One rate, or a list of K rates (K models trained side by side): ``(lr, lrs)``."""
    if isinstance(lr, list | tuple) or (isinstance(lr, torch.Tensor) and lr.ndim == 1):
        values = lr.tolist() if isinstance(lr, torch.Tensor) else list(lr)
        if not values:
            raise ValueError("lr must be a positive finite number or a non-empty list of them")
        lrs = tuple(check_lr(v) for v in values)
        return lrs, lrs
    if isinstance(lr, torch.Tensor) and lr.ndim == 0:
        lr = lr.item()
    single = check_lr(lr)
    return single, (single,)


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
        present = [d for d in DEVICE_TYPES if device_available(d)]
        raise ValueError(
            f"device {str(device)!r} is not available here; present: {', '.join(present)}"
        )
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


def _check_label_tensor(y: object, n_samples: int, device: torch.device) -> None:
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.shape != (n_samples,):
        raise ValueError(f"y must have shape ({n_samples},) to match X, got {tuple(y.shape)}")
    if y.device != device:
        raise ValueError(f"y is on {y.device} but the model is on {device}")


def check_y(y: object, n_samples: int, device: torch.device, dtype: torch.dtype, *, values: bool):
    """Labels of shape (n_samples,) in {0, 1}, returned in the model's dtype."""
    _check_label_tensor(y, n_samples, device)
    if y.is_complex():
        raise ValueError(f"y must hold real labels in {{0, 1}}, got dtype {y.dtype}")
    if values and y.device.type != "meta" and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("y must hold binary labels in {0, 1}")
    return y if y.dtype == dtype else y.to(dtype)


def check_labels(y: object, n_samples: int, device: torch.device, n_classes: int, *,
                 values: bool) -> torch.Tensor:  # fmt: skip
    """Class indices of shape (n_samples,) in {0, …, n_classes − 1}, returned as int64."""
    _check_label_tensor(y, n_samples, device)
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"y must hold class indices (an integer tensor), got dtype {y.dtype}")
    if values and y.device.type != "meta" and not bool(((y >= 0) & (y < n_classes)).all()):
        raise ValueError(f"y must hold class indices in 0..{n_classes - 1}")
    return y if y.dtype == torch.int64 else y.long()


def init_parameters(
    n_features: int, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """nn.Linear's default init, U(-1/√n, 1/√n) for w and b, from a private generator.

    Drawn on the CPU in float64 and then cast, so the same seed gives the same parameters on
    every device, and float32 parameters are the float64 ones rounded.
    """
    weight, bias = init_linear(n_features, 1, seed, device, dtype)
    return weight[0].clone(), bias[0].clone()


def init_linear(
    n_features: int, n_outputs: int, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same draw for ``nn.Linear(n_features, n_outputs)``: weight (n_outputs, n_features)
    row by row, then bias (n_outputs,). One output is the binary model's w and b."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(n_features)
    count = n_outputs * n_features
    draws = torch.rand(count + n_outputs, generator=generator, dtype=torch.float64)
    draws = ((2 * draws - 1) * bound).to(device=device, dtype=dtype)
    return draws[:count].view(n_outputs, n_features).clone(), draws[count:].clone()


class CheckedModel:
    """What all three models share: validated constructor arguments and input checks."""

    n_features: int
    lr: float | tuple[float, ...]  # a tuple: one model per rate, side by side
    lrs: tuple[float, ...]
    batch_shape: tuple[int, ...]  # () for one model, (K,) for K rates
    device: torch.device
    dtype: torch.dtype

    n_classes: int | None = None  # None: the binary model (one logit per sample)

    def _check_args(self, n_features, lr, device, dtype) -> None:
        self.n_features = check_n_features(n_features)
        self.lr, self.lrs = check_lrs(lr)
        self.batch_shape = (len(self.lrs),) if isinstance(self.lr, tuple) else ()
        self.device = resolve_device(device)
        self.dtype = check_dtype(dtype)

    def _check_multiclass_args(self, n_features, n_classes, lr, device, dtype) -> None:
        if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        if isinstance(lr, list | tuple) or (isinstance(lr, torch.Tensor) and lr.ndim):
            raise ValueError("several learning rates at once is for the binary model; give one")
        self._check_args(n_features, lr, device, dtype)
        self.n_classes = n_classes

    @property
    def w_shape(self) -> tuple[int, ...]:
        """(n,), (n, K) for K rates, or (n, C) for C classes."""
        if self.n_classes is not None:
            return (self.n_features, self.n_classes)
        return (self.n_features, *self.batch_shape)

    def _initial_parameters(self, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeded draw; with K rates every column starts from the same one."""
        if self.n_classes is not None:
            weight, b = init_linear(self.n_features, self.n_classes, seed, self.device,
                                    self.dtype)  # fmt: skip
            return weight.T.contiguous(), b  # W = nn.Linear's weight transposed
        w, b = init_parameters(self.n_features, seed, self.device, self.dtype)
        if self.batch_shape:
            k = self.batch_shape[0]
            return w.unsqueeze(1).repeat(1, k), b.repeat(k)
        return w, b

    def _X(self, X: torch.Tensor) -> torch.Tensor:
        return check_X(X, self.n_features, self.device, self.dtype)

    def _y(self, y: torch.Tensor, X: torch.Tensor, check: bool) -> torch.Tensor:
        if self.n_classes is not None:
            return check_labels(y, X.shape[0], self.device, self.n_classes, values=check)
        return check_y(y, X.shape[0], self.device, self.dtype, values=check)

    def __repr__(self) -> str:
        classes = "" if self.n_classes is None else f", n_classes={self.n_classes}"
        return (
            f"{type(self).__name__}(n_features={self.n_features}{classes}, lr={self.lr}, "
            f"device={str(self.device)!r}, dtype={self.dtype})"
        )
