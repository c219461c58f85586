r"""Softmax (multinomial logistic) regression differentiated by hand: no autograd in this file.

The binary model's derivation, with C classes. X is (m, n), labels yᵢ ∈ {0, …, C − 1}, and Y
their one-hot rows (m, C):

    Z  = X W + b                                   logits, (m, C); W (n, C), b (C,)
    P  = softmax(Z),  P_ic = e^{Z_ic} / Σ_k e^{Z_ik}    probabilities, rows sum to 1
    J  = (1/m) Σᵢ −log P_{i,yᵢ} = (1/m) Σᵢ (log Σ_k e^{Z_ik} − Z_{i,yᵢ})

Derivation of the gradient, one line at a time:

    ∂Jᵢ/∂Z_ic = P_ic − [c = yᵢ] = (P − Y)_ic       (∂ log Σ_k e^{Z_ik} / ∂Z_ic = P_ic)
    ∂J/∂W     = (1/m) Σᵢ xᵢ (P − Y)ᵢ = Xᵀ(P − Y) / m  (∂Z_ic/∂W_jc = X_ij)
    ∂J/∂b     = (1/m) Σᵢ (P − Y)ᵢ     = mean(P − Y)   (∂Z_ic/∂b_c = 1)

The Hessian. Per sample, in the logits: ∂²Jᵢ/∂zᵢ∂zᵢᵀ = ∂pᵢ/∂zᵢ = diag(pᵢ) − pᵢpᵢᵀ = Aᵢ
(∂p_c/∂z_d = p_c([c = d] − p_d)). With x̃ = (x, 1) and θ = (W, b) (W row by row, then b),
Z = X̃ [W; b], so

    ∇²J = (1/m) Σᵢ (x̃ᵢ x̃ᵢᵀ) ⊗ Aᵢ                  ((n + 1)C × (n + 1)C)
    H V = (Xᵀ G / m, mean(G)),  G = P ⊙ U − P ⊙ (P ⊙ U) 1 1ᵀ,  U = X V_W + V_b
          (Aᵢ uᵢ = pᵢ ⊙ uᵢ − pᵢ (pᵢᵀ uᵢ), row by row: H never formed)
    tr ∇²J = (1/m) Σᵢ ‖x̃ᵢ‖² Σ_c p_ic (1 − p_ic)

Weight decay λ adds λ V_W (and n C λ to the trace). Each Aᵢ is positive semi-definite
(uᵀAu = Σ p u² − (Σ p u)² is a variance), so ∇²J is too, and Aᵢ ⪯ ½ I.

With C = 2 and one column fixed at 0 this is the binary model: softmax([z, 0]) = (σ(z), 1 − σ(z)).
The update rules are the binary model's (``optimizers``).

Every function reduces over the samples (dim 0) and the classes (dim 1) only, so W and b may
carry a trailing axis: W (n, C, K) and b (C, K) are K models side by side, Z is (m, C, K), and
each model is exactly what it would be alone (X W is one product over W's flattened columns).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from manual_models.base import HandModel
from manual_models.initialisation import init_linear
from manual_models.interface import Evaluation, Kind, weigh
from manual_models.optimizers import Optimizer
from manual_models.validation import check_class_labels, check_count


def logits(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Z = X W + b: (m, C) for W (n, C), or (m, C, K) for K models' W (n, C, K) and b (C, K),
    one matrix product either way (W's trailing axes flattened)."""
    return (X @ W.flatten(1)).view(X.shape[0], *W.shape[1:]) + b


