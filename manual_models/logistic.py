r"""Logistic regression differentiated by hand: no autograd anywhere in this file.

Notation (d2l's): X is (m, n) with one sample per row — scikit-learn's and ``nn.Linear``'s layout.
The post this repo starts from writes X as (n, m), one sample per *column*, and z = wᵀX + b;
our ``X @ w`` is the same product with X transposed.

    z  = X w + b                                   logits, (m,)
    ŷ  = σ(z) = 1 / (1 + e^{-z})                    probabilities, (m,)
    J  = (1/m) Σᵢ −[yᵢ log ŷᵢ + (1 − yᵢ) log(1 − ŷᵢ)]
       = (1/m) Σᵢ softplus(zᵢ) − yᵢ zᵢ             as log σ(z) = −softplus(−z)
                                                and softplus(z) − softplus(−z) = z

Derivation of the gradient, one line at a time:

    ∂Jᵢ/∂zᵢ = σ(zᵢ) − yᵢ = ŷᵢ − yᵢ                  (d softplus(z)/dz = σ(z))
    ∂J/∂w   = (1/m) Σᵢ (ŷᵢ − yᵢ) xᵢ = Xᵀ(ŷ − y) / m   (∂zᵢ/∂w = xᵢ)
    ∂J/∂b   = (1/m) Σᵢ (ŷᵢ − yᵢ)    = mean(ŷ − y)    (∂zᵢ/∂b = 1)

and gradient descent, θ ← θ − α ∂J/∂θ.

The Hessian, with the bias as a constant feature: x̃ = (x, 1), θ = (w, b), X̃ = [X 1]:

    ∂ŷᵢ/∂zᵢ = σ(zᵢ)(1 − σ(zᵢ)) = sᵢ               (σ' = σ(1 − σ); computed as σ(z)σ(−z))
    ∇²J     = (1/m) Σᵢ sᵢ x̃ᵢ x̃ᵢᵀ = X̃ᵀ diag(s) X̃ / m  (∂/∂θ of (ŷᵢ − yᵢ) x̃ᵢ / m)
    H v     = X̃ᵀ (s ⊙ X̃ v) / m                     (two products with X, H never formed)
            = (Xᵀ(s ⊙ u)/m, mean(s ⊙ u)),  u = X v_w + v_b
    tr ∇²J  = (1/m) Σᵢ sᵢ ‖x̃ᵢ‖² = (1/m) Σᵢ sᵢ (‖xᵢ‖² + 1)

L2 weight decay λ (the rules' ``weight_decay``: J + (λ/2)‖w‖²) adds λ on the weights only:
H v gains (λ v_w, 0), the trace n·λ. s ≤ ¼, so ∇²J ⪯ X̃ᵀX̃/(4m): the smoothness bound L.

The pure functions below are the math; :class:`Logistic` is the kind the three implementations
of the binary model share (the math, the labels, the start), and :class:`LogisticRegression`
is the post's class around them, corrected (its ``init`` is ``__init__``, and its ``forward``
adds ``b``). The kind's ``reference_loss_at`` and ``criterion`` are torch's own functions, for
the autograd reference: the only lines here that are not the derivation.

Every function takes the parameters as arguments and reduces over the samples (dim 0) only, so
w may carry a trailing axis: w (n, K) and b (K,) are K models side by side, each column exactly
the model it would be alone (the columns never mix), and X is read once for all of them.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from manual_models.base import HandModel
from manual_models.initialisation import init_linear
from manual_models.interface import Evaluation, Kind, weigh
from manual_models.optimizers import Optimizer
from manual_models.validation import check_binary_labels

# Rows of X above this many bytes are processed in blocks on the CPU (see blocked_step).
BLOCK_BYTES = 32 << 20  # measured best of 2, 8 and 32 MiB on a 2-core Xeon (300 MiB L3)
BLOCKED_ABOVE = 128 << 20


def logits(X: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """z = X w + b: (m,) for w (n,), or (m, K) for K columns of w (n, K) and b (K,)."""
    return X @ w + b


def column(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The labels (m,) shaped to broadcast against z: as they are, or (m, 1) for K columns."""
    return y if z.ndim == 1 else y.unsqueeze(1)


def bce_from_logits(
    z: torch.Tensor, y: torch.Tensor, *, reduce: str = "mean", weights: torch.Tensor | None = None
) -> torch.Tensor:
    """J = mean(softplus(z) − y z) = mean((max(z, 0) − y z) + log1p(e^{−|z|})).

    The exponent is never positive, so J is finite for every finite z: no log(0), no overflow.
    The bracket is exactly 0 for a confident right answer (y = 1, z > 0 or y = 0, z < 0), so the
    small log1p term is not rounded away: each sample's loss is accurate to a few ulp, even at
    1e-16 (``BCEWithLogitsLoss`` computes log(e^{−m} + e^{−z−m}) and loses digits there).
    Over the samples (dim 0): one loss, or one per column of z; ``reduce="sum"`` sums instead.
    ``weights``: each sample's term times its weight first (``Kind.weighted``).
    """
    y = column(y, z)
    # addcmul(a, y, z, value=-1) is a − y·z, and softplus(−|z|) is log1p(e^{−|z|}) (its
    # threshold never applies to x ≤ 0): the same arithmetic in fewer kernels.
    per_sample = torch.addcmul(torch.clamp_min(z, 0), y, z, value=-1) + F.softplus(-z.abs())
    per_sample = weigh(per_sample, weights)
    return per_sample.sum(0) if reduce == "sum" else per_sample.mean(0)


