"""`traintop show RUN RUN...`: several runs' curves overlaid, one colour per run, with a legend.

Each run is read as the single-run dashboard reads it (its events.jsonl, or its socket while it
is live) into a RunState of its own; the plots draw every run's series on shared axes.
Comparing steers nothing, so only the view keys are bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal
from textual.css.query import NoMatches
from textual.widgets import Footer

from .app import REDRAW_SECONDS, HelpScreen, palette_commands, start_up_measured
from .headless import fmt
from .literal import Literal, LiteralApp, LiteralText
from .plot import Figure, Line, PlotWidget

# (plotext colour, the same ANSI colour in Rich) per run, orange last: the axes are orange; and
# the symbol that tells runs apart without colour (NO_COLOR), with its glyph for the legend.
RUN_COLORS = [("cyan", "cyan"), ("magenta", "magenta"), ("green", "green"), ("red", "red"),
              ("blue+", "bright_blue"), ("orange", "yellow")]
RUN_SYMBOLS = [("braille", "⣿"), ("•", "•"), ("x", "x"), ("+", "+"), ("o", "o"), ("*", "*")]


@dataclass
class ComparedRun:
    """One run of the comparison: where it comes from, how it is drawn, and what is known of it."""

    label: str
    opener: Callable[[], Any]  # async: returns a LiveRun or FinishedRun
    color: str
    rich_color: str
    symbol: str
    glyph: str
    state: Any = None  # RunState, made after the first frame (it needs numpy)
    source: Any = None


class CompareTop(LiteralApp):
    """Several runs on the same axes: loss, validation metric, gradient norm, learning rate."""

    CSS_PATH = "app.tcss"
    # At 80x24 a comparison keeps the validation metric rather than the gradient norm.
    CSS = """
    #plots.narrow #metric-plot { display: block; }
    #plots.narrow #grad-plot { display: none; }
    #side { width: 34; }
    """
    TITLE = "traintop"
    BINDINGS = [
        Binding("y", "log_scale", "log y", tooltip="Loss axis: log or linear scale"),
        Binding("s", "smoothing", "smoothing", tooltip="Loss smoothing: off, EMA 0.6, 0.9, 0.99"),
        Binding("question_mark", "help", "help", key_display="?", tooltip="Show every key"),
        Binding("q", "quit", "quit", tooltip="Quit (the runs are not touched)"),
    ]

    def __init__(self, runs: list[tuple[str, Callable[[], Any]]]):
        """`runs`: (label, async opener returning a run source) per run, in legend order."""
        super().__init__()
        self.runs = [ComparedRun(label, opener, *RUN_COLORS[i % len(RUN_COLORS)], *RUN_SYMBOLS[i % len(RUN_SYMBOLS)])
                     for i, (label, opener) in enumerate(runs)]
        self.log_y = False
        self.smoothing = 1  # index into SMOOTHING: 0.6
        self.drawn_version: tuple = ()
        self.no_color = "NO_COLOR" in os.environ

    def compose(self) -> ComposeResult:
        yield Literal(self.header_text(), id="header")
        with Horizontal(id="body"):
            with Container(id="plots"):
                yield PlotWidget(id="loss-plot")
                yield PlotWidget(id="metric-plot")
                yield PlotWidget(id="grad-plot")
                yield PlotWidget(id="lr-plot")
            yield Literal(id="side")
        yield Footer()

    def on_mount(self) -> None:
        self.on_resize()
        if start_up_measured(self, "frame"):
            return
        self.call_after_refresh(self.start)

    def start(self) -> None:
        from .state import RunState

        for run in self.runs:
            run.state = RunState()
            self.follow(run)
        self.set_interval(REDRAW_SECONDS, self.redraw)

    def on_resize(self, event=None) -> None:
        narrow = self.size.width < 110 or self.size.height < 30
        self.query_one("#plots").set_class(narrow, "narrow")
        self.query_one("#side").set_class(self.size.width < 70, "hidden")

    def get_system_commands(self, screen):
        """Every key's action in the command palette, with Textual's own commands."""
        yield from palette_commands(self, super().get_system_commands(screen))

    @work(group="follow")
    async def follow(self, run: ComparedRun) -> None:
        """Read one run (its history, then live events while it trains) into its state."""
        try:
            run.source = await run.opener()
        except Exception as e:  # noqa: BLE001 - shown in the side panel; the other runs go on
            run.state.error = str(e)
            run.state.version += 1
            return
        async for event in run.source.events():
            run.state.apply(event)

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """At most ten times a second, and only when a run changed."""
        version = (tuple(run.state.version for run in self.runs), self.smoothing, self.log_y)
        if version == self.drawn_version:
            return
        self.drawn_version = version
        try:
            self._redraw()
        except NoMatches:  # the app is closing: its widgets are already gone
            pass

    def _redraw(self) -> None:
        from .state import SMOOTHING

        width = max(20, self.query_one("#loss-plot").size.width)
        alpha = SMOOTHING[self.smoothing]
        loss, val, grad, lr, metric = [], [], [], [], []
        for run in self.runs:
            s = run.state

            def line(series, joined: bool = True) -> Line:
                x, y = series.view(width)
                return Line(x, y, run.label, run.color, joined, run.symbol)

            loss.append(line(s.smoothed(alpha) if alpha else s.loss))
            val.append(line(s.val_loss, joined=False))
            grad.append(line(s.grad_norm))
            lr.append(line(s.lr_series))
            metric.append(line(s.val_metric))
        smooth = f"ema {alpha}" if alpha else "raw"
        self.query_one("#loss-plot", PlotWidget).show(
            Figure(f"loss (train {smooth}; • val){' log' if self.log_y else ''}", loss + val, log_y=self.log_y))
        names = sorted({run.state.metric_name for run in self.runs if run.state.metric_name})
        self.query_one("#metric-plot", PlotWidget).show(
            Figure(f"val {' / '.join(names) or 'metric'}", metric, empty_text="after the first validation"))
        self.query_one("#grad-plot", PlotWidget).show(Figure("gradient norm (log)", grad, log_y=True))
        self.query_one("#lr-plot", PlotWidget).show(Figure("learning rate", lr))
        self.query_one("#header", Literal).update(self.header_text())
        self.query_one("#side", Literal).update(self.side_text())

    def legend(self) -> Text:
        """Each run's colour (or, without colour, its symbol) and name."""
        t = LiteralText()
        for run in self.runs:
            t.append(f"{run.glyph * 2} " if self.no_color else "━━ ", style=f"bold {run.rich_color}")
            t.append(run.label + "   ")
        return t

    def header_text(self) -> Text:
        t = LiteralText()
        t.append(f"comparing {len(self.runs)} runs", style="bold")
        states = [run.state for run in self.runs if run.state is not None]
        if states:
            counts: dict[str, int] = {}
            for s in states:
                word = (s.final_status or s.status).replace("_", " ")
                counts[word] = counts.get(word, 0) + 1
            t.append("  " + ", ".join(f"{n} {word}" for word, n in counts.items()))
        else:
            t.append("  reading the runs…")
        t.append("\n")
        return t + self.legend()

    def side_text(self) -> Text:
        t = LiteralText()
        for run in self.runs:
            s = run.state
            t.append(f"{run.glyph * 2} " if self.no_color else "━━ ", style=f"bold {run.rich_color}")
            t.append(f"{run.label}\n", style="bold")
            if s.error and not s.run_id:
                t.append(f" {s.error}\n", style="red")
                continue
            status = (s.final_status or s.status).replace("_", " ")
            t.append(f" {status}, epoch {s.epoch}/{s.epochs}\n")
            best = s.best_value()
            if best is not None:
                t.append(f" best {s.monitor} {fmt(best)}, epoch {s.best.epoch}\n")
            if s.test:
                name = s.metric_name if s.metric_name in s.test else next(iter(s.test))
                t.append(f" test {name} {fmt(s.test[name])}\n")
            if s.warnings:
                t.append(f" {len(s.warnings)} warning(s)\n", style="yellow")
        return t

    # -- actions ---------------------------------------------------------------------------------

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y
        self.notify(f"loss axis: {'log' if self.log_y else 'linear'}")

    def action_smoothing(self) -> None:
        from .state import SMOOTHING

        self.smoothing = (self.smoothing + 1) % len(SMOOTHING)
        alpha = SMOOTHING[self.smoothing]
        self.notify(f"smoothing: {'off' if not alpha else f'EMA {alpha}'}")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        """Leave; live runs go on training."""
        for run in self.runs:
            if run.source is not None:
                await run.source.close()
        self.exit("")
