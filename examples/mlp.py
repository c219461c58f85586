"""A two-layer network with its backward pass derived by hand: a user's file, outside the
packages, the exercise every course sets after logistic regression (CS231n's second
assignment, d2l's chapter on backpropagation).

Forward, for m samples X (m × n), hidden width h, C classes, labels y, Y = one_hot(y):

    A = X W1 + b1          (m × h)      W1 (n × h), b1 (h,)
    H = σ(A)               (m × h)      σ = tanh (:class:`TwoLayer`) or ReLU (:class:`ReLU`)
    Z = H W2 + b2          (m × C)      W2 (h × C), b2 (C,)
    J = (1/m) Σᵢ [log Σ_c exp Zᵢc − Zᵢyᵢ]

Backward, the chain rule one layer at a time (each line is the one before times a local
derivative; nothing else):

    dZ  = ∂J/∂Z  = (softmax(Z) − Y) / m
    dW2 = Hᵀ dZ                 db2 = Σᵢ dZᵢ
    dH  = dZ W2ᵀ
    dA  = dH ⊙ σ'(A)            σ'(A) = 1 − H²  (tanh),   1[A > 0]  (ReLU)
    dW1 = Xᵀ dA                 db1 = Σᵢ dAᵢ

Two classes are two outputs (softmax over two logits); labels 0/1 come as the sweep gives
them to logistic regression. Every product is an ``einsum`` over the sample and layer axes
only, so each parameter may carry a trailing axis of K networks side by side (K learning rates
in one pass, as the contract asks).

Unlike logistic regression, J is not convex in (W1, b1, W2, b2): gradient descent from one
start finds one of many minima, and at a large rate it may leave for another. The hand
gradient and autograd's still agree to rounding at every step, for as long as the two runs
stay on the same path: ``examples/mlp.yaml`` sweeps it on digits and moons and the report
shows where they part (docs/your-model.md).

``check_model(TwoLayer)`` and ``check_model(ReLU)`` check it; ``tests/manual_models/test_mlp.py``
runs them, and ``make mutants`` three wrong versions that they catch.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from manual_models import Evaluation, Kind
from manual_models.validation import check_binary_labels, check_class_labels, check_count

HIDDEN = 32


def layer(X, W, b):
    """X W + b, for one network (W (n, h)) or K side by side (W (n, h, K), b (h, K))."""
    return torch.einsum("mn,nh...->mh...", X, W) + b


def one_hot(y, Z):
    """Y, shaped to broadcast against Z: (m, C), or (m, C, 1) for K networks."""
    Y = F.one_hot(y, Z.shape[1]).to(Z.dtype)
    return Y.view(*Y.shape, *(1,) * (Z.ndim - 2))


def cross_entropy(Z, y):
    """mean over samples of log Σ exp Z − Z_y: one loss, or one per trailing column."""
    return -(torch.log_softmax(Z, dim=1) * one_hot(y, Z)).sum(1).mean(0)


class TwoLayer(Kind):
    """X → tanh(X W1 + b1) W2 + b2 → softmax, derived by hand above."""

    parameter_names = ("W1", "b1", "W2", "b2")
    decays = ("W1", "W2")

    def __init__(self, n_features, n_classes=2, *, hidden=HIDDEN, device=None, dtype=None):
        super().__init__(n_features, device=device, dtype=dtype or torch.float32)
        self.n_classes = check_count("n_classes", n_classes, least=2)
        self.hidden = check_count("hidden", hidden)

    def activation(self, A):
        return torch.tanh(A)

    def activation_slope(self, A, H):
        """σ'(A), from A or from H = σ(A): tanh' = 1 − tanh²."""
        return 1 - H * H

    # --- the contract --------------------------------------------------------------------------
    def labels(self, y, n_samples, *, check=True):
        if self.n_classes == 2 and isinstance(y, torch.Tensor) and y.is_floating_point():
            return check_binary_labels(y, n_samples, self.device, torch.int64, values=check)
        return check_class_labels(y, n_samples, self.device, self.n_classes, values=check)

    def initial_parameters(self, seed):
        """Each layer as ``nn.Linear`` draws it, U(±1/√fan_in), from one generator of
        ``seed``: the same on every device and in every implementation."""
        generator = torch.Generator().manual_seed(seed)
        n, h, C = self.n_features, self.hidden, self.n_classes

        def uniform(*shape, fan_in):
            draw = torch.rand(shape, generator=generator, dtype=torch.float64)
            return ((2 * draw - 1) / math.sqrt(fan_in)).to(self.device, self.dtype)

        W1, b1 = uniform(n, h, fan_in=n), uniform(h, fan_in=n)
        W2, b2 = uniform(h, C, fan_in=h), uniform(C, fan_in=h)
        return W1, b1, W2, b2

    def link(self, Z):
        return torch.softmax(Z, dim=1)

    def logits_at(self, X, W1, b1, W2, b2):
        return torch.einsum("mh...,hc...->mc...", self.activation(layer(X, W1, b1)), W2) + b2

    def loss_at(self, X, y, W1, b1, W2, b2):
        return cross_entropy(self.logits_at(X, W1, b1, W2, b2), y)

    def gradients_at(self, X, y, W1, b1, W2, b2):
        m = X.shape[0]
        A = layer(X, W1, b1)
        H = self.activation(A)
        Z = torch.einsum("mh...,hc...->mc...", H, W2) + b2
        dZ = (torch.softmax(Z, dim=1) - one_hot(y, Z)) / m
        dH = torch.einsum("mc...,hc...->mh...", dZ, W2)
        dA = dH * self.activation_slope(A, H)
        grads = {
            "dW1": torch.einsum("mn,mh...->nh...", X, dA),
            "db1": dA.sum(0),
            "dW2": torch.einsum("mh...,mc...->hc...", H, dZ),
            "db2": dZ.sum(0),
        }
        return Evaluation(cross_entropy(Z, y), grads, Z)

    def accuracy(self, Z, y):
        return (Z.argmax(1) == y.view(-1, *(1,) * (Z.ndim - 2))).to(Z.dtype).mean(0)

    def summands_at(self, X, y, Z, W1, b1, W2, b2):
        """The backward pass over absolute values: what each sum adds up before it cancels."""
        m = X.shape[0]
        A = layer(X, W1, b1)
        H = self.activation(A)
        dZ = (torch.softmax(Z, dim=1) - one_hot(y, Z)).abs() / m
        dA = torch.einsum("mc...,hc...->mh...", dZ, W2.abs()) * self.activation_slope(A, H).abs()
        return {
            "dW1": torch.einsum("mn,mh...->nh...", X.abs(), dA),
            "db1": dA.sum(0),
            "dW2": torch.einsum("mh...,mc...->hc...", H.abs(), dZ),
            "db2": dZ.sum(0),
        }

    def __repr__(self):
        shape = f"n_features={self.n_features}, n_classes={self.n_classes}"
        return f"{type(self).__name__}({shape}, hidden={self.hidden})"


class ReLU(TwoLayer):
    """The same network with ReLU: σ(A) = max(A, 0), σ'(A) = 1[A > 0] (0 at the kink, as
    autograd takes it)."""

    def activation(self, A):
        return torch.relu(A)

    def activation_slope(self, A, H):
        return (A > 0).to(A.dtype)
