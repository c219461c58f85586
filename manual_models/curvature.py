"""The sharpness λ_max(∇²J) from a Hessian-vector product: a warm-started block of two.

The Hessians here are positive semi-definite (``logistic.py`` and ``softmax.py`` derive them),
so the largest eigenvalue is the one of largest modulus. Power iteration v ← Hv/‖Hv‖ finds it
at the rate λ₂/λ₁ per step, which stalls exactly where a run is interesting: where the top two
eigenvalues come close or cross, the vector kept from the last step points along the one that
is now second (measured on moons at lr 1: 8.5% low after 10 steps). So two vectors are iterated
together (subspace iteration): the pair spans the top two eigenvectors at the rate λ₃/λ₁, and
the best estimate within their span is the top eigenvalue of the 2 × 2 matrix [[a, c], [c, d]]
of H in an orthonormal basis (u, v) (Rayleigh–Ritz), in closed form:

    λ = (a + d)/2 + √(((a − d)/2)² + c²),   its eigenvector at angle ½·atan2(2c, a − d) from u.

Along a training run the Hessian moves little from one step to the next, so the previous
measurement's pair is a start already close to the answer (PyHessian and the edge-of-stability
code start from a fresh random vector each time, and so need tens of products).

A fixed number of iterations and no convergence test on the host: on a GPU nothing waits. With
``columns``, every tensor has a trailing axis of K models side by side, and each column is
iterated on its own (norms, quotients and angles per column).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Direction = tuple[torch.Tensor, ...]  # (v_w, v_b): a vector in the parameters' shapes
Pair = tuple[Direction, Direction]  # two directions iterated together
# A sweep's default (docs/proof.md): a measurement every 25 steps, 5 block steps (two products
# each) from the last one's pair; within 3.3e-5 of eigvalsh but where θ jumps between them.
SHARPNESS_EVERY = 25
ITERATIONS = 5
# A run's first measurement, from random vectors (λ₃/λ₁ is up to 0.82 here: docs/proof.md).
FIRST_ITERATIONS = 50


def inner(a: Direction, b: Direction, columns: bool = False) -> torch.Tensor:
    """⟨a, b⟩ over every parameter: one number, or one per trailing column."""
    if not columns:
        return sum((x * y).sum() for x, y in zip(a, b, strict=True))
    return sum((x * y).reshape(-1, x.shape[-1]).sum(0) for x, y in zip(a, b, strict=True))


def combine(alpha: torch.Tensor, a: Direction, beta: torch.Tensor, b: Direction) -> Direction:
    """α a + β b, with α and β one number or one per trailing column."""
    return tuple(alpha * x + beta * y for x, y in zip(a, b, strict=True))


def normalised(a: Direction, columns: bool) -> Direction:
    """a/‖a‖ (an a of zeros stays zeros)."""
    norm = torch.sqrt(inner(a, a, columns)).clamp_min(torch.finfo(a[0].dtype).tiny)
    return tuple(x / norm for x in a)


def orthonormal(u: Direction, v: Direction, columns: bool) -> Pair:
    """Gram–Schmidt: u/‖u‖, and v less its part along u, normalised (a v that was all along u
    stays zero: its quotients are then zero and the top is u's own)."""
    u = normalised(u, columns)
    along = inner(u, v, columns)
    return u, normalised(tuple(y - along * x for x, y in zip(u, v, strict=True)), columns)


def sharpness(
    hvp: Callable[[Direction], Direction], start: Pair, iterations: int, columns: bool = False
) -> tuple[torch.Tensor, Pair]:
    """(λ, pair): the top Ritz value of H on the pair after ``iterations`` block steps from
    ``start``, and the pair to start the next call from. ``hvp``: v ↦ Hv
    (``Kind.hessian_product``)."""
    u, v = start
    for _ in range(iterations + 1):
        u, v = orthonormal(u, v, columns)
        hu, hv = hvp(u), hvp(v)
        a, c, d = inner(u, hu, columns), inner(u, hv, columns), inner(v, hv, columns)
        top = (a + d) / 2 + torch.sqrt(((a - d) / 2).square() + c.square())
        angle = torch.atan2(2 * c, a - d) / 2
        cos, sin = torch.cos(angle), torch.sin(angle)
        # H times the Ritz vectors, the top one first: the next step's (unnormalised) pair
        u, v = combine(cos, hu, sin, hv), combine(-sin, hu, cos, hv)
    return top, (u, v)
