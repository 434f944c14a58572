"""A Figure drawn as text: braille lines (2×4 dots a cell) on titled axes, marks with their own
glyph, colour and label, and a legend.

Everything is numpy over the few hundred points a plot is given (each series is cut to about
twice the plot's width before it gets here), so a redraw costs the same at a thousand steps or a
million. Ticks come from tui/axes.py: round values, exact labels, never two on one spot.
"""

from __future__ import annotations


import numpy as np
from rich.text import Span, Text

from .axes import axis_labels, fitting, linear_ticks, log_ticks, time_label, time_ticks
from .marks import STYLES
from .plot import Figure, Line
from .terminal import terminal_safe

BRAILLE = 0x2800
# The bit of each braille dot, by its pixel row (0-3) and column (0-1) in the cell.
DOT_BIT = np.array([[0, 3], [1, 4], [2, 5], [6, 7]], dtype=np.int64)
AXIS = "bright_black"
FOLLOW_SKIP = 0.15  # the y axis follows the run after its first 15% when they would squash the rest
FOLLOW_SQUASH = 1.6  # ...and only when they would take more than this share of the axis


def render_figure(fig: Figure, width: int, height: int, color: bool = True) -> Text:
    """`fig` drawn into `width` x `height` cells."""
    lines = _usable(fig)
    title = _title_row(fig, lines, width, color)
    if not lines or width < 16 or height < 5:
        empty = Text(fig.empty_text if height > 1 else "", style="dim")
        return Text("\n").join([title, empty]) if height > 1 else title
    x_lo, x_hi = _x_range(fig, lines)
    y_lo, y_hi, clipped = _y_range(fig, lines, x_lo, x_hi)
    rows = height - 3
    y_values, y_labels = log_ticks(y_lo, y_hi, rows) if fig.log_y else _linear_y(y_lo, y_hi, rows)
    label_w = max(max(map(len, y_labels), default=1), len(fig.x_title))
    cols = width - label_w - 1
    if cols < 8:
        return Text("\n").join([title, Text(fig.empty_text, style="dim")])
    canvas = Canvas(cols, rows, x_lo, x_hi, y_lo, y_hi, color)
    for mark in fig.marks:
        if mark.kind != "warning":
            canvas.vertical(mark.step, STYLES[mark.kind])
    for line in sorted(lines, key=lambda ln: not ln.faint):  # faint ones first, under the rest
        canvas.line(line)
    if fig.mark_labels:
        canvas.labels([m for m in fig.marks if m.kind != "warning"])
    out = Rows(width)
    out.add_text(title)
    tick_rows = {}
    for value, label in zip(y_values, y_labels):
        tick_rows.setdefault(canvas.row_of(value), label)
    for r, (cells, spans) in enumerate(canvas.row_texts()):
        label = tick_rows.get(r)
        prefix = f"{label or '':>{label_w}}{'┤' if label is not None else '│'}"
        out.add(prefix + cells, [(label_w, label_w + 1, AXIS)] + [(s + label_w + 1, e + label_w + 1, st)
                                                                 for s, e, st in spans])
    x_values, x_labels = _x_ticks(fig, x_lo, x_hi, cols)
    axis = ["─"] * cols
    spans = [(0, label_w + 1 + cols, AXIS)]
    for value in x_values:
        axis[canvas.col_of(value)] = "┬"
    for mark in fig.marks:
        if mark.kind == "warning" and x_lo <= mark.step <= x_hi:
            col = canvas.col_of(mark.step)
            axis[col] = STYLES["warning"].glyph
            if color:
                spans.append((label_w + 1 + col, label_w + 2 + col, STYLES["warning"].color))
    out.add(" " * label_w + "└" + "".join(axis), spans)
    row = [" "] * width
    row[:len(fig.x_title)] = fig.x_title
    taken = len(fig.x_title)
    for value, label in zip(x_values, x_labels):
        start = label_w + 1 + canvas.col_of(value) - len(label) // 2
        start = max(0, min(width - len(label), start))
        if start <= taken:
            continue
        row[start:start + len(label)] = label
        taken = start + len(label)
    out.add("".join(row), [(0, len(fig.x_title), "italic " + AXIS)])
    if clipped:  # the first steps run off the top: say so where the eye starts
        out.note_top_left(label_w + 1, "↑", "bold " + AXIS)
    return out.text()


