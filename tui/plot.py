"""What a plot shows (a Figure of Lines and Marks) and the widget that shows it.

The drawing itself is tui/draw.py; numpy comes in with the first plot that has data, not with
this module, so the dashboard's first frame paints before numpy is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widget import Widget

from .marks import Marker


@dataclass
class Line:
    """One series on a plot.

    `joined`: a line through the points; `points`: a glyph drawn at each point, over the line (the
    validations); `faint`: drawn dim, under the others (the raw loss under its smoothed line);
    `symbol`: without colour (NO_COLOR), the glyph that tells overlaid runs apart.
    """

    x: Any  # numpy arrays
    y: Any
    label: str
    color: str  # a Rich colour name
    joined: bool = True
    points: str = ""
    faint: bool = False
    symbol: str = "braille"
    legend: bool = True


@dataclass
class Figure:
    """What a plot shows; the widget turns it into text at its current size.

    `x_kind` says how the x axis reads (`number`, `epoch` or `time`) and `x_title` what it is;
    `x_range` is the window shown (None: all the data); `follow` lets the y axis follow the part
    of the run worth seeing, so that the first steps' losses do not squash the rest.
    """

    title: str = ""
    lines: list[Line] = field(default_factory=list)
    marks: list[Marker] = field(default_factory=list)  # their `step` is already in x units
    log_y: bool = False
    x_title: str = "step"
    x_kind: str = "number"
    x_range: tuple[float, float] | None = None
    follow: bool = False
    mark_labels: bool = False
    note: str = ""  # said after the title, dim: "m: 2 more"
    empty_text: str = "waiting for data"


def same_figure(a: Figure, b: Figure) -> bool:
    """True when two figures would draw the same picture (a flat learning rate, no new validation)."""
    if (a.title, a.note, a.log_y, a.x_title, a.x_kind, a.x_range, a.follow, a.mark_labels, len(a.lines)) != \
            (b.title, b.note, b.log_y, b.x_title, b.x_kind, b.x_range, b.follow, b.mark_labels, len(b.lines)):
        return False
    if [(m.step, m.kind, m.label) for m in a.marks] != [(m.step, m.kind, m.label) for m in b.marks]:
        return False
    if not a.lines:
        return a.empty_text == b.empty_text
    import numpy as np

    return all((la.label, la.color, la.joined, la.points, la.faint, la.symbol, la.legend)
               == (lb.label, lb.color, lb.joined, lb.points, lb.faint, lb.symbol, lb.legend)
               and np.array_equal(la.x, lb.x) and np.array_equal(la.y, lb.y)
               for la, lb in zip(a.lines, b.lines))


class PlotWidget(Widget):
    """Shows a Figure; redraws only when given a new one or resized."""

    DEFAULT_CSS = "PlotWidget { height: 1fr; width: 1fr; min-height: 6; }"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.figure = Figure()
        self._cache: tuple | None = None

    def show(self, figure: Figure) -> None:
        """Draw `figure` at the next refresh, unless it shows exactly what is on screen already."""
        if same_figure(figure, self.figure):
            return
        self.figure = figure
        self._cache = None
        self.refresh()

    def render(self) -> Text:
        size = (self.size.width, self.size.height)
        if not self.figure.lines and not self.figure.title:  # the first frame: no numpy for nothing
            return Text(self.figure.empty_text, style="dim")
        if self._cache is None or self._cache[0] != size:
            from .draw import render_figure

            color = not getattr(self.app, "no_color", False)
            self._cache = (size, render_figure(self.figure, *size, color=color))
        return self._cache[1]
