"""A plot widget drawn with plotext 6 (textual-plotext targets plotext 5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from rich.text import Text
from textual.widget import Widget

COLORS = {"marker": "gray"}  # other names are plotext colour names


@dataclass
class Line:
    """One series on a plot: points joined by lines, or scattered."""

    x: np.ndarray
    y: np.ndarray
    label: str
    color: str
    joined: bool = True


@dataclass
class Figure:
    """What a plot shows; the widget turns it into text at its current size."""

    title: str = ""
    lines: list[Line] = field(default_factory=list)
    vlines: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    log_y: bool = False
    empty_text: str = "waiting for data"


def render_figure(fig: Figure, width: int, height: int, color: bool = True) -> Text:
    """The figure drawn by plotext into `width` x `height` cells."""
    lines = [ln for ln in fig.lines if len(ln.x)]
    if fig.log_y:  # plotted as log10 with ticks labelled in the data's units
        lines = [Line(ln.x[ln.y > 0], np.log10(ln.y[ln.y > 0]), ln.label, ln.color, ln.joined) for ln in lines]
        lines = [ln for ln in lines if len(ln.x)]
    if width < 20 or height < 5 or not lines:
        return Text(f"{fig.title}\n{fig.empty_text}" if height > 1 else fig.title, style="dim")
    import plotext  # here, not at the top: the first frame paints before any plot needs it

    f = plotext.figure
    f.clear()
    f.theme("dark" if color else "clear")

    def marker(symbol: str, name: str):
        return plotext.marker(symbol, plotext.pixel(COLORS.get(name, name))) if color else symbol

    xs = np.concatenate([ln.x for ln in lines])
    ys = np.concatenate([ln.y for ln in lines])
    lo, hi = float(xs.min()), float(xs.max())
    for x, label in fig.vlines:  # markers first, so the curves draw over them
        if lo <= x <= hi:
            s = f.signal([x, x], [float(ys.min()), float(ys.max())], marker=marker("braille", "marker"))
            s.lines()
            f.draw(s)
    for ln in lines:
        s = f.signal(ln.x.tolist(), ln.y.tolist(), marker=marker("braille" if ln.joined else "dot", ln.color))
        if ln.joined:
            s.lines()
        f.draw(s)
    if fig.log_y:
        lo_y, hi_y = float(ys.min()), float(ys.max())
        ticks = np.arange(np.ceil(lo_y), np.floor(hi_y) + 1)
        if len(ticks) < 2:  # less than a decade: label a few points between the ends
            ticks = np.linspace(lo_y, hi_y, 3) if hi_y > lo_y else np.array([lo_y])
        f.ruler("y").ticks(ticks.tolist(), [f"{10 ** t:.2g}" for t in ticks])
    f.legend(False)
    f.title(fig.title)
    f.plot_size(width, height)
    # plotext may draw a little wider or taller than asked (long tick labels): crop to the cell
    # box, so a plot never spills into its neighbours.
    rows = Text.from_ansi(f.build().string()).split("\n")[:height]
    for row in rows:
        row.truncate(width, overflow="crop")
    return Text("\n").join(rows)


def same_figure(a: Figure, b: Figure) -> bool:
    """True when two figures would draw the same picture (a flat learning rate, no new validation)."""
    if (a.title, a.vlines, a.log_y, len(a.lines)) != (b.title, b.vlines, b.log_y, len(b.lines)):
        return False
    return all(la.joined == lb.joined and la.color == lb.color and np.array_equal(la.x, lb.x)
               and np.array_equal(la.y, lb.y) for la, lb in zip(a.lines, b.lines))


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
        if self._cache is None or self._cache[0] != size:
            color = not self.app.no_color if hasattr(self.app, "no_color") else True
            self._cache = (size, render_figure(self.figure, *size, color=color))
        return self._cache[1]
