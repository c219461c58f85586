r"""``optimizer.step()`` written by hand: momentum, Nesterov and Adam, and L2 weight decay.

Each rule below is ``torch.optim``'s, in its notation (θ a parameter, g its gradient, α the
learning rate, λ the weight decay, t = 1, 2, … the step), so the hand-written models can be
checked against ``torch.optim.SGD`` and ``torch.optim.Adam`` step by step:

    weight decay      g ← g + λ θ              (for the weights only; see below)
    sgd               θ ← θ − α g
    momentum (μ)      v ← g at t = 1, else v ← μ v + g;      θ ← θ − α v
    nesterov (μ)      v as for momentum;                      θ ← θ − α (g + μ v)
    adam (β₁, β₂, ε)  m ← β₁ m + (1 − β₁) g,   s ← β₂ s + (1 − β₂) g²
                      m̂ = m / (1 − β₁ᵗ),       ŝ = s / (1 − β₂ᵗ)
                      θ ← θ − α m̂ / (√ŝ + ε)

Weight decay λ is the gradient of (λ/2)‖W‖² added to the loss: with λ > 0 the objective is
strongly convex and has exactly one minimiser, even on a linearly separable training set
(where the unpenalised logistic loss has none). It applies to the weights, not the bias: the
usual practice, and scikit-learn's (``C = 1 / (λ m)``), so its solver gives the optimum.

``zero_grad=False`` is the ablation of ``optimizer.zero_grad()``: autograd adds each step's
gradient into ``.grad``, so without it the step uses G_t = g_1 + … + g_t, every past gradient.
(That is momentum with μ = 1, a velocity that never decays.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

Rule = Literal["sgd", "momentum", "nesterov", "adam"]
RULES: tuple[str, ...] = get_args(Rule)


@dataclass(frozen=True)
class Optimizer:
    """Which update rule and its hyperparameters; the learning rate is the model's ``lr``."""

    name: Rule = "sgd"
    momentum: float = 0.9  # momentum and nesterov
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float = 1e-8  # adam
    weight_decay: float = 0.0  # λ: L2 on the weights
    zero_grad: bool = True  # False: gradients accumulate across steps

    def __post_init__(self) -> None:
        if self.name not in RULES:
            raise ValueError(f"unknown optimizer {self.name!r}; choose one of {', '.join(RULES)}")
        checks = {
            "momentum": 0 <= self.momentum < 1,
            "betas": len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "eps": self.eps > 0,
            "weight_decay": self.weight_decay >= 0,
        }
        for name, ok in checks.items():
            value = getattr(self, name)
            if not ok or any(not math.isfinite(v) for v in _numbers(value)):
                raise ValueError(f"optimizer {name} out of range: {value!r}")
        if self.name in ("momentum", "nesterov") and self.momentum == 0:
            raise ValueError(f"{self.name} needs momentum > 0 (momentum 0 is plain sgd)")

    @property
    def label(self) -> str:
        """Short and unique per setting: ``sgd``, ``momentum(0.9)``, ``adam+wd(0.001)``, …"""
        text = self.name
        if self.name in ("momentum", "nesterov"):
            text += f"({self.momentum:g})"
        if self.name == "adam" and (self.betas, self.eps) != ((0.9, 0.999), 1e-8):
            text += f"({self.betas[0]:g},{self.betas[1]:g},{self.eps:g})"
        if self.weight_decay:
            text += f"+wd({self.weight_decay:g})"
        if not self.zero_grad:
            text += ", no zero_grad"
        return text

    def torch_optimizer(
        self, params: list[torch.Tensor], decays: list[bool], lr: float, device: torch.device
    ) -> torch.optim.Optimizer:
        """The same rule from ``torch.optim``, for one model's parameters; weight decay goes
        on those ``decays`` marks (the weights: the biases sit in a param group of their own)."""
        groups = [{"params": list(params)}]
        if self.weight_decay:
            decayed = [p for p, decay in zip(params, decays, strict=True) if decay]
            others = [p for p, decay in zip(params, decays, strict=True) if not decay]
            groups = [
                {"params": decayed, "weight_decay": self.weight_decay},
                {"params": others, "weight_decay": 0.0},
            ]
        if self.name == "adam":
            # capturable: the step count stays on the GPU, so a CUDA graph can replay a step.
            capturable = device.type == "cuda"
            return torch.optim.Adam(
                groups, lr=lr, betas=self.betas, eps=self.eps, capturable=capturable
            )
        momentum = 0.0 if self.name == "sgd" else self.momentum
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=self.name == "nesterov")


def _numbers(value) -> tuple[float, ...]:
    return tuple(value) if isinstance(value, tuple) else (float(value),)


SGD = Optimizer()


def check_rule(optimizer: object) -> Optimizer:
    """A model's update rule: ``None`` is plain SGD."""
    if optimizer is None:
        return SGD
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a manual_models.Optimizer, got {optimizer!r}")
    return optimizer


class HandOptimizer:
    """The rules above for a hand-differentiated model: ``step(params, grads, lr)`` updates
    the parameters in place. The state (v, or m, s and t) lives on the parameters' device as
    tensors, so a captured CUDA graph replays a step, bias correction included."""

    def __init__(self, spec: Optimizer) -> None:
        self.spec = spec
        self.state: list[dict[str, torch.Tensor]] = []

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr, decays) -> None:
        """θ ← θ − lr·direction for each parameter; ``decays[i]``: whether weight decay
        applies to ``params[i]`` (the weights, not the bias). ``lr`` is a number, or a row of
        rates broadcast against a trailing axis of models side by side (columns never mix)."""
        if not self.state:
            self.state = [{} for _ in params]
        for theta, g, decay, state in zip(params, grads, decays, self.state, strict=True):
            if decay and self.spec.weight_decay:
                g = g + self.spec.weight_decay * theta  # ∂/∂θ of (λ/2)‖θ‖²
            direction = self._direction(theta, g, state)
            if isinstance(lr, torch.Tensor):
                theta.sub_(direction * lr)
            else:  # torch.optim's own form: one rounding, θ − α·d fused
                theta.sub_(direction, alpha=lr)

    def _direction(self, theta, g, state: dict[str, torch.Tensor]) -> torch.Tensor:
        spec = self.spec
        if spec.name == "sgd":
            return g
        if spec.name in ("momentum", "nesterov"):
            if "v" not in state:
                state["v"] = g.clone()  # v₁ = g₁
            else:
                state["v"].mul_(spec.momentum).add_(g)  # v ← μ v + g
            v = state["v"]
            return g + spec.momentum * v if spec.name == "nesterov" else v
        beta1, beta2 = spec.betas  # adam
        if "m" not in state:
            state["m"] = torch.zeros_like(theta)
            state["s"] = torch.zeros_like(theta)
            state["t"] = torch.zeros((), device=theta.device, dtype=theta.dtype)
        m, s, t = state["m"], state["s"], state["t"]
        t.add_(1)
        m.mul_(beta1).add_(g, alpha=1 - beta1)  # m ← β₁ m + (1 − β₁) g
        s.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # s ← β₂ s + (1 − β₂) g²
        m_hat = m / (1 - torch.pow(beta1, t))
        s_hat = s / (1 - torch.pow(beta2, t))
        return m_hat / (s_hat.sqrt() + spec.eps)
