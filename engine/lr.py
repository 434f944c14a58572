"""A config run's learning-rate schedule: warm-up, then step / cosine / onecycle / plateau decay.

The schedule owns its value, written into the optimizer's groups; a user's change is a scale
applied around each optimizer step (lrscale.LrScale), so a cosine keeps decaying from the new
level and the schedule never overwrites or compounds what the user set.
"""

from __future__ import annotations

import math

from .config import Config


class LearningRate:
    """Computes the rate for each step and holds the state a checkpoint must keep."""

    def __init__(self, cfg: Config, steps_per_epoch: int):
        s = cfg.schedule
        self.base = cfg.optim.lr
        self.name = s.name
        self.warmup = s.warmup_steps
        self.min_lr = s.min_lr
        self.gamma = s.gamma
        self.step_size = s.step_epochs * steps_per_epoch
        self.total = max(1, cfg.train.epochs * steps_per_epoch)
        self.plateau_patience = s.plateau_patience
        self.plateau_scale = 1.0
        self.plateau_best = math.inf
        self.plateau_bad = 0

    def scheduled(self, step: int) -> float:
        """The schedule's own rate at `step` (0-based), before the user's scale."""
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.name == "step":
            rate = self.base * self.gamma ** (step // self.step_size)
        elif self.name == "cosine":
            progress = min(1.0, max(0, step - self.warmup) / max(1, self.total - self.warmup))
            rate = self.min_lr + (self.base - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        elif self.name == "onecycle":
            # Warm up from base/25 to base, then anneal to base/1e4 (torch's OneCycleLR shape).
            rise = self.warmup or max(1, int(0.3 * self.total))
            start, end = self.base / 25, max(self.min_lr, self.base / 1e4)
            if step < rise:
                return start + (self.base - start) * 0.5 * (1 - math.cos(math.pi * step / rise))
            progress = min(1.0, (step - rise) / max(1, self.total - rise))
            return end + (self.base - end) * 0.5 * (1 + math.cos(math.pi * progress))
        elif self.name == "plateau":
            rate = max(self.min_lr, self.base * self.plateau_scale)
        else:
            rate = self.base
        return rate * warm

    def at(self, step: int) -> float:
        """The schedule's rate at `step`, written into the optimizer's groups (the user's scale is
        applied around each step)."""
        if self.name == "none" and not self.warmup:
            return self.base  # the common case, once per step
        return self.scheduled(step)

    def observe_validation(self, val_loss: float) -> bool:
        """Feed the plateau schedule; True when it just decayed the rate."""
        if self.name != "plateau":
            return False
        if val_loss < self.plateau_best:
            self.plateau_best, self.plateau_bad = val_loss, 0
            return False
        self.plateau_bad += 1
        if self.plateau_bad > self.plateau_patience:
            self.plateau_scale *= self.gamma
            self.plateau_bad = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "plateau_best": self.plateau_best,
                "plateau_bad": self.plateau_bad}

    def load_state_dict(self, state: dict) -> None:
        for key in ("plateau_scale", "plateau_best", "plateau_bad"):
            if key in state:
                setattr(self, key, state[key])
