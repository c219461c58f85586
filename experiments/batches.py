"""Which training samples each step sees: the whole set, or seeded mini-batches.

The post's loop, ``for epoch in range(epochs): for inputs, labels in loader: …``, draws a new
order of the samples each epoch and cuts it into batches. :class:`Batches` draws exactly what
``BatchSampler(SubsetRandomSampler(range(n), generator), size, drop_last)`` draws, epoch after
epoch, from a generator seeded with the run's seed: one ``torch.randperm`` per epoch
(``tests/experiments/test_minibatch.py`` holds it to the sampler). So every run with the same
seed, training-set size and batch size, whatever its implementation or learning rate, sees the
same batches in the same order: what pairs a manual run with its autograd twin.

The order is drawn on the host (the same on every device) and sent to the device once an
epoch, without waiting for it; a step picks its rows there with ``index_select``. Nothing in a
step crosses to the host, so a GPU queues steps (and replays them as CUDA graphs) as it does in
full-batch descent. ``docs/minibatch.md`` measures this against a ``DataLoader``.

Step t takes batch t mod (batches an epoch) of epoch t div (batches an epoch). The last batch
of an epoch holds the n mod size samples left over: kept as a smaller batch, or, with
``drop_last``, not taken (those samples sit that epoch out).
"""

from __future__ import annotations

import hashlib

import torch

from manual_models.validation import check_count


def per_epoch(n: int, size: int | None, drop_last: bool = False) -> int:
    """Steps an epoch: batches of ``size`` from ``n`` samples (one without a size, or with one
    of n or more: the whole set)."""
    if size is None or size >= n:
        return 1
    return n // size if drop_last else -(-n // size)


def batches(n: int, size: int | None, **options) -> Batches | None:
    """The batches of a run on ``n`` samples, or None where a step sees them all."""
    return None if size is None or size >= n else Batches(n, size, **options)


class Batches:
    """The batches of one run, in step order, as index tensors on ``device``."""

    def __init__(
        self, n: int, size: int, *, seed: int, drop_last: bool = False, device="cpu"
    ) -> None:
        self.n, self.size = check_count("n", n), check_count("batch_size", size)
        if size >= n:
            raise ValueError(f"batch_size {size} is the whole training set ({n}): no batches")
        self.drop_last, self.device = drop_last, torch.device(device)
        self.per_epoch = per_epoch(n, size, drop_last)
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch, self.order = -1, torch.empty(0, dtype=torch.int64)
        self._digest = hashlib.sha256(repr((n, size, drop_last)).encode())

    def sizes(self) -> set[int]:
        """The batch sizes a run meets: the full one, and the last one of an epoch if smaller."""
        last = self.n - (self.per_epoch - 1) * self.size
        return {self.size} if self.drop_last else {self.size, last}

    def at(self, t: int) -> torch.Tensor:
        """The rows of step ``t`` (steps are taken in order: an epoch's order is drawn when
        its first step comes)."""
        epoch, j = divmod(t, self.per_epoch)
        if epoch < self.epoch:
            raise ValueError(f"step {t} is in epoch {epoch}, already passed")
        while self.epoch < epoch:
            self._next_epoch()
        return self.order[j * self.size : min((j + 1) * self.size, self.n)]

    def digest(self) -> str:
        """A hash of every order drawn so far (the batches of every step taken): equal for
        runs that saw the same batches."""
        return self._digest.hexdigest()[:16]

    def _next_epoch(self) -> None:
        order = torch.randperm(self.n, generator=self.generator)
        self._digest.update(order.numpy().tobytes())
        if self.device.type == "cuda":  # from pinned memory: the copy does not block the host
            order = order.pin_memory().to(self.device, non_blocking=True)
        self.order, self.epoch = order.to(self.device), self.epoch + 1