def bce_gradients(X, y_hat, y, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y): the chain rule through ∂J/∂z = (ŷ − y)/m (with
    weights r, ∂J/∂z = r ⊙ (ŷ − y)/m)."""
    residual = weigh(y_hat - column(y, y_hat), weights)
    return {"dw": X.T @ residual / X.shape[0], "db": residual.mean(0)}


def curvatures(z: torch.Tensor) -> torch.Tensor:
    """s = σ(z)(1 − σ(z)) = σ(z)σ(−z): no cancellation in 1 − σ(z) where σ(z) → 1."""
    return torch.sigmoid(z) * torch.sigmoid(-z)


def bce_hvp(
    X, z, v_w, v_b, weight_decay: float = 0.0, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """H v = X̃ᵀ(s ⊙ X̃ v)/m at logits z, for v = (v_w, v_b), plus λ v_w (K columns too); with
    weights r, s is r ⊙ s."""
    su = weigh(curvatures(z), weights) * (X @ v_w + v_b)
    return X.T @ su / X.shape[0] + weight_decay * v_w, su.mean(0)


def bce_hessian(X, z, weight_decay: float = 0.0, weights=None) -> torch.Tensor:
    """∇²J = X̃ᵀ diag(s) X̃ / m + λ on the weights, (n + 1) × (n + 1), b last (one model)."""
    X1 = torch.cat([X, torch.ones_like(X[:, :1])], 1)
    H = X1.T @ (weigh(curvatures(z), weights).unsqueeze(1) * X1) / X.shape[0]
    decay = torch.full((X.shape[1] + 1,), weight_decay, dtype=H.dtype, device=H.device)
    decay[-1] = 0.0  # the bias is not decayed
    return H + torch.diag(decay)


def bce_hessian_trace(X, z, weight_decay: float = 0.0, weights=None) -> torch.Tensor:
    """tr ∇²J = (1/m) Σᵢ sᵢ (‖xᵢ‖² + 1) + n λ (one per column of z)."""
    rows = X.square().sum(1) + 1
    s = weigh(curvatures(z), weights)
    return (s * (rows if s.ndim == 1 else rows.unsqueeze(1))).mean(0) + X.shape[1] * weight_decay


def accuracy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction classified right: σ(z) > ½ ⇔ z > 0 ⇔ class 1."""
    return ((z > 0) == (column(y, z) > 0.5)).to(z.dtype).mean(0)


