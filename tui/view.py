"""How the curves are shown: what the view keys change (log axis, smoothing, the window of steps,
the x axis, the cycled plot), the same for every plot. Plain data: no numpy, so the first frame
needs none.
"""

from __future__ import annotations

from dataclasses import dataclass

SMOOTHING = (0.0, 0.6, 0.9, 0.99)  # `s` cycles through these
X_AXES = ("step", "epoch", "time")
WINDOWS = (None, 10_000, 1_000, 100)  # `z` cycles: the whole run, then its last this many steps


@dataclass
class View:
    """How the curves are shown: what the view keys change, the same for every plot."""

    log_y: bool = False
    smoothing: int = 1  # index into SMOOTHING: 0.6
    x_axis: str = "step"  # step | epoch | time
    window: int | None = None  # the last this many steps; None: the whole run
    range: tuple[float, float] | None = None  # steps from, to (`g`); wins over `window`
    choice: int = 0  # what the plot `m` cycles shows

    def key(self) -> tuple:
        return (self.log_y, self.smoothing, self.x_axis, self.window, self.range, self.choice)

    def steps(self, last_step: float) -> tuple[float, float] | None:
        """The steps shown, from and to; None for the whole run."""
        if self.range is not None:
            return self.range
        if self.window is not None and last_step > self.window:
            return (last_step - self.window, last_step)
        return None

    def describe(self) -> str:
        """The window in words, for a toast and the plots' note."""
        if self.range is not None:
            return f"steps {self.range[0]:,.0f}–{self.range[1]:,.0f}"
        if self.window is not None:
            return f"last {self.window:,} steps"
        return "whole run"


def smoothing_alpha(view: View) -> float:
    """The EMA weight of the view's smoothing; 0.0: off."""
    return SMOOTHING[view.smoothing % len(SMOOTHING)]
