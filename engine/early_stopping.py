"""Early stopping: strict improvement by more than min_delta; patience counts validations."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Tracks the best monitored value and how many validations have passed since."""

    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    enabled: bool = True
    best: float | None = None
    best_epoch: int = 0
    best_step: int = 0
    since_best: int = 0

    def __post_init__(self):
        if self.mode == "auto":  # a Config built without validation still means what its monitor means
            from .config import monitor_mode

            self.mode = monitor_mode(self.monitor)

    def improves(self, value: float) -> bool:
        """True when `value` beats the best by more than min_delta."""
        if self.best is None:
            return value == value  # NaN never improves
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int, step: int) -> bool:
        """Record a validation; True when it is the new best."""
        if self.improves(value):
            self.best, self.best_epoch, self.best_step, self.since_best = value, epoch, step, 0
            return True
        self.since_best += 1
        return False

    @property
    def should_stop(self) -> bool:
        """Patience used up (only when enabled)."""
        return self.enabled and self.best is not None and self.since_best > 0 and self.since_best >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
