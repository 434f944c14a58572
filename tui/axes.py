"""Axis ticks and their labels: round positions, labels that say exactly the value they mark
(62.5, never "62"), never so many that two overprint, and log axes thinned decade by decade.

Pure arithmetic on floats: no numpy, no terminal.
"""

from __future__ import annotations

import math

STEPS = (1, 2, 2.5, 5)  # tick spacings, times a power of ten
TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def number_label(value: float) -> str:
    """The shortest text that reads back as `value` (to 9 significant digits): 62.5, 0.0005, 2.5e-5,
    12k, 1.25M, 1.5e26."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e12:  # past G: 1.5e26, never 150000000000000000G
        return _shortest(value, scientific=True)
    if magnitude >= 10_000:
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if magnitude >= scale:
                return _shortest(value / scale) + suffix
    if magnitude < 1e-3:
        return _shortest(value, scientific=True)
    return _shortest(value)


def axis_labels(values: list[float]) -> list[str]:
    """Labels for one axis, in one notation: when one value needs `5e-4`, all are written so."""
    labels = [number_label(v) for v in values]
    if any("e" in label for label in labels) and not all("e" in label or label == "0" for label in labels):
        labels = [_shortest(v, scientific=True) if v else "0" for v in values]
    return labels


def _shortest(value: float, scientific: bool = False) -> str:
    for digits in range(0, 10):
        if scientific:
            mantissa, exponent = f"{value:.{digits}e}".split("e")
            text = f"{mantissa}e{int(exponent)}"
        else:
            text = f"{value:.{digits}f}"
        if abs(float(text) - value) <= 1e-9 * abs(value):
            return text
    return f"{value:.9g}"


def nice_step(span: float, count: int, steps=STEPS) -> float:
    """A round spacing (1, 2, 2.5 or 5 times a power of ten) giving at most about `count` ticks."""
    raw = span / max(1, count)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (*steps, 10):
        if m * magnitude >= raw * 0.999:
            return m * magnitude
    return 10 * magnitude


def linear_ticks(lo: float, hi: float, count: int, integer: bool = False) -> list[float]:
    """Round tick values inside [lo, hi], at most about `count` of them."""
    if not hi > lo:
        return [lo]
    step = nice_step(hi - lo, count)
    if integer:
        step = max(1.0, math.ceil(step - 1e-9))
        if step not in (1, 2, 5) and step < 10:
            step = 5.0 if step > 2 else 2.0
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    # k * step, not a running sum: a running sum drifts (0.30000000000000004)
    return [float(round(k * step, 12)) if step < 1 else float(k * step) for k in range(first, last + 1)]


def time_ticks(lo: float, hi: float, count: int) -> list[float]:
    """Seconds at round durations: every 10 s, 1 min, 15 min, 1 h..."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(1, count)
    step = next((s for s in TIME_STEPS if s >= raw * 0.999), None)
    if step is None:
        step = 86400 * nice_step(raw / 86400, 1)
    return [k * step for k in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)]


def time_label(seconds: float) -> str:
    """A tick on a wall-time axis: 0, 45s, 2m, 2m30, 1h, 1h15."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s" if seconds else "0"
    if seconds < 3600:
        m, s = divmod(seconds, 60)
        return f"{m}m{s:02d}" if s else f"{m}m"
    h, rest = divmod(seconds, 3600)
    m = rest // 60
    return f"{h}h{m:02d}" if m else f"{h}h"


def decade_label(power: int) -> str:
    """10**power as a log axis shows it: 0.001 ... 1000, then 1e4, 1e-5."""
    if -3 <= power <= 3:
        return number_label(10.0 ** power)
    return f"1e{power}"


def log_ticks(lo: float, hi: float, rows: int) -> tuple[list[float], list[str]]:
    """Ticks for an axis of log10 values from `lo` to `hi`, at most one per two of `rows`.

    Whole decades when at least two fit; over many decades every k-th (k of 1, 2, 5, 10, 20...),
    each labelled, so the labels show the thinning. Within less than two decades, 1, 2 and 5
    times powers of ten.
    """
    room = max(2, (rows + 1) // 2)
    first, last = math.ceil(lo - 1e-9), math.floor(hi + 1e-9)
    if last - first >= 2:
        for every in (m * 10 ** e for e in range(7) for m in (1, 2, 5)):
            kept = [d for d in range(first, last + 1) if d % every == 0]
            if len(kept) < 2:
                kept = list(range(first, last + 1, every))
            if len(kept) <= room:
                break
        return [float(d) for d in kept], [decade_label(d) for d in kept]
    values = [m * 10.0 ** k for k in range(math.floor(lo) - 1, math.ceil(hi) + 1) for m in (1, 2, 5)]
    ticks = [v for v in values if lo - 1e-9 <= math.log10(v) <= hi + 1e-9]
    while len(ticks) > room:
        ticks = ticks[::2]
    if len(ticks) < 2:  # within a factor of 2 or so: round values, placed on the log axis
        ticks = [v for v in linear_ticks(10 ** lo, 10 ** hi, room) if v > 0]
    return [math.log10(v) for v in ticks], [number_label(float(f"{v:.6g}")) for v in ticks]


def fitting(make, lo: float, hi: float, length: int, label_width) -> tuple[list[float], list[str]]:
    """Ticks from `make(count)` (values, labels), with as many as fit in `length` cells without two
    labels touching: the count is lowered until every label has room."""
    count = max(2, length // 4)
    while True:
        values, labels = make(count)
        widest = max((label_width(label) for label in labels), default=0)
        if len(values) <= 1 or hi <= lo:
            return values, labels
        spacing = length * min(b - a for a, b in zip(values, values[1:])) / (hi - lo)
        if spacing >= widest + 1 or count <= 1:
            return values, labels
        count -= 1
