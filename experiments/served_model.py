"""A run's final parameters as an MLflow model: the code MLflow copies into every model a sweep
logs (models from code, ``experiments.models``), so loading one needs numpy and pandas, not
this repository or torch.

It predicts from the dataset's raw features, as a user has them: standardised with the
training split's mean and scale (as the run's data was), then the run's link of its logits,
σ(z) for two classes and softmax(Z) for more, in float64. The output has one column of
probability per class, ``p_0 … p_{C-1}``: for two classes ``p_1`` is the model's ``forward``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel


class LinearClassifier(PythonModel):
    """z = ((x − mean) / scale) W + b, then σ or softmax; the parameters in ``parameters.npz``
    (``mean``, ``scale``, ``W`` (n,) or (n, C), ``b`` () or (C,))."""

    def load_context(self, context) -> None:
        with np.load(context.artifacts["parameters"]) as saved:
            self.mean, self.scale, self.W, self.b = (saved[k] for k in ("mean", "scale", "W", "b"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        X = (np.asarray(model_input, dtype=np.float64) - self.mean) / self.scale
        z = X @ self.W + self.b
        if z.ndim == 1:
            # σ(±z) without overflow or cancellation: e = e^{−|z|} ≤ 1, the larger is 1/(1 + e)
            e = np.exp(-np.abs(z))
            big, small = 1 / (1 + e), e / (1 + e)
            P = np.column_stack([np.where(z >= 0, small, big), np.where(z >= 0, big, small)])
        else:
            e = np.exp(z - z.max(1, keepdims=True))
            P = e / e.sum(1, keepdims=True)
        return pd.DataFrame(P, columns=[f"p_{k}" for k in range(P.shape[1])])


set_model(LinearClassifier())
