"""A plot widget drawn with plotext 6 (textual-plotext targets plotext 5).

numpy and plotext are imported when the first plot with data is drawn, not with this module, so
the dashboard's first frame paints before either is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from rich.text import Text
from textual.widget import Widget

from .terminal import terminal_safe

MARKER_COLOR = "gray"  # vertical markers; other colours are plotext's names (cyan, orange, ...)


@dataclass
class Line:
    """One series on a plot: points joined by lines, or scattered.

    `symbol` draws it without colour (NO_COLOR), so that overlaid runs stay apart.
    """

    x: Any  # numpy arrays
    y: Any
    label: str
    color: str
    joined: bool = True
    symbol: str = "braille"


@dataclass
class Figure:
    """What a plot shows; the widget turns it into text at its current size."""

    title: str = ""
    lines: list[Line] = field(default_factory=list)
    vlines: list[tuple[float, str]] = field(default_factory=list)  # (x, label)
    log_y: bool = False
    empty_text: str = "waiting for data"


def nice_step(span: float, count: int) -> float:
    """A round tick spacing (1, 2, 2.5 or 5 times a power of ten) giving about `count` ticks."""
    raw = span / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * magnitude >= raw * 0.999:
            return m * magnitude
    return 10 * magnitude


def nice_ticks(lo: float, hi: float, count: int, integer: bool = False) -> tuple[list[float], float]:
    """Round tick positions inside [lo, hi], about `count` of them, and their spacing."""
    if hi <= lo:
        return [lo], 1.0
    step = nice_step(hi - lo, count)
    if integer:
        step = max(1.0, round(step))
    first = math.ceil(lo / step - 1e-9) * step
    ticks = [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]
    return [0.0 if abs(t) < step * 1e-9 else t for t in ticks], step


def tick_label(value: float, step: float) -> str:
    """`value` with as many digits as the tick spacing needs: 250, 12k, 1.5M, 0.05, 2.5e-05."""
    if step >= 1 and abs(value) >= 10_000:
        for scale, suffix in ((1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                digits = max(0, -math.floor(math.log10(step / scale) + 1e-9))
                return f"{value / scale:.{min(digits, 3)}f}{suffix}"
    if step >= 1:
        return f"{value:.0f}"
    digits = -math.floor(math.log10(step) + 1e-9)
    if step * 10 ** digits % 1 > 1e-6:  # 2.5, 0.25: one digit more
        digits += 1
    if digits <= 4:
        return f"{value:.{digits}f}"
    return f"{value:.2g}".replace("e-0", "e-")


def y_ticks(lo: float, hi: float, height: int, log: bool) -> tuple[list[float], list[str]]:
    """Tick positions and labels for the y axis; for a log axis, positions are log10 values."""
    if log:
        ticks = [float(t) for t in range(math.ceil(lo - 1e-9), math.floor(hi + 1e-9) + 1)]
        if len(ticks) < 2:  # less than a decade apart: 1, 2 and 5 times powers of ten
            ticks = [math.log10(m * 10.0 ** k) for k in range(math.floor(lo) - 1, math.ceil(hi) + 1)
                     for m in (1, 2, 5) if lo - 1e-9 <= math.log10(m * 10.0 ** k) <= hi + 1e-9]
        if len(ticks) >= 2:
            return ticks, [f"{10 ** t:.3g}" for t in ticks]
        ticks = [lo, (lo + hi) / 2, hi] if hi > lo else [lo]
        return ticks, [f"{10 ** t:.2g}" for t in ticks]
    for count in (max(2, height // 3), height):
        ticks, step = nice_ticks(lo, hi, count)
        if len(ticks) >= 2:
            break
    else:  # a narrow range between two round numbers: label its ends
        ticks, step = [lo, hi], (hi - lo) / 10 or 1.0
    return ticks, [tick_label(t, step) for t in ticks]


def render_figure(fig: Figure, width: int, height: int, color: bool = True) -> Text:
    """The figure drawn by plotext into `width` x `height` cells."""
    title = terminal_safe(fig.title)  # plotext writes it among its own escape sequences
    lines = [ln for ln in fig.lines if len(ln.x)]
    if lines and fig.log_y:  # plotted as log10 with ticks labelled in the data's units
        import numpy as np

        lines = [Line(ln.x[ln.y > 0], np.log10(ln.y[ln.y > 0]), ln.label, ln.color, ln.joined, ln.symbol)
                 for ln in lines]
        lines = [ln for ln in lines if len(ln.x)]
    if width < 20 or height < 5 or not lines:
        return Text(f"{title}\n{fig.empty_text}" if height > 1 else title, style="dim")
    import plotext  # here, not at the top: the first frame paints before any plot needs it

    f = plotext.figure
    f.clear()
    f.theme("dark" if color else "clear")

    def marker(symbol: str, name: str):
        return plotext.marker(symbol, plotext.pixel(name)) if color else symbol

    x_lo = min(float(ln.x.min()) for ln in lines)
    x_hi = max(float(ln.x.max()) for ln in lines)
    y_lo = min(float(ln.y.min()) for ln in lines)
    y_hi = max(float(ln.y.max()) for ln in lines)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi - y_lo <= 1e-9 * max(1.0, abs(y_hi)):  # a flat line, e.g. a constant learning rate
        pad = 0.5 if fig.log_y else (abs(y_hi) * 0.1 or 1.0)
        y_lo, y_hi = y_lo - pad, y_hi + pad
    for x, label in fig.vlines:  # markers first, so the curves draw over them
        if x_lo <= x <= x_hi:
            s = f.signal([x, x], [y_lo, y_hi], marker=marker("braille", MARKER_COLOR))
            s.lines()
            f.draw(s)
    for ln in lines:
        symbol = ("braille" if ln.joined else "dot") if color or ln.symbol == "braille" else ln.symbol
        s = f.signal(ln.x.tolist(), ln.y.tolist(), marker=marker(symbol, ln.color))
        if ln.joined:
            s.lines()
        f.draw(s)
    # Limits and ticks set by hand: plotext's own pick fractional steps (50.8, 100.7) for
    # integer steps, and with custom y ticks it lost part of the x range.
    f.ruler("x").lim(x_lo, x_hi)
    xs, x_step = nice_ticks(x_lo, x_hi, max(3, width // 8), integer=x_hi - x_lo >= 4)
    f.ruler("x").ticks(xs, [tick_label(t, x_step) for t in xs])
    f.ruler("y").lim(y_lo, y_hi)
    f.ruler("y").ticks(*y_ticks(y_lo, y_hi, height, fig.log_y))
    f.legend(False)
    f.title(title)
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
    if not a.lines:
        return a.empty_text == b.empty_text
    import numpy as np

    return all(la.joined == lb.joined and la.color == lb.color and la.symbol == lb.symbol
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
        if self._cache is None or self._cache[0] != size:
            color = not getattr(self.app, "no_color", False)
            self._cache = (size, render_figure(self.figure, *size, color=color))
        return self._cache[1]