def summand_sizes(X, y_hat, y, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(|X|ᵀ|ŷ − y|/m, mean|ŷ − y|): the gradient's sums taken over absolute values, the size
    that rounding in a correct gradient is relative to (however much the terms cancel)."""
    residual = weigh((y_hat - column(y, y_hat)).abs(), weights)
    return {"dw": X.abs().T @ residual / X.shape[0], "db": residual.mean(0)}


def blocked_step(X, y, w, b, block_rows, weights=None):
    """Loss, gradients and logits as above, in row blocks: X read from memory once a step.

    The unblocked step reads X twice (X w, then Xᵀ(ŷ − y)). Here each block of rows is used
    for both products while it is still in cache; the sums over blocks are the same sums
    added in another order, so the result equals the unblocked one to rounding.
    """
    m = X.shape[0]
    z = torch.empty((m, *w.shape[1:]), dtype=X.dtype, device=X.device)
    dw, total, residual_sum = torch.zeros_like(w), torch.zeros_like(b), torch.zeros_like(b)
    for start in range(0, m, block_rows):
        rows = slice(start, start + block_rows)
        Xb, yb, zb = X[rows], y[rows], z[rows]
        rb = None if weights is None else weights[rows]
        (torch.addmv if w.ndim == 1 else torch.addmm)(b, Xb, w, out=zb)  # z = b + X w
        total += bce_from_logits(zb, yb, reduce="sum", weights=rb)
        residual = weigh(torch.sigmoid(zb).sub_(column(yb, zb)), rb)
        (dw.addmv_ if w.ndim == 1 else dw.addmm_)(Xb.T, residual)  # dw += Xᵀ(ŷ − y)
        residual_sum += residual.sum(0)
    return Evaluation(total / m, {"dw": dw / m, "db": residual_sum / m}, z)


def loss_and_gradients(
    X, y, w, b, *, blocked_above=BLOCKED_ABOVE, block_bytes=BLOCK_BYTES, weights=None
) -> Evaluation:
    """J, (dw, db) and z at (w, b), by hand. An X of more than ``blocked_above`` bytes on the
    CPU goes in row blocks of about ``block_bytes`` (:func:`blocked_step`), so it is read from
    memory once per step instead of twice."""
    if X.device.type == "cpu" and X.numel() * X.element_size() > blocked_above:
        rows = max(1, block_bytes // (X.shape[1] * X.element_size()))
        return blocked_step(X, y, w, b, rows, weights)
    z = logits(X, w, b)
    loss = bce_from_logits(z, y, weights=weights)
    return Evaluation(loss, bce_gradients(X, torch.sigmoid(z), y, weights), z)


class Logistic(Kind):
    """Binary logistic regression as a kind: labels in {0, 1}, the seeded start w (n,) and
    b (), the link σ, and the math above as functions of the parameters. ``blocked_above`` and
    ``block_bytes``: when and how a large X on the CPU goes in row blocks (``math.inf``: never;
    the bench times both ways)."""

    n_classes = 2
    weighs_samples = True

    def __init__(
        self,
        n_features: int,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        blocked_above: float = BLOCKED_ABOVE,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        super().__init__(n_features, device=device, dtype=dtype)
        self.blocked_above, self.block_bytes = blocked_above, block_bytes

    def labels(self, y, n_samples, *, check=True):
        return check_binary_labels(y, n_samples, self.device, self.dtype, values=check)

    def initial_parameters(self, seed):
        """nn.Linear(n, 1)'s init from ``seed``: its weight row is w, its bias b."""
        weight, bias = init_linear(self.n_features, 1, seed, self.device, self.dtype)
        return weight[0], bias[0]

    def link(self, z):
        return torch.sigmoid(z)

    def logits_at(self, X, w, b):
        return logits(X, w, b)

    def loss_at(self, X, y, w, b):
        return bce_from_logits(logits(X, w, b), y, weights=self.weights)

    def gradients_at(self, X, y, w, b):
        blocks = {"blocked_above": self.blocked_above, "block_bytes": self.block_bytes}
        return loss_and_gradients(X, y, w, b, **blocks, weights=self.weights)

    def accuracy(self, z, y):
        return accuracy(z, y)

    def summands_at(self, X, y, z, *params):
        return summand_sizes(X, torch.sigmoid(z), y, self.weights)

    def hessian_product(self, X, y, w, b, weight_decay=0.0):
        z = logits(X, w, b)
        return lambda v: bce_hvp(X, z, *v, weight_decay, self.weights)

    def hessian_at(self, X, y, w, b, weight_decay=0.0):
        return bce_hessian(X, logits(X, w, b), weight_decay, self.weights)

    def hessian_trace_at(self, X, y, w, b, weight_decay=0.0):
        return bce_hessian_trace(X, logits(X, w, b), weight_decay, self.weights)

    def reference_loss_at(self, X, y, w, b):
        """nn.Linear is F.linear, and BCEWithLogitsLoss is F.binary_cross_entropy_with_logits,
        here per column."""
        z = F.linear(X, w.reshape(self.n_features, -1).T, b.reshape(-1)).view(-1, *b.shape)
        per_sample = F.binary_cross_entropy_with_logits(
            z, column(y, z).expand_as(z), reduction="none"
        )
        return weigh(per_sample, self.weights).mean(0), z

    def criterion(self):
        return nn.BCEWithLogitsLoss(weight=self.weights)  # its weight: one per sample

    def from_linear(self, weight, bias):
        """w and b as views of ``nn.Linear(n, 1)``'s weight (1, n) and bias (1,)."""
        return weight[0], bias[0]


class LogisticRegression(HandModel):
    """The post's logistic regression, differentiated by hand.

    ``forward`` → ``backward`` → ``optimize`` is the manual version of autograd's
    ``zero_grad → forward → loss → backward → step``. Nothing here requires grad, so it runs
    unchanged under ``torch.inference_mode()``.

    Parameters ``w`` (n_features,) and ``b`` (0-d) start from nn.Linear's default
    distribution drawn with ``seed``, so a twin built with the same seed starts identically.
    """

    def __init__(
        self,
        n_features: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        kind = Logistic(n_features, device=device, dtype=dtype)
        super().__init__(kind, lr, seed=seed, optimizer=optimizer)

    # --- the post's three methods -------------------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """ŷ = σ(X w + b), shape (n_samples,)."""
        return torch.sigmoid(logits(self.kind.features(X), self.w, self.b))

    def backward(
        self, X: torch.Tensor, y_hat: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """dw = Xᵀ(ŷ − y)/m, db = mean(ŷ − y); kept in ``self.grads`` for :meth:`optimize`.

        With ``optimizer=Optimizer(zero_grad=False)`` they are added to the ones kept, as
        autograd adds into ``.grad`` when nothing zeroes it (the zero_grad ablation)."""
        X, y = self.kind.inputs(X, y, check=check)
        if not isinstance(y_hat, torch.Tensor) or y_hat.shape != y.shape:
            raise ValueError(f"y_hat must be a tensor of shape {tuple(y.shape)}")
        return self._keep(bce_gradients(X, y_hat, y))

    def optimize(self) -> None:
        """w ← w − lr·dw, b ← b − lr·db, in place: plain SGD, the post's update (momentum,
        Nesterov, Adam and weight decay are the same call with another ``optimizer`` rule;
        they live in :mod:`manual_models.optimizers`)."""
        super().optimize()