def _usable(fig: Figure) -> list[Line]:
    """The figure's lines with points to draw; on a log axis as log10 of their positive values."""
    lines = [ln for ln in fig.lines if len(ln.x)]
    if fig.log_y:
        out = []
        for ln in lines:
            keep = ln.y > 0
            if keep.any():
                out.append(Line(ln.x[keep], np.log10(ln.y[keep]), ln.label, ln.color, ln.joined, ln.points,
                                ln.faint, ln.symbol, ln.legend))
        lines = out
    finite = []
    for ln in lines:
        ok = np.isfinite(ln.y) & np.isfinite(ln.x)
        if fig.x_range is not None:
            ok &= (ln.x >= fig.x_range[0]) & (ln.x <= fig.x_range[1])
        if ok.any():
            finite.append(ln if ok.all() else Line(ln.x[ok], ln.y[ok], ln.label, ln.color, ln.joined, ln.points,
                                                   ln.faint, ln.symbol, ln.legend))
    return finite


def _x_range(fig: Figure, lines: list[Line]) -> tuple[float, float]:
    if fig.x_range is not None:
        lo, hi = fig.x_range
    else:
        lo = min(float(ln.x[0]) for ln in lines)
        hi = max(float(ln.x[-1]) for ln in lines)
    if not hi > lo:
        lo, hi = lo - 1, hi + 1
    return float(lo), float(hi)


def _y_range(fig: Figure, lines: list[Line], x_lo: float, x_hi: float) -> tuple[float, float, bool]:
    """The y axis' ends, and whether the first steps run off its top (`follow`)."""
    lo = min(float(ln.y.min()) for ln in lines)
    hi = max(float(ln.y.max()) for ln in lines)
    clipped = False
    if fig.follow and not fig.log_y:
        cut = x_lo + FOLLOW_SKIP * (x_hi - x_lo)
        later = [ln.y[ln.x >= cut] for ln in lines]
        later = [y for y in later if len(y)]
        if later:
            later_hi = max(float(y.max()) for y in later)
            if hi - lo > FOLLOW_SQUASH * (later_hi - lo) > 0:
                hi, clipped = later_hi + 0.1 * (later_hi - lo), True
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # a flat line, e.g. a constant learning rate
        pad = 0.5 if fig.log_y else (abs(hi) * 0.1 or 1.0)
        lo, hi = lo - pad, hi + pad
    return lo, hi, clipped


