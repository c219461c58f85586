"""Train the models on scikit-learn's datasets: datasets, the training loop, configs, sweeps.

Data flows one way: ``manual_models`` ← ``experiments`` ← ``analysis``. The training loop here is
plain PyTorch and knows nothing of any tracker.
"""

from experiments.datasets import DATASETS, Split, load, split
from experiments.loop import History, fit
from experiments.lr_batch import LrBatch

__all__ = ["DATASETS", "History", "LrBatch", "Split", "fit", "load", "split"]
