"""The run screen's text: the header, the side panel and the Events tab's lines, from a RunState."""

from __future__ import annotations

from rich.text import Text

from traintop.engine import events as ev

from .figures import loss_name
from .format import duration, fmt, rate, rounded, speed
from .literal import LiteralText
from .marks import STYLES, Marker
from .resources import header_figure
from .state import RunState

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLES = {"running": "bold green", "paused": "bold yellow", "failed": "bold red", "finished": "bold cyan"}
SHOWN_WARNINGS = 3
LEGEND_WIDTH = 27  # the side panel's width inside its padding



def header_text(s: RunState, title: str, width: int, starting: str, view: str = "") -> Text:
    """Two lines: the run, its device and status (and how the curves are shown); then where it is.

    The second line keeps the epoch, step and learning rate at any width; the progress bar, the
    elapsed time and samples/s give way, in that order, when it is too long.
    """
    status = starting if s.status == "starting" else s.status
    if s.status in ("finished", "failed") and s.final_status:
        status = s.final_status.replace("_", " ")
    t = LiteralText()
    t.append(f"{s.name or title}", style="bold")
    t.append(f"  {s.device}  " if s.device else "  ")
    t.append(status, style=STATUS_STYLES.get(s.status, "bold"))
    room = width - 2  # inside the header's padding
    if s.resources and s.status != "finished":  # a finished run uses nothing
        kept = len(view) + 2 if view else 0  # the view words the user chose keep their place
        figure = header_figure(s.resources[-1], room=room - t.cell_len - 2 - kept)
        if figure:
            t.append(f"  {figure}")
    if view and t.cell_len + 2 + len(view) <= room:
        t.append(" " * (room - t.cell_len - len(view)))
        t.append(view, style="dim")
    if s.step or s.total_steps:
        epoch = f"epoch {s.epoch}/{s.epochs}" if s.epochs else f"epoch {s.epoch}"
        step = f"step {s.step:,}/{s.total_steps:,}" if s.total_steps else f"step {s.step:,}"
        core = f"{epoch}  {step}  lr {rate(s.lr)}"
        eta = s.eta
        items = {"eta": f"ETA {duration(eta)}" if eta is not None else "",
                 "speed": speed(s.recent_samples_per_s(), s.steps_per_s()), "elapsed": f"elapsed {duration(s.t)}"}

        def line(bar: str) -> str:
            return "  ".join([core, *([bar] if bar else []), *(v for v in items.values() if v)])
        for drop in ("elapsed", "speed", "eta"):  # the bar goes first, then these, in this order
            if len(line("")) <= room:
                break
            items[drop] = ""
        bar = ""
        spare = room - len(line("")) - 2
        if s.total_steps and spare >= 7:
            cells = min(20, spare)
            filled = int(min(1.0, s.step / s.total_steps) * cells)
            bar = "█" * filled + "░" * (cells - filled)
        t.append("\n" + line(bar))
    elif s.error:
        t.append(f"\n{s.error.splitlines()[0]}", style="red")
    return t


def side_text(s: RunState) -> Text:
    """Best so far, early stopping, the test score, warnings (one line per condition), the marks' legend."""
    t = LiteralText()
    t.append("best\n", style="bold")
    best = s.best_value()
    if best is not None:
        unit = loss_name(s) if s.monitor == "val_loss" else ""
        t.append(f" {s.monitor}{f' ({unit})' if unit else ''} {fmt(best)}\n")
        if s.data.get("task") == "regression" and s.metric_name and s.monitor != f"val_{s.metric_name}":
            value = s.best.metrics.get(s.metric_name)
            if value is not None:  # the plot shows this one: the same units, side by side
                t.append(f" {s.metric_name} {fmt(value)} (target units)\n")
        t.append(f" epoch {s.best.epoch}, step {s.best.step:,}\n")
    else:
        t.append(" -\n")
    t.append("early stopping\n", style="bold")
    if not s.early_known:
        t.append(" -\n", style="dim")
    elif s.early_enabled:
        t.append(f" on, patience left {max(0, s.patience - s.since_best)}/{s.patience}\n")
    else:
        t.append(" off\n")
    if s.test:
        t.append("test\n", style="bold")
        t.append("".join(f" {k} {fmt(v)}\n" for k, v in s.test.items()))
    elif s.source == "config" and s.status not in ("failed",):  # a loop of the user's own has no test of traintop's
        t.append("test\n", style="bold")
        t.append(" after training\n", style="dim")
    if s.warnings:
        t.append(f"warnings ({len(s.warnings)})\n", style="bold red")
        latest = list(s.warnings.values())[::-1]
        for w in latest[:SHOWN_WARNINGS]:
            # One condition, however often raised: its count and steps, then its latest values, each
            # on a line of its own so that nothing wraps in the panel's width.
            times = f" ×{w.count}" if w.count > 1 else ""
            t.append(f" {STYLES['warning'].glyph} {w.kind.replace('_', ' ')}{times}\n", style="yellow")
            where = f"steps {w.first_step:,}–{w.last_step:,}" if w.count > 1 else f"step {w.step:,}"
            t.append(f"   {where}\n", style="yellow")
            details = [f"{k} {rounded(v)}" for k, v in list(w.values.items())[:2]] if w.values else [w.message]
            room = LEGEND_WIDTH - 3 if w.values else 2 * LEGEND_WIDTH - 4  # a message may take two lines
            for detail in details:
                t.append(f"   {detail if len(detail) <= room else detail[:room - 1] + '…'}\n", style="dim")
        if len(latest) > SHOWN_WARNINGS:
            t.append(f" {len(latest) - SHOWN_WARNINGS} more in the Events tab\n", style="dim")
    if s.status == "failed" and s.error:
        t.append("killed\n" if s.final_status == "killed" else "error\n", style="bold red")
        t.append(f" {s.error}\n", style="red")
    kinds = [k for k in STYLES if any(m.kind == k for m in s.markers)]
    if kinds:
        t.append("marks", style="bold")
        used = LEGEND_WIDTH
        for kind in kinds:
            piece = f" {STYLES[kind].glyph} {STYLES[kind].name}"
            if used + len(piece) > LEGEND_WIDTH:
                t.append("\n")
                used = 0
            t.append(piece[:2], style=STYLES[kind].color)
            t.append(piece[2:])
            used += len(piece)
        t.append("\n")
    return t


def event_line(e: ev.Event, mark: Marker | None = None) -> tuple[Text, Text]:
    """One event for the Events tab, as its head (when, what, and the mark it left on the curves,
    with its glyph and label) and its fields, numbers rounded as everywhere else."""
    fields = {k: v for k, v in e.to_json().items() if k not in ("event", "t", "config", "data", "layers")}
    if isinstance(e, ev.RunStarted):
        fields = {"run_id": e.run_id, "device": e.device, "params": e.params}
    head = LiteralText(f"{e.t:8.2f}s  ")
    if mark is not None:
        head.append(STYLES[mark.kind].glyph, style=STYLES[mark.kind].color)
        head.append(f" {e.event:<16} ")
        head.append(mark.label, style=STYLES[mark.kind].color)
    else:
        head.append(f"  {e.event:<16}")
    return head, LiteralText("  ".join(f"{k}={rounded(v)}" for k, v in fields.items()))


def sparkline(values) -> str:
    """Values as a row of block heights, lowest to highest."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return ""
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    return "".join(SPARK[min(7, int((x - lo) / span * 7.999))] for x in v)
