"""The Timing view: where each sampled step's time goes (data, forward, backward, update), and
the learning-rate range test of an `lr-find` run with its suggested rate marked.

Fed only by events (`apply`), drawn at the dashboard's redraw (`redraw`); no torch.
"""

from __future__ import annotations

import math

from textual.app import ComposeResult
from textual.containers import Vertical

from traintop.engine import events as ev

from .literal import Literal
from .marks import Marker
from .plot import Figure, Line, PlotWidget

COLORS = {"data": "red", "forward": "cyan", "backward": "green", "update": "yellow",
          "forward+backward": "cyan"}
KEPT = 2000  # timing samples kept; older ones are thinned out


class TimingView(Vertical):
    """The share of each phase in the sampled steps over time, its latest split in words, and an
    lr-find run's loss against the rate."""

    DEFAULT_CSS = """
    TimingView #timing-text { height: auto; }
    TimingView PlotWidget { height: 1fr; }
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.steps: list[float] = []
        self.phases: dict[str, list[float]] = {}  # phase -> seconds per sample
        self.lr: list[float] = []
        self.smoothed: list[float] = []
        self.found: ev.LrFind | None = None  # the range test's final event
        self.version = self.drawn = 0

    def compose(self) -> ComposeResult:
        yield Literal("no timing samples yet: config runs and loops iterated with run.iter are timed",
                      id="timing-text")
        yield PlotWidget(id="timing-plot")
        yield PlotWidget(id="lr-find-plot")

    def on_mount(self) -> None:
        for plot in self.query(PlotWidget):  # each shows once it has something to draw
            plot.display = False

    def apply(self, e: ev.Event) -> None:
        """Fold one event in: a steps batch's timing columns, or lr-find points."""
        if isinstance(e, ev.Steps) and e.timing:
            self.steps.extend(e.timing.get("step", []))
            for phase, seconds in e.timing.items():
                if phase != "step":
                    self.phases.setdefault(phase, []).extend(seconds)
            if len(self.steps) > KEPT:
                self.steps = self.steps[::2]
                self.phases = {p: v[::2] for p, v in self.phases.items()}
            self.version += 1
        elif isinstance(e, ev.LrFind):
            self.lr.extend(e.lr)
            self.smoothed.extend(math.nan if x is None else x for x in e.smoothed)
            if e.done:
                self.found = e
            self.version += 1

    def shares(self) -> dict[str, list[float]]:
        """Each phase's share of its sample's time, in percent."""
        totals = [sum(v[i] for v in self.phases.values()) for i in range(len(self.steps))]
        return {p: [100 * s / t if t > 0 else math.nan for s, t in zip(v, totals)] for p, v in self.phases.items()}

    def summary(self) -> str:
        """The latest samples' split in words, and what lr-find suggests."""
        lines = []
        if self.steps:
            recent = {p: sum(v[-8:]) for p, v in self.phases.items()}
            total = sum(recent.values()) or 1.0
            n = min(8, len(self.steps))
            lines.append(f"last {n} sampled steps ({1000 * total / n:.3g} ms each): "
                         + "  ".join(f"{p} {100 * s / total:.0f}%" for p, s in recent.items()))
        if self.found is not None:
            if self.found.suggested:
                lines.append(f"lr-find: suggested learning rate {self.found.suggested:.3g}: {self.found.reason}")
            else:
                lines.append(f"lr-find: {self.found.reason}")
            if self.found.command:
                lines.append(f"train with it:  {self.found.command}")
        return "\n".join(lines)

    def redraw(self, buckets: int) -> None:
        """Draw what changed since the last time."""
        if self.version == self.drawn:
            return
        self.drawn = self.version
        import numpy as np

        text = self.summary()
        if text:
            self.query_one("#timing-text", Literal).update(text)
        if self.steps:
            x = np.asarray(self.steps, dtype=np.float64)
            lines = [Line(x, np.asarray(v, dtype=np.float64), p, COLORS.get(p, "white"))
                     for p, v in self.shares().items()]
            plot = self.query_one("#timing-plot", PlotWidget)
            plot.display = True
            plot.show(Figure("share of step time (%) by phase", lines))
        if self.lr:
            x = np.log10(np.asarray(self.lr, dtype=np.float64))
            marks = [Marker(math.log10(self.found.suggested), "best", "suggested")] \
                if self.found and self.found.suggested else []
            plot = self.query_one("#lr-find-plot", PlotWidget)
            plot.display = True
            plot.show(Figure(
                "lr-find: smoothed loss against log10(learning rate)",
                [Line(x, np.asarray(self.smoothed, dtype=np.float64), "loss", "cyan")], marks,
                x_title="log10 lr", mark_labels=True))
