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
        self.loss = torch.zeros(capacity, device=device)
        self.norms = torch.zeros(capacity, len(names), device=device)
        self.lr: list[float] = []
        self.first_step = 0  # the step number of the first buffered step
        self.n = 0

    @property
    def full(self) -> bool:
        return self.n == self.capacity

    def record(self, loss: torch.Tensor, grads: list[torch.Tensor], lr: float) -> torch.Tensor:
        """Keep this step's loss, norms and rate; returns the norms row (still on the device)."""
        row = self.norms[self.n]
        torch.stack(torch._foreach_norm(grads), out=row)
        self.loss[self.n] = loss.detach()
        self.lr.append(lr)
        self.n += 1
        return row

    def take(self) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered."""
        n = self.n
        if n == 0:
            return None
        norms = self.norms[:n]
        # One transfer for everything: [loss | total | per-layer] columns.
        table = torch.cat([self.loss[:n, None], torch.linalg.vector_norm(norms, dim=1)[:, None], norms],
                          dim=1).T.tolist()
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
