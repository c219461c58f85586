"""Does a run agree with its autograd twin? The gap between two trajectories, and the verdict.

The tolerances are measured, not guessed: 1,000 steps of gradient descent on standardised
breast_cancer at lr 0.1 put the manual and autograd weights 1.2e-7 apart in float32 and 3.3e-16
in float64 (docs/proof.md). The bounds below leave about two orders of magnitude of room for
other data, learning rates and devices, and still catch a wrong gradient at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from experiments import findings
from experiments.loop import History

TOLERANCES = {getattr(torch, dtype): tol for dtype, tol in findings.TOLERANCES.items()}


@dataclass(frozen=True)
class TrajectoryGap:
    """The largest differences between two runs over all their steps."""

    max_delta: dict[str, float]  # each parameter's max over steps and entries of |θ_a − θ_b|
    max_delta_loss: float
    steps: int

    @property
    def max_delta_theta(self) -> float:
        """Over every parameter."""
        return max(self.max_delta.values())

    # The built-in kinds' parameters by their names.
    max_delta_w = property(lambda self: self.max_delta["w"])
    max_delta_b = property(lambda self: self.max_delta["b"])

    def agrees(self, dtype: torch.dtype) -> bool:
        return max(self.max_delta_theta, self.max_delta_loss) <= TOLERANCES[dtype]


def trajectory_gap(a: History, b: History) -> TrajectoryGap:
    """Compare two histories of the same length step by step, parameter by parameter."""
    shapes = [{n: tuple(t.shape) for n, t in h.params.items()} for h in (a, b)]
    if shapes[0] != shapes[1]:
        raise ValueError(f"histories differ in shape: {shapes[0]} vs {shapes[1]}")

    def gap(x: torch.Tensor, y: torch.Tensor) -> float:
        return float((x.to(torch.float64) - y.to(torch.float64)).abs().max())

    deltas = {name: gap(a.params[name], b.params[name]) for name in a.params}
    return TrajectoryGap(deltas, gap(a.loss, b.loss), a.steps)


def parted_at(a: History, b: History, tolerance: float) -> int | None:
    """The first step at which two runs are more than ``tolerance`` apart, in any parameter
    (at the rows both kept) or in the loss (every row); None if they never are."""
    apart = [
        int(rows[0])
        for rows in (
            a.kept[_over(a.params, b.params, tolerance)],
            torch.nonzero((a.loss.double() - b.loss.double()).abs() > tolerance).flatten(),
        )
        if len(rows)
    ]
    return min(apart) if apart else None


def _over(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor], tolerance: float):
    """Per kept row: whether any parameter's entry differs by more than ``tolerance``."""
    rows = len(next(iter(x.values())))
    return torch.stack([
        (x[n].double() - y[n].double()).abs().reshape(rows, -1).amax(1) > tolerance for n in x
    ]).any(0)  # fmt: skip
