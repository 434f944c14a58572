"""How a split reaches the loop: indexed device tensors in memory, or a DataLoader that streams.

In-memory splits are batched by indexing device tensors with the epoch's permutation: no
per-sample Python, no host sync. Splits too large for memory stream through a DataLoader with
workers, in the same order, so the same seed gives the same batches either way.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

EVAL_BATCH = 512  # streamed validation and test batches
GATHER_BYTES = 16 << 20  # in-memory batches: rows gathered at once, several batches' worth


def stream_workers() -> int:
    """DataLoader workers: all cores but one (which trains), at most 4."""
    return min(4, max(1, (os.cpu_count() or 2) - 1))


class TensorFeed:
    """A split held as device tensors, batched by indexing."""

    in_memory = True

    def __init__(self, x, y, device: torch.device):
        self.x = torch.as_tensor(x, device=device)
        self.y = torch.as_tensor(y, device=device)

    def __len__(self) -> int:
        return len(self.y)

    def batches(self, order: torch.Tensor, batch_size: int, start: int = 0,
                augment: Callable | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (a permutation of the split), from batch number `start` on.

        Rows are gathered for several batches at once (up to GATHER_BYTES), and each batch is a
        slice of that: one indexing op per gather instead of one per batch (4% of a digits step).
        """
        x, y = self.x, self.y
        order = order.to(x.device)
        row_bytes = max(1, x.numel() // max(1, len(x)) * x.element_size())
        per_gather = max(1, GATHER_BYTES // (row_bytes * batch_size))  # batches per indexing op
        for first in range(start, math.ceil(len(order) / batch_size), per_gather):
            idx = order[first * batch_size:(first + per_gather) * batch_size]
            xs, ys = x[idx], y[idx]
            for i in range(0, len(idx), batch_size):
                xb = xs[i:i + batch_size]
                yield (augment(xb) if augment else xb), ys[i:i + batch_size]

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """The model inputs of some samples, as one tensor."""
        return self.x[indices]


class _OrderedBatches:
    """A batch sampler whose batches the feed sets before each pass."""

    def __init__(self):
        self.batches: list[list[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderFeed:
    """A split streamed from a torch Dataset of (input, target) pairs through a DataLoader."""

    in_memory = False

    def __init__(self, dataset, device: torch.device, workers: int | None = None):
        self.dataset = dataset
        self.device = device
        self.sampler = _OrderedBatches()
        workers = stream_workers() if workers is None else workers
        # Persistent workers keep their decoded-image caches and skip a start-up per epoch.
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.dataset)

    def batches(self, order: torch.Tensor | None, batch_size: int, start: int = 0,
                augment: Callable | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches in `order` (None: the split's own order), from batch number `start` on."""
        order = list(range(len(self))) if order is None else order.tolist()
        self.sampler.batches = [order[i:i + batch_size] for i in range(start * batch_size, len(order), batch_size)]
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            yield (augment(x) if augment else x), y.to(self.device, non_blocking=True)

    def inputs(self, indices: list[int]) -> torch.Tensor:
        """The model inputs of some samples, as one tensor."""
        return torch.stack([torch.as_tensor(self.dataset[i][0]) for i in indices]).to(self.device)


def flip_and_crop(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and random crop (padding of size/8) per image of a batch (B, C, H, W).

    Done on the device with the global generator, so it is seeded, resumable and sync-free.
    """
    b, c, h, w = x.shape
    pad = max(1, min(h, w) // 8)
    flip = torch.rand(b, device=x.device) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None].expand(b, c, h, w + 2 * pad)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :].expand(b, c, h, w)
    return padded.gather(2, rows).gather(3, cols)
