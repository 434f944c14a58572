"""Per-step numbers kept on the device and fetched in batches: one host sync per flush."""

from __future__ import annotations

import torch


LAYER_SAMPLES = 8  # steps per batch whose per-layer norms are sent


class StepRecorder:
    """Buffers each step's loss and per-parameter gradient norms on the device.

    One fused `_foreach_norm` per step gives the loss (a loss is never negative, so it is its own
    norm) and every parameter's gradient norm; the results stay on the device as they are, and
    are stacked and fetched once per flush. The total norm is the norm of the per-parameter
    norms, computed for the whole batch at flush time rather than once per step.
    """

    def __init__(self, names: list[str], device: torch.device, capacity: int = 2048):
        self.names = names
        self.capacity = capacity
        self.device = device
        self.steps: list[list[torch.Tensor]] = []  # per step: [loss, norm of each parameter's gradient...]
        self.lr: list[float] = []
        self.first_step = 0  # the step number of the first buffered step

    @property
    def n(self) -> int:
        return len(self.steps)

    @property
    def full(self) -> bool:
        return len(self.steps) == self.capacity

    def record(self, loss: torch.Tensor, grads: list[torch.Tensor], lr: float) -> list[torch.Tensor]:
        """Keep this step's loss, gradient norms and rate (one fused op); returns [loss, norms...]."""
        values = torch._foreach_norm([loss.detach(), *grads])
        self.steps.append(values)
        self.lr.append(lr)
        return values

    def take(self) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered."""
        if not self.steps:
            return None
        rows = torch.stack([v for values in self.steps for v in values]).view(len(self.steps), -1)
        self.steps = []
        return self.batch(rows)

    def batch(self, rows: torch.Tensor) -> dict[str, list]:
        """A steps batch from rows of [loss, per-parameter norms...], starting at `first_step`."""
        n = len(rows)
        total = torch.linalg.vector_norm(rows[:, 1:], dim=1)
        # Per-layer norms for a few evenly spaced steps of the batch, always its last: enough for
        # their curves, and the log stays small however many layers the model has.
        picked = sorted({round(i * (n - 1) / (LAYER_SAMPLES - 1)) for i in range(LAYER_SAMPLES)}) \
            if n > LAYER_SAMPLES else list(range(n))
        layers = rows[picked, 1:] if len(picked) < n else rows[:, 1:]
        # One transfer for everything; values kept to float32's 7 significant digits, so the
        # log (and a client parsing a long run's history) carries no digits that mean nothing.
        flat = [float(f"{x:.7g}") for x in torch.cat([rows[:, 0], total, layers.T.reshape(-1)]).tolist()]
        k = len(picked)
        out = {
            "step": list(range(self.first_step, self.first_step + n)),
            "loss": flat[:n],
            "grad_norm": flat[n:2 * n],
            "lr": self.lr,
            "layer_norms": {name: flat[2 * n + i * k: 2 * n + (i + 1) * k] for i, name in enumerate(self.names)},
            "layer_steps": [self.first_step + i for i in picked],
        }
        self.first_step += n
        self.lr = []
        return out
