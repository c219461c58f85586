"""The sharpness λ_max(∇²J) from a Hessian-vector product: power iteration, warm-started.

The Hessians here are positive semi-definite (``logistic.py`` and ``softmax.py`` derive them),
so the largest eigenvalue is the one of largest modulus and power iteration finds it:
v ← Hv/‖Hv‖ converges to the top eigenvector at the rate λ₂/λ₁ per iteration, and the Rayleigh
quotient vᵀHv/vᵀv to λ_max with the square of that rate. Along a training run the Hessian moves
little from one step to the next, so the previous step's vector is a start already close to the
answer: a few iterations a step keep it there (PyHessian and the edge-of-stability code start
from a fresh random vector each time, and so need tens).

A fixed number of iterations and no convergence test on the host: on a GPU nothing waits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Direction = tuple[torch.Tensor, torch.Tensor]  # (v_w, v_b): a vector in the parameters' shapes


def norm(v: Direction) -> torch.Tensor:
    return torch.sqrt(sum(part.square().sum() for part in v))


def sharpness(
    hvp: Callable[[Direction], Direction], start: Direction, iterations: int
) -> tuple[torch.Tensor, Direction]:
    """(λ, v): the Rayleigh quotient vᵀHv (‖v‖ = 1) after ``iterations`` power steps from
    ``start``, and v, the start for the next call. ``hvp``: v ↦ Hv (``Kind.hvp_at`` at θ)."""
    scale = norm(start)
    v = tuple(part / scale for part in start)
    for _ in range(iterations):
        hv = hvp(v)
        scale = norm(hv)
        v = tuple(part / scale for part in hv)
    hv = hvp(v)
    return sum((a * b).sum() for a, b in zip(v, hv, strict=True)), v