def transposed_product(X: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Xᵀ R over R's trailing axes: (n, C) for R (m, C), (n, C, K) for R (m, C, K)."""
    return (X.T @ R.flatten(1)).view(X.shape[1], *R.shape[1:])


def label_index(y: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """The labels (m,) as an index into Z's class axis: (m, 1), or (m, 1, K) for K models."""
    return y.view(-1, 1, *(1,) * (Z.ndim - 2)).expand(-1, 1, *Z.shape[2:])


def cross_entropy_from_logits(Z: torch.Tensor, y: torch.Tensor, weights=None) -> torch.Tensor:
    """J = mean((M − Z_y) + log1p(Σ_{k ≠ argmax} e^{Z_k − M})), M = max_k Z_k: log Σ e^{Z} − Z_y.

    No exponent is positive, so nothing overflows, and for a confident right answer the
    bracket is exactly 0 and the small log1p term keeps its digits (``log_softmax`` computes
    log(1 + tiny) − 0 there, as ``BCEWithLogitsLoss`` does in the binary case). One loss, or
    one per model for Z (m, C, K). ``weights``: each sample's term times its weight first.
    """
    top, at = Z.max(dim=1, keepdim=True)
    e = torch.exp(Z - top).scatter(1, at, 0.0)  # every term but the largest, which is e⁰ = 1
    per_sample = (top - Z.gather(1, label_index(y, Z))).squeeze(1) + torch.log1p(e.sum(1))
    return weigh(per_sample, weights).mean(0)


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Y (m, C) in ``like``'s dtype; a scatter, so a GPU never checks y against C on the host."""
    return torch.zeros_like(like).scatter_(1, label_index(y, like), 1.0)


def softmax_gradients(X, P, y, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """dW = Xᵀ(P − Y)/m, db = mean(P − Y): the chain rule through ∂J/∂Z = (P − Y)/m (with
    weights r, row i of it times rᵢ)."""
    residual = weigh(P - one_hot(y, P), weights)
    return {"dw": transposed_product(X, residual) / X.shape[0], "db": residual.mean(0)}


def softmax_hvp(
    X, Z, V_W, V_b, weight_decay: float = 0.0, weights=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """H V = (Xᵀ G / m + λ V_W, mean(G)), G = P ⊙ U − P (pᵀu per row), U = X V_W + V_b (with
    weights r, row i of G times rᵢ)."""
    P = torch.softmax(Z, dim=1)
    PU = P * logits(X, V_W, V_b)
    G = weigh(PU - P * PU.sum(1, keepdim=True), weights)
    return transposed_product(X, G) / X.shape[0] + weight_decay * V_W, G.mean(0)


def softmax_hessian(X, Z, weight_decay: float = 0.0, weights=None) -> torch.Tensor:
    """∇²J = (1/m) Σᵢ (x̃ᵢ x̃ᵢᵀ) ⊗ (diag pᵢ − pᵢpᵢᵀ) + λ on W, θ = (W row by row, b)."""
    P = torch.softmax(Z, dim=1)
    A = weigh(torch.diag_embed(P) - P.unsqueeze(2) * P.unsqueeze(1), weights)
    X1 = torch.cat([X, torch.ones_like(X[:, :1])], 1)
    size = X1.shape[1] * P.shape[1]
    H = torch.einsum("ij,ik,icd->jckd", X1, X1, A).reshape(size, size) / X.shape[0]
    decay = torch.zeros(size).to(H)
    decay[: X.shape[1] * P.shape[1]] = weight_decay
    return H + torch.diag(decay)


def softmax_hessian_trace(X, Z, weight_decay: float = 0.0, weights=None) -> torch.Tensor:
    """tr ∇²J = (1/m) Σᵢ (‖xᵢ‖² + 1) Σ_c p_ic (1 − p_ic) + n C λ (one per model)."""
    P = torch.softmax(Z, dim=1)
    rows = (X.square().sum(1) + 1).view(-1, *(1,) * (Z.ndim - 2))
    return (rows * weigh((P * (1 - P)).sum(1), weights)).mean(0) + X.shape[1] * Z.shape[
        1
    ] * weight_decay


def accuracy(Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The fraction whose largest logit is their own class."""
    return (Z.argmax(1) == label_index(y, Z).squeeze(1)).to(Z.dtype).mean(0)


def summand_sizes(X, P, y, weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """(|X|ᵀ|P − Y|/m, mean|P − Y|): the sizes of the gradient's terms (see the binary model)."""
    residual = weigh((P - one_hot(y, P)).abs(), weights)
    return {"dw": transposed_product(X.abs(), residual) / X.shape[0], "db": residual.mean(0)}


def loss_and_gradients(X, y, W, b, weights: torch.Tensor | None = None) -> Evaluation:
    """J, (dW, db) and Z at (W, b), by hand."""
    Z = logits(X, W, b)
    loss = cross_entropy_from_logits(Z, y, weights)
    return Evaluation(loss, softmax_gradients(X, torch.softmax(Z, dim=1), y, weights), Z)


class Softmax(Kind):
    """Softmax regression as a kind: class-index labels, the seeded start W (n, C) and b (C,)
    (``nn.Linear(n, C)``'s draw, its weight is Wᵀ), the link softmax, and the math above as
    functions of the parameters."""

    weighs_samples = True

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(n_features, device=device, dtype=dtype)
        self.n_classes = check_count("n_classes", n_classes, least=2)

    def labels(self, y, n_samples, *, check=True):
        return check_class_labels(y, n_samples, self.device, self.n_classes, values=check)

    def initial_parameters(self, seed):
        weight, bias = init_linear(self.n_features, self.n_classes, seed, self.device, self.dtype)
        return weight.T.contiguous(), bias

    def link(self, Z):
        return torch.softmax(Z, dim=1)

    def logits_at(self, X, W, b):
        return logits(X, W, b)

    def loss_at(self, X, y, W, b):
        return cross_entropy_from_logits(logits(X, W, b), y, self.weights)

    def gradients_at(self, X, y, W, b):
        return loss_and_gradients(X, y, W, b, self.weights)

    def accuracy(self, Z, y):
        return accuracy(Z, y)

    def summands_at(self, X, y, Z, *params):
        return summand_sizes(X, torch.softmax(Z, 1), y, self.weights)

    def hessian_product(self, X, y, W, b, weight_decay=0.0):
        Z = logits(X, W, b)
        return lambda V: softmax_hvp(X, Z, *V, weight_decay, self.weights)

    def hessian_at(self, X, y, W, b, weight_decay=0.0):
        return softmax_hessian(X, logits(X, W, b), weight_decay, self.weights)

    def hessian_trace_at(self, X, y, W, b, weight_decay=0.0):
        return softmax_hessian_trace(X, logits(X, W, b), weight_decay, self.weights)

    def reference_loss_at(self, X, y, W, b):
        """nn.Linear is F.linear (its weight is Wᵀ), CrossEntropyLoss is F.cross_entropy; for
        K models (W (n, C, K)) Z is (m, C, K), which F.cross_entropy reads as K positions."""
        Z = F.linear(X, W.flatten(1).T, b.flatten()).view(X.shape[0], *W.shape[1:])
        target = label_index(y, Z).squeeze(1)
        per_sample = F.cross_entropy(Z, target, reduction="none")
        return weigh(per_sample, self.weights).mean(0), Z

    def criterion(self):
        # CrossEntropyLoss's own weight is one per class: a weight per sample is its terms.
        if self.weights is None:
            return nn.CrossEntropyLoss()
        return WeightedCrossEntropy(self.weights)

    def from_linear(self, weight, bias):
        """W and b as views of ``nn.Linear(n, C)``'s weight (C, n), which is Wᵀ, and bias."""
        return weight.T, bias


class WeightedCrossEntropy(nn.Module):
    """``nn.CrossEntropyLoss`` with a weight per sample: mean(rᵢ · ℓᵢ)."""

    def __init__(self, weights: torch.Tensor) -> None:
        super().__init__()
        self.weights = weights

    def forward(self, Z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (F.cross_entropy(Z, y, reduction="none") * self.weights).mean()


class SoftmaxRegression(HandModel):
    """Multinomial logistic regression, differentiated by hand, with the binary model's methods.

    ``W`` (also ``w``) is (n_features, n_classes) and ``b`` (n_classes,), drawn like
    ``nn.Linear(n_features, n_classes)`` from ``seed`` (its weight is Wᵀ), so the twins start
    from the same point. Labels are class indices (an integer tensor).
    """

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        lr: float = 0.01,
        *,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        optimizer: Optimizer | None = None,
    ) -> None:
        kind = Softmax(n_features, n_classes, device=device, dtype=dtype)
        super().__init__(kind, lr, seed=seed, optimizer=optimizer)

    @property
    def W(self) -> torch.Tensor:
        return self.w

    # --- the post's three methods, for C classes ------------------------------------------
    def forward(self, X: torch.Tensor) -> torch.Tensor:
        """P = softmax(X W + b), shape (n_samples, n_classes)."""
        return torch.softmax(logits(self.kind.features(X), self.w, self.b), dim=1)

    def backward(
        self, X: torch.Tensor, P: torch.Tensor, y: torch.Tensor, *, check: bool = True
    ) -> dict[str, torch.Tensor]:
        """dW = Xᵀ(P − Y)/m, db = mean(P − Y); kept in ``self.grads`` (added to the kept ones
        when the rule has ``zero_grad=False``)."""
        X, y = self.kind.inputs(X, y, check=check)
        expected = (X.shape[0], self.n_classes)
        if not isinstance(P, torch.Tensor) or P.shape != expected:
            raise ValueError(f"P must be a tensor of shape {expected}")
        return self._keep(softmax_gradients(X, P, y))

    # optimize(): the binary model's, θ ← θ − lr·dθ by the rule (HandModel)
