"""How two implementations are compared: one helper for the tests and for the runs.

As in nn-zero-to-hero's ``cmp()``: say whether two results are bit-identical, close, and by how
much they differ. Across implementations expect *close*, never *identical*: the reductions
(``Xᵀr``, ``mean``) add the same numbers in different orders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """‖actual − expected‖ / ‖expected‖ as a 0-d tensor on the inputs' device (no host sync).

    Both zero gives 0; a non-zero difference from an exactly zero reference gives inf.
    """
    diff = torch.linalg.vector_norm((actual - expected).to(torch.float64))
    ref = torch.linalg.vector_norm(expected.to(torch.float64))
    return torch.where(diff == 0, torch.zeros_like(diff), diff / ref)


@dataclass(frozen=True)
class Comparison:
    name: str
    exact: bool
    max_abs_diff: float
    rel_err: float

    def within(self, rtol: float) -> bool:
        return self.rel_err <= rtol

    def __str__(self) -> str:
        return (
            f"{self.name:<12} exact: {self.exact!s:<5} rel_err: {self.rel_err:.3e}  "
            f"max|diff|: {self.max_abs_diff:.3e}"
        )


def compare(name: str, actual: torch.Tensor, expected: torch.Tensor) -> Comparison:
    if actual.shape != expected.shape:
        raise ValueError(f"{name}: shapes differ, {tuple(actual.shape)} vs {tuple(expected.shape)}")
    actual, expected = actual.detach(), expected.detach()
    diff = (actual.to(torch.float64) - expected.to(torch.float64)).abs()
    return Comparison(
        name=name,
        exact=bool(torch.equal(actual, expected)),
        max_abs_diff=float(diff.max()) if diff.numel() else 0.0,
        rel_err=float(relative_error(actual, expected)),
    )
