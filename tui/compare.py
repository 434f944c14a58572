"""`traintop show RUN RUN...`: several runs' curves overlaid, one colour per run, with a legend.

Each run is read as the single-run dashboard reads it (a RunSource: its events.jsonl, or its socket
while it is live) into a RunState of its own; the plots draw every run's series on shared axes.
Comparing steers nothing, so only the view keys are bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Container, Horizontal
from textual.css.query import NoMatches
from textual.widgets import Footer

from .app import start_up_measured
from .base import REDRAW_SECONDS, CurvesApp
from .format import fmt
from .keys import COMPARE_KEYS
from .literal import Literal, LiteralText
from .plot import PlotWidget

# A Rich colour per run (orange last: the axes' labels are grey, not orange); and the symbol that
# tells runs apart without colour (NO_COLOR), with its glyph for the legend.
RUN_COLORS = ["cyan", "magenta", "green", "red", "bright_blue", "yellow"]
RUN_SYMBOLS = [("braille", "⣿"), ("•", "•"), ("x", "x"), ("+", "+"), ("o", "o"), ("*", "*")]


@dataclass
class ComparedRun:
    """One run of the comparison: where it comes from, how it is drawn, and what is known of it."""

    label: str
    opener: Callable[[], Any]  # async: returns the run's RunSource
    color: str
    symbol: str
    glyph: str
    state: Any = None  # RunState, made after the first frame (it needs numpy)
    source: Any = None

    @property
    def rich_color(self) -> str:
        return self.color


class CompareTop(CurvesApp):
    """Several runs on the same axes: loss, validation metric, gradient norm, learning rate."""

    # At 80x24 a comparison keeps the validation metric rather than the gradient norm.
    CSS = """
    #plots.narrow #metric-plot { display: block; }
    #plots.narrow #grad-plot { display: none; }
    #side { width: 34; }
    """
    BINDINGS = COMPARE_KEYS

    def __init__(self, runs: list[tuple[str, Callable[[], Any]]]):
        """`runs`: (label, async opener returning a run source) per run, in legend order."""
        super().__init__()
        self.runs = [ComparedRun(label, opener, RUN_COLORS[i % len(RUN_COLORS)], *RUN_SYMBOLS[i % len(RUN_SYMBOLS)])
                     for i, (label, opener) in enumerate(runs)]
        self.drawn_version: tuple = ()

    def compose(self) -> ComposeResult:
        yield Literal(self.header_text(), id="header")
        with Horizontal(id="body"):
            with Container(id="plots"):
                yield PlotWidget(id="loss-plot")
                yield PlotWidget(id="metric-plot")
                yield PlotWidget(id="grad-plot")
                yield PlotWidget(id="lr-plot")
            yield Literal(id="side")
        yield Footer(compact=True, show_command_palette=False)  # ctrl+p is in the help

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

    def last_step(self) -> float:
        return max((float(run.state.step) for run in self.runs if run.state is not None), default=0.0)

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
        if run.state.status not in ("finished", "failed"):  # its log ends with no run_finished
            from traintop.engine.runstore import is_live, killed_note

            if is_live(run.source.folder):  # the engine dropped this view: it still trains
                run.state.status = "failed"
                run.state.error = run.source.closed_reason or "the engine went away"
            else:
                run.state.killed(killed_note(run.source.folder))
            run.state.version += 1

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """At most ten times a second, and only when a run or the view changed."""
        if any(run.state is None for run in self.runs):
            return
        version = (tuple(run.state.version for run in self.runs), self.view.key())
        if version == self.drawn_version and self.drawn_view:
            return
        self.drawn_version, self.drawn_view = version, self.view.key()
        try:
            self._redraw()
        except NoMatches:  # the app is closing: its widgets are already gone
            pass

    def _redraw(self) -> None:
        from .figures import compared

        width = max(20, self.query_one("#loss-plot").size.width)
        figures = compared([run.state for run in self.runs], self.runs, self.view, width)
        for name, figure in figures.items():
            self.query_one(f"#{name}-plot", PlotWidget).show(figure)
        self.query_one("#header", Literal).update(self.header_text())
        self.query_one("#side", Literal).update(self.side_text())

    def legend(self) -> Text:
        """Each run's colour (or, without colour, its symbol) and name."""
        t = LiteralText()
        for run in self.runs:
            t.append(f"{run.glyph * 2} " if self.no_color else "━━ ", style=f"bold {run.color}")
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
        view = self.view_words()
        if view:
            t.append(f"  ({view})", style="dim")
        t.append("\n")
        return t + self.legend()

    def side_text(self) -> Text:
        t = LiteralText()
        for run in self.runs:
            s = run.state
            t.append(f"{run.glyph * 2} " if self.no_color else "━━ ", style=f"bold {run.color}")
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

    async def action_quit(self) -> None:
        """Leave; live runs go on training."""
        for run in self.runs:
            if run.source is not None:
                await run.source.close()
        self.exit("")
