"""Per-step numbers kept on the device and fetched in batches: one host sync per flush."""

from __future__ import annotations

import torch

from .errors import UserError
from .gradients import Gradients

LAYER_SECONDS = 0.0125  # per-layer norms at most this often: about 8 steps per 100 ms flush


class StepRecorder:
    """Buffers each step's loss, gradient norms, learning rate and extra scalars on the device.

    Every step keeps its loss and total gradient norm. Per-layer norms are reported for the first
    step of each batch and then at most every `LAYER_SECONDS`: enough for their curves, and the
    log stays small however many layers the model has or however fast it trains. The total comes
    from the cheapest source at hand: a norm the loop already has (`clip_grad_norm_`'s), one dot
    product over flat gradients (the CPU), or else one fused `_foreach_norm` a step over every
    layer, whose total, the norm of those norms, is computed for the whole batch at flush time.
    """

    def __init__(self, names: list[str], gradients: Gradients, capacity: int = 2048):
        self.names = names
        self.gradients = gradients
        self.capacity = capacity
        self.losses: list[torch.Tensor] = []
        self.totals: list[torch.Tensor | None] = []  # per step: the squared total, or None (from its row)
        self.rows: list[list[torch.Tensor]] = []  # per-layer norms of the steps that took them
        self.row_at: list[int] = []  # positions in the batch of those rows
        self.layer_at: list[int] = []  # positions of the rows that are reported (the sampled steps)
        self.lr: list = []
        self.scalars: list[dict] = []  # per step: the loop's extra scalars, if any
        self.first_step = 0  # the step number of the first buffered step
        self.next_sample = 0.0

    @property
    def n(self) -> int:
        return len(self.losses)

    @property
    def full(self) -> bool:
        return len(self.losses) == self.capacity

    def record(self, loss, lr, now: float, total=None, scalars: dict | None = None,
               norms: list[torch.Tensor] | None = None) -> None:
        """Keep this step's loss, gradient norms and rate; `now` is `time.perf_counter()`.

        `total`: the step's total gradient norm when the loop already has it; `norms`: its
        per-layer norms, when they were measured earlier in the step (before the gradients were
        cleared); `scalars`: extra numbers to plot (tensors stay on the device until the flush).
        """
        i = len(self.losses)
        self.losses.append(loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss)))
        self.lr.append(lr)
        if scalars:
            for name, value in scalars.items():
                if isinstance(value, torch.Tensor) and value.numel() != 1:
                    raise UserError(f"step scalar {name!r} holds {value.numel()} values; give one number")
            self.scalars.append((i, scalars))
        sample = i == 0 or now >= self.next_sample
        if sample:
            self.layer_at.append(i)
            self.next_sample = now + LAYER_SECONDS
        if total is not None:
            total = total.detach().float() if isinstance(total, torch.Tensor) else torch.tensor(float(total))
            self.totals.append(total * total)
        elif self.gradients.flat is not None:
            self.totals.append(self.gradients.squared_total())
        else:
            self.totals.append(None)
            sample = True  # this step's total comes from its row
        if sample:
            self.rows.append(norms if norms is not None else self.gradients.layer_norms())
            self.row_at.append(i)

    def last_total(self) -> torch.Tensor:
        """The last recorded step's total gradient norm, as a device tensor."""
        if self.totals[-1] is None:
            return torch.linalg.vector_norm(torch.stack(self.rows[-1]))
        return self.totals[-1].sqrt()

    def last_finite(self) -> bool:
        """Whether the last step's loss and gradients are finite (a host sync)."""
        return bool(torch.isfinite(torch.stack([self.losses[-1], self.last_total().to(self.losses[-1].device)])).all())

    def take(self, reduce=None) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered.

        `reduce(losses)`: the losses as the run reports them (averaged over the ranks, in place).
        """
        n = len(self.losses)
        if not n:
            return None
        loss = torch.stack(self.losses).float()
        if reduce is not None:
            loss = reduce(loss)
        device = loss.device
        width = len(self.names)
        rows = torch.stack([v for norms in self.rows for v in norms]).view(len(self.rows), width).to(device) \
            if width and self.rows else torch.zeros(len(self.rows), width, device=device)
        if all(t is None for t in self.totals):  # every step has its row
            total = torch.linalg.vector_norm(rows, dim=1)
        elif all(t is not None for t in self.totals):
            total = torch.stack(self.totals).to(device).sqrt()
        else:
            row_total = torch.linalg.vector_norm(rows, dim=1)
            row_of = {pos: k for k, pos in enumerate(self.row_at)}
            total = torch.stack([t.to(device).sqrt() if t is not None else row_total[row_of[i]]
                                 for i, t in enumerate(self.totals)])
        row_of = {pos: k for k, pos in enumerate(self.row_at)}
        reported = rows[[row_of[i] for i in self.layer_at]] if len(self.row_at) != len(self.layer_at) else rows
        batch = self.batch(loss, total, reported, self.layer_at)
        self.losses, self.totals, self.rows, self.row_at, self.layer_at = [], [], [], [], []
        return batch

    def batch(self, loss: torch.Tensor, total: torch.Tensor, layers: torch.Tensor,
              layer_at: list[int]) -> dict[str, list]:
        """A steps batch starting at `first_step`: each step's loss and total norm, and the
        per-layer norms (one row per position of `layer_at`)."""
        n, k = len(loss), len(layer_at)
        tensors = [loss, total.float(), layers.float().T.reshape(-1)]
        lr_tensors = [i for i, x in enumerate(self.lr) if isinstance(x, torch.Tensor)]
        if lr_tensors:  # a rate held in a tensor (a compiled step): fetched with the rest
            tensors.append(torch.stack([self.lr[i].detach().float().reshape(()).to(loss.device) for i in lr_tensors]))
        scalar_values = [(i, name, v) for i, values in self.scalars for name, v in values.items()]
        scalar_tensors = [v.detach().float().reshape(()).to(loss.device) for _, _, v in scalar_values
                          if isinstance(v, torch.Tensor)]
        if scalar_tensors:
            tensors.append(torch.stack(scalar_tensors))
        # One transfer for everything; values kept to float32's 7 significant digits, so the
        # log (and a client parsing a long run's history) carries no digits that mean nothing.
        flat = [float(f"{x:.7g}") for x in torch.cat(tensors).tolist()]
        end = 2 * n + len(self.names) * k
        lr = list(self.lr)
        for j, i in enumerate(lr_tensors):
            lr[i] = flat[end + j]
        end += len(lr_tensors)
        out = {
            "step": list(range(self.first_step, self.first_step + n)),
            "loss": flat[:n],
            "grad_norm": flat[n:2 * n],
            "lr": lr,
            "layer_norms": {name: flat[2 * n + i * k: 2 * n + (i + 1) * k] for i, name in enumerate(self.names)},
            "layer_steps": [self.first_step + i for i in layer_at],
        }
        if scalar_values:
            columns: dict[str, list] = {}
            for i, name, v in scalar_values:
                if isinstance(v, torch.Tensor):
                    v, end = flat[end], end + 1
                columns.setdefault(name, [None] * n)[i] = float(v)
            out["scalars"] = columns
        self.first_step += n
        self.lr = []
        self.scalars = []
        return out
