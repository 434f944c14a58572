"""What each kind of mark on the curves looks like and says: one table, so that a plot, its legend
and the Events tab name an intervention the same way (`lr ×2`, `paused 12s`, `best`, `early stop`).

Torch-free and terminal-free: the run state, the drawing and the event log all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .format import duration, rate


@dataclass(frozen=True)
class MarkStyle:
    """How one kind of mark is drawn: a glyph (told apart without colour too) and a colour."""

    glyph: str
    color: str
    name: str  # in the legend


# Warnings sit on the x axis (a glyph under the curve, not a line through it); the others are
# vertical lines through the plot, under the curves.
STYLES = {
    "lr": MarkStyle("┆", "yellow", "lr change"),
    "pause": MarkStyle("╏", "bright_black", "pause"),
    "best": MarkStyle("│", "green", "best"),
    "stop": MarkStyle("║", "red", "early stop"),
    "warning": MarkStyle("▲", "bright_red", "warning"),
}


@dataclass
class Marker:
    """A mark on the curves at a step: an LR change, a pause, the best validation, an early stop,
    a warning."""

    step: int
    kind: str  # lr | pause | best | stop | warning
    label: str
    t: float = 0.0  # when it happened, seconds since the run started


def lr_label(old: float, new: float, source: str = "user") -> str:
    """An LR change in a few characters: `lr ×2`, `lr ÷2`, `lr 5e-4`, and who changed it when not you."""
    text = f"lr {rate(new, 2)}"
    if old > 0 and new > 0 and math.isfinite(old) and math.isfinite(new):
        ratio = new / old
        for factor in (2, 3, 4, 5, 10, 100):
            if abs(ratio - factor) < 1e-3 * factor:
                text = f"lr ×{factor}"
            elif abs(ratio * factor - 1) < 1e-3:
                text = f"lr ÷{factor}"
    return text if source == "user" else f"{text} ({source})"


def pause_label(seconds: float | None) -> str:
    """`paused` while it lasts, `paused 12s` once resumed."""
    return "paused" if seconds is None else f"paused {duration(seconds)}"


def warning_label(kind: str) -> str:
    return kind.replace("_", " ")
