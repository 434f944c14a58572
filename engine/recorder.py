"""Per-step numbers kept on the device and fetched in batches: one host sync per flush."""

from __future__ import annotations

import torch


class StepRecorder:
    """Buffers each step's loss and per-parameter gradient norms on the device.

    The per-parameter norms come from one fused `_foreach_norm`; the total norm is the norm of
    those norms, computed for the whole batch at flush time rather than once per step.
    """

    def __init__(self, names: list[str], device: torch.device, capacity: int = 2048):
        self.names = names
        self.capacity = capacity
        # One row per step: [loss, norm of each parameter's gradient...]
        self.rows = torch.zeros(capacity, 1 + len(names), device=device)
        self.lr: list[float] = []
        self.first_step = 0  # the step number of the first buffered step
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == self.capacity

    def record(self, loss: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
        """Keep this step's loss, norms and rate (one fused norm, one copy); returns the row."""
        row = self.rows[self.n]
        torch.stack([loss.detach(), *torch._foreach_norm(grads)], out=row)
        self.lr.append(lr)
        self.n += 1
        return row

    def take(self) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered."""
        n = self.n
        if n == 0:
            return None
        rows = self.rows[:n]
        total = torch.linalg.vector_norm(rows[:, 1:], dim=1)
        # One transfer for everything: loss, total norm, per-parameter norms.
        table = torch.cat([rows[:, :1], total[:, None], rows[:, 1:]], dim=1).T.tolist()
        out = {
            "step": list(range(self.first_step, self.first_step + n)),
            "loss": table[0],
            "grad_norm": table[1],
            "lr": self.lr,
            "layer_norms": dict(zip(self.names, table[2:])),
        }
        self.first_step += n
        self.n = 0
        self.lr = []
        return out
