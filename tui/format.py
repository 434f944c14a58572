"""Numbers and durations as every part of traintop's output writes them: the headless log, the
dashboard's header, side panel and Events tab round alike."""

from __future__ import annotations

import math
from typing import Any


def fmt(value: float | None, digits: int = 4) -> str:
    """A number for a log line: 0.1235, 1.2e-05, nan."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"


def rate(value: float | None, digits: int = 3) -> str:
    """A learning rate to `digits` significant figures, however small: 0.00195, 0.001, 1.00e-05
    (`fmt` keeps decimals, which would make 0.00195 read 0.002)."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def duration(seconds: float) -> str:
    """Elapsed time or ETA: 0.4s, 42s, 3m05s, 2h07m, 3d04h; past 999 days (a hand-edited report,
    an ETA at a crawl) >999d."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    if seconds >= 1000 * 86400:
        return ">999d"
    if seconds >= 2 * 86400:
        return f"{int(seconds // 86400)}d{int(seconds % 86400 // 3600):02d}h"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def speed(samples_per_s: float, steps_per_s: float | None) -> str:
    """How fast a run trains: samples a second, or steps a second where a loop of the user's own
    gives no batch sizes; empty before either is known."""
    if samples_per_s > 0:
        return f"{samples_per_s:,.0f} samples/s"
    if steps_per_s:
        return f"{steps_per_s:,.3g} steps/s" if steps_per_s < 100 else f"{steps_per_s:,.0f} steps/s"
    return ""


def rounded(value: Any) -> str:
    """Any event field as the screen shows it: floats through `fmt`, however deep in lists and dicts."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {rounded(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        shown = ", ".join(rounded(v) for v in value[:8])
        return f"[{shown}{', …' if len(value) > 8 else ''}]"
    return str(value)


def signal_name(number: int) -> str:
    """SIGKILL for 9: how a process was ended, in the words `kill -l` uses."""
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
