"""The training loop: one loop for every implementation, plain PyTorch, no tracking.

It drives any :class:`manual_models.GradientDescentModel` and returns what happened as a
:class:`History`; writing it anywhere (MLflow, files) is someone else's job.

The history is preallocated on the model's device and filled with tensor copies, never with
``.item()``, so on a GPU the loop queues work without waiting for the host; it crosses to the
CPU once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from manual_models import GradientDescentModel


@dataclass(frozen=True)
class History:
    """Per-step record of full-batch gradient descent, on the CPU.

    Row t of ``loss``, ``dw`` and ``db`` belongs to step t, evaluated at the parameters
    ``w[t]``, ``b[t]`` before that step's update; ``w[steps]``, ``b[steps]`` are the final ones.
    """

    loss: torch.Tensor  # (steps,)
    dw: torch.Tensor  # (steps, n_features)
    db: torch.Tensor  # (steps,)
    w: torch.Tensor  # (steps + 1, n_features)
    b: torch.Tensor  # (steps + 1,)

    @property
    def steps(self) -> int:
        return self.loss.shape[0]


def fit(model: GradientDescentModel, X: torch.Tensor, y: torch.Tensor, steps: int) -> History:
    """Run ``steps`` full-batch gradient-descent steps of ``model`` on ``(X, y)``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    n = model.n_features
    new = {"device": model.device, "dtype": model.dtype}
    record = History(
        loss=torch.empty(steps, **new),
        dw=torch.empty(steps, n, **new),
        db=torch.empty(steps, **new),
        w=torch.empty(steps + 1, n, **new),
        b=torch.empty(steps + 1, **new),
    )
    for t in range(steps):
        record.w[t] = model.w
        record.b[t] = model.b
        # Labels are checked once; checking them every step would sync a GPU each time.
        record.loss[t] = model.train_step(X, y, check=t == 0)
        record.dw[t] = model.grads["dw"]
        record.db[t] = model.grads["db"]
    record.w[steps] = model.w
    record.b[steps] = model.b
    return History(**{f.name: getattr(record, f.name).cpu() for f in fields(History)})
