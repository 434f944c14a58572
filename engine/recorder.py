"""Per-step numbers kept on the device and fetched in batches: one host sync per flush."""

from __future__ import annotations

import math

import torch

from .config import show_value
from .errors import UserError
from .gradients import Gradients

LAYER_SECONDS = 0.0125  # per-layer norms at most this often: about 8 steps per 100 ms flush


def one_number(value, what: str):
    """A number a loop hands over (a loss, a norm, a metric): a one-number tensor, detached and left
    where it is, or anything else `float` takes as a float. A string, None, or a tensor of several
    values is a UserError naming `what`, raised where the loop handed it over, never later at a flush."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise UserError(f"{what} holds {value.numel()} values; give one number")
        if value.is_meta:
            raise UserError(f"{what} is on the meta device, which holds no values; give a computed one")
        if value.is_complex():
            raise UserError(f"{what} is a complex number; give a real one (its .real or .abs())")
        return value.detach()
    if isinstance(value, complex) or getattr(getattr(value, "dtype", None), "kind", "") == "c":
        raise UserError(f"{what} is a complex number; give a real one (its .real or abs())")
    if not isinstance(value, (str, bytes)):
        try:
            return float(value)
        except OverflowError:
            raise UserError(f"{what} is too large for a float; give a finite number") from None
        except (TypeError, ValueError):
            pass
    raise UserError(f"{what} is {show_value(value)}, not a number")


class StepRecorder:
    """Buffers each step's loss, gradient norms, learning rate and extra scalars.

    Every step keeps its loss and total gradient norm. Per-layer norms are reported for the first
    step of each batch and then at most every `LAYER_SECONDS`: enough for their curves, and the
    log stays small however many layers the model has or however fast it trains. The total comes
    from the cheapest source at hand: a norm the loop already has (`clip_grad_norm_`'s), one dot
    product over flat gradients (the CPU), or else one fused `_foreach_norm` a step over every
    layer, whose total, the norm of those norms, is computed at flush time.

    On a device the numbers stay there as tensors until the flush fetches them in one transfer:
    no host sync per step. On the CPU there is nothing to wait for, and each number is read as a
    float when it is recorded: a float costs the garbage collector nothing, where hundreds of
    one-number tensors held until the flush make it run every hundred steps or so.
    """

    def __init__(self, names: list[str], gradients: Gradients, capacity: int = 2048):
        self.names = names
        self.gradients = gradients
        self.capacity = capacity
        self.host = gradients.device.type == "cpu"  # numbers read as they come (see above)
        self.losses: list = []
        self.totals: list = []  # per step: the squared total, or None (from its row)
        self.rows: list = []  # per-layer norms of the steps that took them, row after row in one list
        self.row_at: list[int] = []  # positions in the batch of those rows
        self.layer_at: list[int] = []  # positions of the rows that are reported (the sampled steps)
        self.lr: list = []
        self.scalars: list[tuple[int, dict]] = []  # (position, the loop's extra scalars) of the steps with some
        self.first_step = 0  # the step number of the first buffered step
        self.next_sample = 0.0
        self.last: tuple = (None, None, None)  # the last step's (loss, squared total, row) as tensors

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
        loss = one_number(loss, "the step's loss")
        if not isinstance(loss, torch.Tensor):
            loss = torch.tensor(loss)
        if total is not None:
            total = one_number(total, "the step's grad_norm")
            readable = not isinstance(total, torch.Tensor) or total.device.type == "cpu"  # no device sync for it
            if readable and float(total) < 0:
                raise UserError(f"the step's grad_norm is {show_value(float(total))}; a norm is never negative")
        if scalars:
            scalars = {name: one_number(value, f"step scalar {name!r}") for name, value in scalars.items()}
        reported = i == 0 or now >= self.next_sample  # this step's per-layer norms are reported
        if total is not None:
            total = total.float() if isinstance(total, torch.Tensor) else torch.tensor(total)
            squared = total * total
        elif self.gradients.flat is not None:
            squared = self.gradients.squared_total()
        else:
            squared = None  # this step's total comes from its row
        row = None
        if reported or squared is None:
            row = norms if norms is not None else self.gradients.layer_norms()
        if self.host:  # read before anything is kept: a step that fails here leaves the buffer as it was
            kept = (loss.item(), None if squared is None else squared.item(),
                    [v.item() for v in row] if row is not None else None)
        else:  # the loop's own numbers onto the gradients' device, where the rows already are: the flush stacks them
            device = self.gradients.device
            kept = (loss.to(device, non_blocking=True), None if squared is None else squared.to(device, non_blocking=True),
                    list(row) if row is not None else None)
        self.lr.append(lr)
        if scalars:
            self.scalars.append((i, scalars))
        if reported:
            self.layer_at.append(i)
            self.next_sample = now + LAYER_SECONDS
        if row is not None:
            self.row_at.append(i)
            self.rows.extend(kept[2])
        self.last = (loss, squared, row)
        self.losses.append(kept[0])
        self.totals.append(kept[1])

    def last_total(self) -> torch.Tensor:
        """The last recorded step's total gradient norm, as a device tensor."""
        _, squared, row = self.last
        if squared is None:
            return torch.linalg.vector_norm(torch.stack(row))
        return squared.sqrt()

    def last_finite(self) -> bool:
        """Whether the last step's loss and gradients are finite (a host sync)."""
        loss = self.last[0]
        return bool(torch.isfinite(torch.stack([loss, self.last_total().to(loss.device)])).all())

    def take(self, reduce=None) -> dict[str, list] | None:
        """The buffered steps as host lists, and an empty buffer; None when nothing is buffered.

        `reduce(losses)`: the losses as the run reports them (averaged over the ranks, in place).
        """
        n = len(self.losses)
        if not n:
            return None
        if self.host:
            loss, squared, values = self.losses, self.totals, self.rows
            if reduce is not None:
                loss = reduce(torch.tensor(loss)).tolist()
            lr = [x.item() if isinstance(x, torch.Tensor) else x for x in self.lr]
            scalars = [(i, name, v.item() if isinstance(v, torch.Tensor) else v)
                       for i, items in self.scalars for name, v in items.items()]
        else:
            loss, squared, values, lr, scalars = self._fetch(reduce)
        width = len(self.names)
        rows = [values[k * width:(k + 1) * width] for k in range(len(self.row_at))]
        row_of = {pos: k for k, pos in enumerate(self.row_at)}
        total = [math.sqrt(t) if t is not None else math.hypot(*rows[row_of[i]]) for i, t in enumerate(squared)]
        reported = rows if len(self.row_at) == len(self.layer_at) else [rows[row_of[i]] for i in self.layer_at]
        lr = [_7g(x) if isinstance(given, torch.Tensor) else x for x, given in zip(lr, self.lr)]
        given = [v for _, items in self.scalars for v in items.values()]
        scalars = [(i, name, _7g(v) if isinstance(g, torch.Tensor) else v) for (i, name, v), g in zip(scalars, given)]
        batch = self.batch(loss, total, reported, self.layer_at, lr=lr, scalars=scalars)
        self.losses, self.totals, self.rows, self.row_at, self.layer_at = [], [], [], [], []
        self.lr, self.scalars = [], []
        return batch

    def _fetch(self, reduce) -> tuple[list, list, list, list, list]:
        """The buffered values from the device in one transfer: losses, squared totals (None where
        the row gives it), the rows' values, rates and extra scalars, as host lists."""
        loss = torch.stack(self.losses).float()
        if reduce is not None:
            loss = reduce(loss)
        device, n = loss.device, len(self.losses)
        given = [t for t in self.totals if t is not None]
        lr_tensors = [x for x in self.lr if isinstance(x, torch.Tensor)]
        scalar_tensors = [v for _, items in self.scalars for v in items.values() if isinstance(v, torch.Tensor)]
        parts = [loss.reshape(-1)]
        for tensors in (given, self.rows):  # the recorder's own: one-number float tensors
            if tensors:
                parts.append(torch.stack(tensors).float().to(device))
        for tensors in (lr_tensors, scalar_tensors):  # the loop's: any shape of one number, any dtype
            if tensors:
                parts.append(torch.stack([t.detach().float().reshape(()).to(device) for t in tensors]))
        values = torch.cat(parts).tolist()
        at = iter(range(n, len(values)))
        squared = [None if t is None else values[next(at)] for t in self.totals]
        rows = [values[next(at)] for _ in self.rows]
        lr = [values[next(at)] if isinstance(x, torch.Tensor) else x for x in self.lr]
        scalars = [(i, name, values[next(at)] if isinstance(v, torch.Tensor) else v)
                   for i, items in self.scalars for name, v in items.items()]
        return values[:n], squared, rows, lr, scalars

    def batch(self, loss: list[float], total: list[float], layers: list[list[float]], layer_at: list[int], *,
              lr: list | None = None, scalars: list[tuple[int, str, float]] = ()) -> dict[str, list]:
        """A steps batch starting at `first_step`: each step's loss and total norm, the per-layer
        norms (one row per position of `layer_at`), the rates (`lr`, else those recorded) and
        extra scalars as (position, name, value)."""
        n = len(loss)
        # Values kept to float32's 7 significant digits, so the log (and a client parsing a long
        # run's history) carries no digits that mean nothing.
        out = {
            "step": list(range(self.first_step, self.first_step + n)),
            "loss": [_7g(x) for x in loss],
            "grad_norm": [_7g(x) for x in total],
            "lr": list(self.lr if lr is None else lr),
            "layer_norms": {name: [_7g(row[j]) for row in layers] for j, name in enumerate(self.names)},
            "layer_steps": [self.first_step + i for i in layer_at],
        }
        if scalars:
            columns: dict[str, list] = {}
            for i, name, v in scalars:
                columns.setdefault(name, [None] * n)[i] = float(v)
            out["scalars"] = columns
        self.first_step += n
        return out


def _7g(x: float) -> float:
    return float(f"{x:.7g}")
