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

    def torch_optimizer(self, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
        """The same rule from ``torch.optim``. ``groups`` hold (weights, bias) pairs as
        ``{"params": [w, b], "lr": lr}``; weight decay is put on the weights only."""
        split = groups
        if self.weight_decay:
            split = []
            for group in groups:
                w, b = group["params"]
                split.append({**group, "params": [w], "weight_decay": self.weight_decay})
                split.append({**group, "params": [b], "weight_decay": 0.0})
        lr = groups[0]["lr"]
        if self.name == "adam":
            # capturable: the step count stays on the GPU, so a CUDA graph can replay a step.
            return torch.optim.Adam(split, lr=lr, betas=self.betas, eps=self.eps,
                                    capturable=device.type == "cuda")  # fmt: skip
        momentum = 0.0 if self.name == "sgd" else self.momentum
        return torch.optim.SGD(split, lr=lr, momentum=momentum, nesterov=self.name == "nesterov")


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
    the parameters in place. ``lr`` is a number, or a (K,) row for K models side by side
    (their columns never mix). The state (v, or m, s and t) lives on the parameters' device
    as tensors, so a captured CUDA graph replays a step, bias correction included."""

    def __init__(self, spec: Optimizer) -> None:
        self.spec = spec
        self.state: list[dict[str, torch.Tensor]] = []

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor], lr, decays) -> None:
        """``decays[i]``: whether weight decay applies to ``params[i]`` (the weights)."""
        spec = self.spec
        if not self.state:
            self.state = [{} for _ in params]
        for theta, g, decay, state in zip(params, grads, decays, self.state, strict=True):
            if decay and spec.weight_decay:
                g = g + spec.weight_decay * theta  # ∂/∂θ of (λ/2)‖θ‖²
            if spec.name == "sgd":
                direction = g
            elif spec.name in ("momentum", "nesterov"):
                if "v" not in state:
                    state["v"] = g.clone()  # v₁ = g₁
                else:
                    state["v"].mul_(spec.momentum).add_(g)  # v ← μ v + g
                v = state["v"]
                direction = g + spec.momentum * v if spec.name == "nesterov" else v
            else:  # adam
                beta1, beta2 = spec.betas
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
                direction = m_hat / (s_hat.sqrt() + spec.eps)
            if isinstance(lr, torch.Tensor):
                theta.sub_(direction * lr)  # column k by its own rate
            else:
                theta.sub_(direction, alpha=lr)


class HandStepped:
    """The update half of a hand-differentiated model (``w``, ``b``, ``grads``, ``lr``): the
    post's ``optimize``, and gradients kept the way ``.grad`` keeps them."""

    def _init_rule(self, optimizer: Optimizer | None) -> None:
        self.rule = check_rule(optimizer)
        self.optimizer = HandOptimizer(self.rule)
        self.grads: dict[str, torch.Tensor] = {}

    def optimize(self) -> None:
        """θ ← θ − lr·dθ for plain SGD (momentum, Nesterov, Adam: the rule's update), in place
        (the parameters keep their storage); with K rates column k moves by its own rate."""
        if not self.grads:
            raise RuntimeError("optimize() needs gradients: call backward() first")
        if self.w.is_inference() and not torch.is_inference_mode_enabled():
            # Made under inference_mode, updated outside it: move to ordinary tensors once.
            self.w, self.b = self.w.clone(), self.b.clone()
        lr = self._lr_row if self.batch_shape else self.lr
        grads = [self.grads["dw"], self.grads["db"]]
        self.optimizer.step([self.w, self.b], grads, lr, decays=(True, False))

    def _keep(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This step's gradients; added to the kept ones when the rule has no zero_grad."""
        if not self.rule.zero_grad and self.grads:
            # Accumulate in place, as .grad does (and so a replayed CUDA graph adds into the
            # buffer it captured).
            for name, g in grads.items():
                self.grads[name].add_(g)
            return self.grads
        self.grads = grads
        return grads
