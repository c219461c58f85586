"""The sharpness λ_max(∇²J) from a Hessian-vector product: power iteration, warm-started.

The Hessians here are positive semi-definite (``logistic.py`` and ``softmax.py`` derive them),
so the largest eigenvalue is the one of largest modulus and power iteration finds it:
v ← Hv/‖Hv‖ converges to the top eigenvector at the rate λ₂/λ₁ per iteration, and the Rayleigh
quotient vᵀHv/vᵀv to λ_max with the square of that rate. Along a training run the Hessian moves
little from one step to the next, so the previous step's vector is a start already close to the
answer: a few iterations a step keep it there (PyHessian and the edge-of-stability code start
from a fresh random vector each time, and so need tens).

A fixed number of iterations and no convergence test on the host: on a GPU nothing waits. With
``columns``, every tensor has a trailing axis of K models side by side, and each column is
iterated on its own (norms and quotients per column).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Direction = tuple[torch.Tensor, ...]  # (v_w, v_b): a vector in the parameters' shapes
ITERATIONS = 10  # power steps a measurement from the last one's vector (docs/proof.md)
# A run's first measurement, from a random vector: 50 bring it to 1e-11 of eigvalsh on every
# dataset here (digits is the slowest, λ₂/λ₁ = 0.78).
FIRST_ITERATIONS = 50


def inner(a: Direction, b: Direction, columns: bool = False) -> torch.Tensor:
    """⟨a, b⟩ over every parameter: one number, or one per trailing column."""
    if not columns:
        return sum((x * y).sum() for x, y in zip(a, b, strict=True))
    return sum((x * y).reshape(-1, x.shape[-1]).sum(0) for x, y in zip(a, b, strict=True))


def sharpness(
    hvp: Callable[[Direction], Direction], start: Direction, iterations: int, columns: bool = False
) -> tuple[torch.Tensor, Direction]:
    """(λ, v): the Rayleigh quotient vᵀHv (‖v‖ = 1) after ``iterations`` power steps from
    ``start``, and v, the start for the next call. ``hvp``: v ↦ Hv (``Kind.hvp_at`` at θ)."""
    v = start
    for _ in range(iterations + 1):
        scale = torch.sqrt(inner(v, v, columns))
        v = tuple(part / scale for part in v)
        hv = hvp(v)
        top, v = inner(v, hv, columns), hv
    return top, tuple(part / torch.sqrt(inner(hv, hv, columns)) for part in hv)