def _linear_y(lo: float, hi: float, rows: int) -> tuple[list[float], list[str]]:
    """Round ticks, at most one every other row so that no two labels share a row."""
    count = max(2, (rows + 1) // 2)
    while True:
        values = linear_ticks(lo, hi, count)
        tick_rows = {round((hi - v) / (hi - lo) * (4 * rows - 1)) // 4 for v in values}
        if len(tick_rows) == len(values) or count <= 2:
            break
        count -= 1
    if len(values) < 2:  # a narrow range between two round numbers: its ends, exactly
        values = [lo, hi]
        return values, axis_labels([float(f"{v:.4g}") for v in values])
    return values, axis_labels(values)


def _x_ticks(fig: Figure, lo: float, hi: float, cols: int) -> tuple[list[float], list[str]]:
    if fig.x_kind == "time":
        def make(count):
            values = time_ticks(lo, hi, count)
            return values, [time_label(v) for v in values]
    else:
        integer = hi - lo >= (2 if fig.x_kind == "epoch" else 4)

        def make(count):
            values = linear_ticks(lo, hi, count, integer=integer)
            return values, axis_labels(values)
    return fitting(make, lo, hi, cols, len)


class Canvas:
    """A grid of cells: each holds a braille pattern or a glyph, and a style."""

    def __init__(self, cols: int, rows: int, x_lo: float, x_hi: float, y_lo: float, y_hi: float, color: bool):
        self.cols, self.rows, self.color = cols, rows, color
        self.x_lo, self.x_hi, self.y_lo, self.y_hi = x_lo, x_hi, y_lo, y_hi
        self.chars = np.full((rows, cols), 32, dtype=np.uint32)
        self.style = np.zeros((rows, cols), dtype=np.int16)
        self.styles: list[str | None] = [None]

    def _style(self, style: str | None) -> int:
        if style is None:
            return 0
        if style not in self.styles:
            self.styles.append(style)
        return self.styles.index(style)

    def px(self, x):
        return (np.asarray(x, dtype=np.float64) - self.x_lo) * ((2 * self.cols - 1) / (self.x_hi - self.x_lo))

    def py(self, y):
        return (self.y_hi - np.asarray(y, dtype=np.float64)) * ((4 * self.rows - 1) / (self.y_hi - self.y_lo))

    def col_of(self, x: float) -> int:
        return int(min(self.cols - 1, max(0, round(float(self.px(x))) // 2)))

    def row_of(self, y: float) -> int:
        return int(min(self.rows - 1, max(0, round(float(self.py(y))) // 4)))

    def vertical(self, x: float, style) -> None:
        """A mark: its glyph down the whole plot, under the curves drawn after it."""
        if not self.x_lo <= x <= self.x_hi:
            return
        col = self.col_of(x)
        self.chars[:, col] = ord(style.glyph)
        self.style[:, col] = self._style(style.color if self.color else None)

    def line(self, line: Line) -> None:
        """A series: braille dots along the segments between its points (or at the points alone)."""
        px, py = self.px(line.x), np.clip(self.py(line.y), 0, 4 * self.rows - 1)
        ix, iy = _raster(px, py, line.joined, 2 * self.cols, 4 * self.rows)
        style = (f"{line.color} dim" if line.faint else line.color) if self.color else ("dim" if line.faint else None)
        sid = self._style(style)
        if not self.color and line.symbol != "braille":  # without colour, a glyph of its own per run
            cells = np.unique((iy >> 2) * self.cols + (ix >> 1))
            self.chars.flat[cells] = ord(line.symbol[0])
            self.style.flat[cells] = sid
        elif len(ix):
            flat = ((iy >> 2) * self.cols + (ix >> 1)) * 8 + DOT_BIT[iy & 3, ix & 1]
            dots = np.zeros(self.rows * self.cols * 8, dtype=bool)
            dots[flat] = True
            bits = np.packbits(dots.reshape(-1, 8), axis=1, bitorder="little")[:, 0]
            lit = np.flatnonzero(bits)
            self.chars.flat[lit] = BRAILLE + bits[lit].astype(np.uint32)
            self.style.flat[lit] = sid
        if line.points:
            cells = (np.rint(py).astype(np.int64) >> 2) * self.cols + (np.rint(px).astype(np.int64) >> 1)
            self.chars.flat[cells] = ord(line.points[0])
            self.style.flat[cells] = self._style(f"bold {line.color}" if self.color else None)

    def labels(self, marks) -> None:
        """Each mark's short label beside its line near the top, where there is room for it."""
        taken: list[list[tuple[int, int]]] = [[] for _ in range(min(2, self.rows))]
        for mark in sorted(marks, key=lambda m: m.step):
            if not self.x_lo <= mark.step <= self.x_hi:
                continue
            text = terminal_safe(mark.label)
            col = self.col_of(mark.step)
            for row in range(len(taken)):
                for start in (col + 1, col - len(text)):
                    end = start + len(text)
                    if start >= 0 and end <= self.cols and all(end < a or start > b for a, b in taken[row]):
                        self.chars[row, start:end] = [ord(c) for c in text]
                        self.style[row, start:end] = self._style(STYLES[mark.kind].color if self.color else None)
                        taken[row].append((start, end))
                        break
                else:
                    continue
                break

    def row_texts(self):
        """Each row's text, and its styled spans (start, end, style)."""
        text = self.chars.astype("<u4").tobytes().decode("utf-32-le")
        for r in range(self.rows):
            style = self.style[r]
            edges = np.flatnonzero(np.diff(style)) + 1
            starts = np.concatenate(([0], edges))
            ends = np.concatenate((edges, [self.cols]))
            spans = [(int(s), int(e), self.styles[style[s]]) for s, e in zip(starts, ends) if style[s]]
            yield text[r * self.cols:(r + 1) * self.cols], spans


def _raster(px, py, joined: bool, width: int, height: int):
    """Pixel positions along the segments between consecutive points (all in numpy)."""
    if joined and len(px) > 1:
        x0, y0, dx, dy = px[:-1], py[:-1], np.diff(px), np.diff(py)
        n = np.minimum(np.ceil(np.maximum(np.abs(dx), np.abs(dy))).astype(np.int64) + 1, width + height)
        seg = np.repeat(np.arange(len(n)), n)
        t = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)) / np.maximum(n - 1, 1)[seg]
        xs = np.concatenate([x0[seg] + dx[seg] * t, px[-1:]])
        ys = np.concatenate([y0[seg] + dy[seg] * t, py[-1:]])
    else:
        xs, ys = px, py
    ix = np.clip(np.rint(xs).astype(np.int64), 0, width - 1)
    iy = np.clip(np.rint(ys).astype(np.int64), 0, height - 1)
    return ix, iy


def _title_row(fig: Figure, lines: list[Line], width: int, color: bool) -> Text:
    """The quantity (and a note) on the left; a legend on the right when the plot holds more than one series."""
    t = Text(no_wrap=True, overflow="crop")
    t.append(terminal_safe(fig.title), style="bold")
    if fig.note:
        t.append(f"  {terminal_safe(fig.note)}", style="dim")
    entries = [ln for ln in fig.lines if ln.legend and len(ln.x)] if len(fig.lines) > 1 else []
    legend = Text()
    for ln in entries:
        glyph = ln.points[0] if ln.points else ("┈" if ln.faint else "━")
        if not color and ln.symbol != "braille":
            glyph = ln.symbol[0]
        style = (f"{ln.color} dim" if ln.faint else f"bold {ln.color}") if color else None
        piece = Text("  ")
        piece.append(glyph, style=style)
        piece.append(f" {terminal_safe(ln.label)}")
        if t.cell_len + legend.cell_len + piece.cell_len > width:
            break
        legend.append_text(piece)
    if legend.cell_len:
        t.append(" " * max(1, width - t.cell_len - legend.cell_len))
        t.append_text(legend)
    t.truncate(width, overflow="crop")
    return t


class Rows:
    """Lines of text with styled spans, joined into one Text at the end."""

    def __init__(self, width: int):
        self.width = width
        self.parts: list[str] = []
        self.spans: list[Span] = []
        self.length = 0

    def add(self, text: str, spans) -> None:
        text = text[:self.width]
        if self.parts:
            self.length += 1  # the newline before it
        for start, end, style in spans:
            if style and start < len(text):
                self.spans.append(Span(self.length + start, self.length + min(end, len(text)), style))
        self.parts.append(text)
        self.length += len(text)

    def add_text(self, text: Text) -> None:
        self.add(text.plain, [(s.start, s.end, s.style) for s in text.spans])

    def note_top_left(self, col: int, glyph: str, style: str) -> None:
        """A glyph on the first row of the plot (the row after the title)."""
        if len(self.parts) > 1 and col < len(self.parts[1]):
            offset = len(self.parts[0]) + 1
            row = self.parts[1]
            self.parts[1] = row[:col] + glyph + row[col + 1:]
            self.spans.append(Span(offset + col, offset + col + 1, style))

    def text(self) -> Text:
        out = Text("\n".join(self.parts), no_wrap=True, overflow="crop")
        out.spans = self.spans
        return out


def marks_legend(kinds) -> list[tuple[str, str, str]]:
    """(glyph, colour, name) of each kind of mark, for a legend."""
    return [(STYLES[k].glyph, STYLES[k].color, STYLES[k].name) for k in STYLES if k in set(kinds)]


__all__ = ["render_figure", "marks_legend"]
