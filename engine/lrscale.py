"""A user's learning-rate change: a persistent scale applied around each optimizer step.

Whoever owns the schedule (traintop's own, a torch scheduler, Lightning, Hugging Face) keeps
writing its own value into `param_groups[i]["lr"]`; just before each `optimizer.step()` the
groups' rates are multiplied by the user's scale, and just after it they are put back. So the
scheduler never sees, overwrites or compounds the scale, and a cosine keeps decaying from the
level the user set.
"""

from __future__ import annotations

import math

import torch

from .config import LR_RANGE
from .errors import UserError


def lr_value(lr) -> float:
    """A group's rate as a float, whether it is a float or a tensor (compiled or capturable steps)."""
    return float(lr) if not isinstance(lr, torch.Tensor) else float(lr.detach().cpu())


def check_rate(rate: float, asked: str, current: float) -> None:
    """Refuse a rate outside LR_RANGE with a reply that says why: `asked` is what the user asked
    for, in words; `current` the rate that stays."""
    low, high = LR_RANGE
    if not (math.isfinite(rate) and low < rate <= high):
        raise UserError(f"learning rate {asked} refused: allowed {low:g} < lr <= {high:g}; it stays {current:.3g}")


def shown_rate(rate: float) -> str:
    """A rate in three figures, or in full where three would round it onto the allowed range's
    bound (10.0000001 is not 10)."""
    short = f"{rate:.3g}"
    return short if float(short) not in LR_RANGE or float(short) == rate else repr(float(rate))


class LrScale:
    """The user's scale on an optimizer's scheduled rates, applied by step pre/post hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer, scale: float = 1.0, hooks: bool = True):
        """`hooks=False`: the owner calls `around(step)` instead (a compiled step, which would
        trace a hook into its code and hold the scale there as a constant)."""
        self.optimizer = optimizer
        self._scale = 1.0
        self._saved: list = []  # the rates the schedule set, while a step runs with them scaled
        self._applied: list = []  # the scaled rates that step runs with (a tensor's id and version)
        self._handles: list = []  # the hooks go on with the first change: until then they cost nothing
        self.hooks = hooks
        self.scale = scale

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        """Set between steps (at a step boundary): hooks go on the optimizer when first needed."""
        self._scale = value
        if value != 1.0 and self.hooks and not self._handles:
            self._handles = [self.optimizer.register_step_pre_hook(self._before_step),
                             self.optimizer.register_step_post_hook(self._after_step)]

    def scheduled(self) -> float:
        """The first group's rate as the schedule set it (outside a step, the scale is not applied)."""
        self.put_back()
        return lr_value(self.optimizer.param_groups[0]["lr"])

    def current(self) -> float:
        """The rate the next step will use."""
        return self.scheduled() * self.scale

    def check(self, c) -> tuple[float, float]:
        """The (old, new) rates a set_lr command asks for; UserError when the new one is refused."""
        old = self.current()
        new = c.value if c.value is not None else old * c.factor
        asked = shown_rate(new) if c.value is not None else f"x{c.factor:g} (which gives {shown_rate(new)})"
        check_rate(new, asked, old)
        if c.value is not None and self.scheduled() <= 0:
            raise UserError("the schedule's learning rate is 0 at this step; set it with a factor later")
        scale = c.value / self.scheduled() if c.value is not None else self.scale * c.factor
        for i, group in enumerate(self.optimizer.param_groups[1:], 1):  # the scale is every group's
            rate = lr_value(group["lr"]) * scale
            if rate > 0 and not (math.isfinite(rate) and LR_RANGE[0] < rate <= LR_RANGE[1]):
                raise UserError(f"learning rate {asked} refused: it scales every parameter group alike, and group "
                                f"{i}'s rate would be {rate:.3g}; allowed {LR_RANGE[0]:g} < lr <= {LR_RANGE[1]:g}; "
                                f"it stays {old:.3g}")
        return old, new

    def apply(self, c) -> tuple[float, float]:
        """Apply a set_lr command (checked first): a value, or a factor; (old, new) rates."""
        old, _ = self.check(c)
        if c.value is not None:
            self.scale = c.value / self.scheduled()
        else:
            self.scale = self.scale * c.factor
        return old, self.current()

    def around(self, step) -> None:
        """Call `step()` (a compiled optimizer step) with the scale applied from outside it: the
        rate tensors are scaled in place before and restored after, so the step never recompiles."""
        if self._scale == 1.0:
            step()
            return
        self._before_step(self.optimizer, (), {})
        try:
            step()
        finally:
            self._after_step(self.optimizer, (), {})

    def _before_step(self, optimizer, args, kwargs) -> None:
        self.put_back()
        # A tensor rate is scaled in place, so a compiled step sees the same tensor (no recompile).
        self._saved = [group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
                       for group in optimizer.param_groups]
        for group in optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].mul_(self.scale)
            else:
                group["lr"] = group["lr"] * self.scale
        # What the step runs with: a float rate's value, a tensor rate's version (a scheduler writes
        # one in place, bumping it; reading the value would sync with the device).
        self._applied = [(id(lr), lr._version) if isinstance(lr := group["lr"], torch.Tensor) else lr
                         for group in optimizer.param_groups]

    def _after_step(self, optimizer, args, kwargs) -> None:
        for group, lr in zip(optimizer.param_groups, self._saved):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].copy_(lr)
            else:
                group["lr"] = lr
        self._saved = []

    def put_back(self) -> None:
        """A step that raised (an error inside a closure, an out-of-memory the loop caught) never
        reached its post-hook: its groups still hold the scaled rates. Put back the rates the
        schedule set, except where it has written a new one since, so the scale never compounds."""
        if not self._saved:
            return
        for group, lr, applied in zip(self.optimizer.param_groups, self._saved, self._applied):
            now = group["lr"]
            if isinstance(now, torch.Tensor):
                if (id(now), now._version) == applied:
                    now.copy_(lr)
            elif now == applied:
                group["lr"] = lr
        self._saved = []

    def remove(self) -> None:
        """Take the hooks off the optimizer; the schedule's own rates stay."""
        self.put_back()
        for handle in self._handles:
            handle.remove()
        self._handles = []
