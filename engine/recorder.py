"""Per-step numbers kept on the device and fetched in batches: one host sync per flush."""

from __future__ import annotations

import torch

from .gradients import Gradients

LAYER_SECONDS = 0.0125  # per-layer norms at most this often: about 8 steps per 100 ms flush


class StepRecorder:
    """Buffers each step's loss, gradient norms and learning rate on the device.

    Every step keeps its loss and total gradient norm. Per-layer norms are kept for the first
    step of each batch and then at most every `LAYER_SECONDS`: enough for their curves, and the
    log stays small however many layers the model has or however fast it trains. With flat
    gradients (the CPU) the total is one dot product a step and per-layer norms are taken only
    on those steps; otherwise one fused `_foreach_norm` a step gives every layer's norm, and the
    total, the norm of those norms, is computed for the whole batch at flush time.
    """

    def __init__(self, names: list[str], gradients: Gradients, capacity: int = 2048):
        self.names = names
        self.gradients = gradients
        self.capacity = capacity
        self.losses: list[torch.Tensor] = []
        self.totals: list[torch.Tensor] = []  # flat gradients: each step's squared total norm
        self.layers: list[list[torch.Tensor]] = []  # per-layer norms: every step's, or the sampled steps'
        self.layer_at: list[int] = []  # positions in the batch of the steps with per-layer norms
        self.lr: list[float] = []
        self.first_step = 0  # the step number of the first buffered step
        self.next_sample = 0.0

    @property
    def n(self) -> int:
        return len(self.losses)

    @property
    def full(self) -> bool:
        return len(self.losses) == self.capacity

    def record(self, loss: torch.Tensor, lr: float, now: float) -> None:
        """Keep this step's loss, gradient norms and rate; `now` is `time.perf_counter()`."""
        i = len(self.losses)
        self.losses.append(loss.detach())
        self.lr.append(lr)
        sample = i == 0 or now >= self.next_sample
        if sample:
            self.layer_at.append(i)
            self.next_sample = now + LAYER_SECONDS
        if self.gradients.flat is None:
            self.layers.append(self.gradients.layer_norms())
            return
        self.totals.append(self.gradients.squared_total())
        if sample:
            self.layers.append(self.gradients.layer_norms())

    def last_total(self) -> torch.Tensor:
        """The last recorded step's total gradient norm, as a device tensor."""
        if self.gradients.flat is None:
            return torch.linalg.vector_norm(torch.stack(self.layers[-1]))
        return self.totals[-1].sqrt()

    def last_finite(self) -> bool:
        """Whether the last step's loss and gradients are finite (a host sync)."""
        return bool(torch.isfinite(torch.stack([self.losses[-1], self.last_total()])).all())

    def take(self) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered."""
        n = len(self.losses)
        if not n:
            return None
        loss = torch.stack(self.losses)
        width = len(self.names)
        layers = torch.stack([v for norms in self.layers for v in norms]).view(len(self.layers), width) \
            if width else torch.zeros(len(self.layers), 0, device=loss.device)
        if self.gradients.flat is None:
            total = torch.linalg.vector_norm(layers, dim=1)
            layers = layers[self.layer_at]
        else:
            total = torch.stack(self.totals).sqrt()
        batch = self.batch(loss, total, layers, self.layer_at)
        self.losses, self.totals, self.layers, self.layer_at = [], [], [], []
        return batch

    def batch(self, loss: torch.Tensor, total: torch.Tensor, layers: torch.Tensor,
              layer_at: list[int]) -> dict[str, list]:
        """A steps batch starting at `first_step`: each step's loss and total norm, and the
        per-layer norms (one row per position of `layer_at`)."""
        n, k = len(loss), len(layer_at)
        # One transfer for everything; values kept to float32's 7 significant digits, so the
        # log (and a client parsing a long run's history) carries no digits that mean nothing.
        flat = [float(f"{x:.7g}") for x in torch.cat([loss, total, layers.T.reshape(-1)]).tolist()]
        out = {
            "step": list(range(self.first_step, self.first_step + n)),
            "loss": flat[:n],
            "grad_norm": flat[n:2 * n],
            "lr": self.lr,
            "layer_norms": {name: flat[2 * n + i * k: 2 * n + (i + 1) * k] for i, name in enumerate(self.names)},
            "layer_steps": [self.first_step + i for i in layer_at],
        }
        self.first_step += n
        self.lr = []
        return out
