"""The seeded starting point every implementation shares: ``nn.Linear``'s default draw.

Drawn on the CPU in float64 from a private generator and then cast, so the same seed gives the
same parameters on every device and in every implementation, and float32 parameters are the
float64 ones rounded. Nothing here touches torch's global random state.
"""

from __future__ import annotations

import math

import torch

from manual_models.validation import check_seed


def init_linear(
    n_features: int, n_outputs: int, seed: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear(n_features, n_outputs)``'s init, U(−1/√n, 1/√n): weight (n_outputs,
    n_features) row by row, then bias (n_outputs,). One output is the binary model's w and b;
    with C outputs the weight is softmax regression's Wᵀ, and its first row is that same w."""
    generator = torch.Generator().manual_seed(check_seed(seed))
    bound = 1.0 / math.sqrt(n_features)
    count = n_outputs * n_features
    draws = torch.rand(count + n_outputs, generator=generator, dtype=torch.float64)
    draws = ((2 * draws - 1) * bound).to(device=device, dtype=dtype)
    return draws[:count].view(n_outputs, n_features).clone(), draws[count:].clone()
