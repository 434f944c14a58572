"""The dashboard: watch and steer a run in a terminal.

It talks to a run only through a RunSource (a live socket or a finished log: engine/client.py),
and knows of the run only what its events say, so it never imports torch and starts in a fraction
of a second: numpy and the client are loaded after the first frame has painted. Events append to
numpy arrays; the screen redraws at most ten times a second, and only when something changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Horizontal
from textual.css.query import NoMatches
from textual.widgets import Footer, TabbedContent, TabPane

from traintop.engine import commands as cmd

from .base import REDRAW_SECONDS, CurvesApp
from .inference import InferenceView
from .keys import END_KEYS, LR_FIND_KEYS, RUN_KEYS, STEERING_ACTIONS, TAB_KEYS, VIEW_KEYS
from .literal import Literal
from .plot import PlotWidget
from .resources import ResourcesView
from .screens import EscInput, LrScreen, QuitScreen
from .timing_view import TimingView

if TYPE_CHECKING:
    from traintop.engine.events import LrFind

    from .state import RunState

__all__ = ["REDRAW_SECONDS", "TrainTop", "start_up_measured"]


class TrainTop(CurvesApp):
    """The run screen: header, curves, side panel, and views for layers, inference, config, events
    and the engine's output."""

    BINDINGS = [*LR_FIND_KEYS, *RUN_KEYS, *VIEW_KEYS, *TAB_KEYS, *END_KEYS]  # lr-find's first: a narrow footer keeps it

    def __init__(self, opener, title: str = "", engine_pid: int | None = None, log_path=None):
        """`opener`: an async callable returning the run's RunSource (LiveRun or FinishedRun)."""
        super().__init__()
        self.opener = opener
        self.source = None
        self._state: RunState | None = None
        self.state_title = title
        self.engine_pid = engine_pid
        self.engine_exit: int | None = None  # the engine's exit code, once the dashboard has reaped it
        self.engine_proc = None  # the engine's Popen, when this dashboard started it
        self.log_path = log_path
        self.drawn_version = -1
        self.outcome = ""  # "detached" or "stopped" once the user has quit a live run; "train": see next_run
        self.found: LrFind | None = None  # an lr-find run's final event, once it suggests a rate
        self.next_run: list[str] = []  # the `traintop` arguments to run once the dashboard has closed
        self.config_shown = False
        self.layers = self.events = self.output = None  # the hidden tabs' fillers, made after the first frame

    @property
    def state(self) -> RunState:
        """What the dashboard knows of the run; made (with numpy) when first needed, after the first frame."""
        if self._state is None:
            from .state import RunState

            self._state = RunState()
        return self._state

    @property
    def main(self):
        """The run screen, also while a dialog or the help is on top of it."""
        return self.screen_stack[0]

    def every_binding(self) -> list[Binding]:
        return [*self.BINDINGS, *InferenceView.BINDINGS, *EscInput.BINDINGS]

    def help_sections(self):
        return [("steering the run", RUN_KEYS), *([("lr-find", LR_FIND_KEYS)] if self.found else []),
                ("the curves", VIEW_KEYS), ("tabs", TAB_KEYS),
                ("the inference tab", [b for b in InferenceView.BINDINGS if b.description]),
                ("text fields", EscInput.BINDINGS), ("", END_KEYS)]

    def palette_bindings(self) -> list[Binding]:
        return [*(b for b in self.BINDINGS if self.found or b not in LR_FIND_KEYS),
                *(b for b in InferenceView.BINDINGS if b.description)]

    def check_action(self, action: str, parameters) -> bool | None:
        """lr-find's key only once there is a rate to train with; the steering keys dimmed once the
        run has ended (the inference view still answers from its checkpoint); the others as every
        app's."""
        if action == "use_suggested_lr" and self.found is None:
            return False
        if action in STEERING_ACTIONS and self.state.status in ("finished", "failed"):
            return None
        return super().check_action(action, parameters)

    async def run_binding(self, binding: Binding) -> None:
        if binding in InferenceView.BINDINGS:  # the inference tab's keys work from the palette too
            self.action_inference()
            await self.main.query_one(InferenceView).run_action(binding.action)
            return
        await self.run_action(binding.action)

    def last_step(self) -> float:
        return float(self.state.step)

    # -- layout ----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Literal(f"traintop · {self.state_title}  {self.starting_text()}", id="header")
        with TabbedContent(id="views"):
            with TabPane("Curves", id="curves"):
                with Horizontal(id="body"):
                    with Container(id="plots"):
                        yield PlotWidget(id="loss-plot")
                        yield PlotWidget(id="grad-plot")
                        yield PlotWidget(id="lr-plot")
                        yield PlotWidget(id="metric-plot")
                    yield Literal(id="side")
            yield TabPane("Layers", id="layers")  # its table, and the event log, come after the first frame
            with TabPane("Inference", id="inference"):
                yield InferenceView(id="inference-view")
            with TabPane("Config", id="config"):
                yield Literal(id="config-view")
            yield TabPane("Events", id="events")
            yield TabPane("Output", id="output")  # the engine's own output: a watched script's prints
            with TabPane("Timing", id="timing"):
                yield TimingView(id="timing-view")
            with TabPane("Resources", id="resources"):
                yield ResourcesView(id="resources-view")
        yield Footer(compact=True, show_command_palette=False)  # ctrl+p is in the help

    def on_mount(self) -> None:
        self.on_resize()
        if start_up_measured(self, "frame"):
            return
        # Connecting, numpy and the client wait until the first frame is on screen.
        self.call_after_refresh(self.start)

    async def start(self) -> None:
        """After the first frame: the hidden tabs' widgets, then the run."""
        from textual.widgets import DataTable, RichLog

        from .views import OUTPUT_LINES, EventsView, LayersView, OutputView

        table = DataTable(id="layers-table", cursor_type="row")
        await self.main.query_one("#layers", TabPane).mount(table)
        self.layers = LayersView(table)
        events_filter = EscInput(placeholder="filter events (e.g. warning, lr_changed); Esc leaves",
                                 id="events-filter")
        events_log = RichLog(id="events-log", max_lines=5000, wrap=True)  # advice is at the end
        await self.main.query_one("#events", TabPane).mount_all([events_filter, events_log])
        self.events = EventsView(events_log, events_filter)
        output_log = RichLog(id="output-log", max_lines=OUTPUT_LINES, wrap=True)  # as a terminal wraps
        await self.main.query_one("#output", TabPane).mount(output_log)
        self.output = OutputView(output_log, self.log_path)
        self.set_interval(REDRAW_SECONDS, self.redraw)
        self.follow()

    async def action_use_suggested_lr(self) -> None:
        """Close this dashboard and train the config with lr-find's suggested rate, as its command line
        says (`traintop run ... --set optim.lr=RATE`): the command line runs it, with a dashboard."""
        if self.found is None:
            return
        self.next_run = list(self.found.run_args)
        self.outcome = "train"
        await self.leave()

    def key_of(self, binding_id: str) -> str:
        """The key of a binding, as the user has it mapped."""
        from .keys import key_text

        return next(key_text(self, b) for b in self.BINDINGS if b.id == binding_id)

    async def action_quit(self) -> None:
        """Ctrl+Q quits as `q` does."""
        await self.action_quit_run()

    # -- the event stream ------------------------------------------------------------------------

    @work(exclusive=True, group="follow")
    async def follow(self) -> None:
        """Connect (waiting while the engine starts), then apply every event to the state."""
        while self.source is None:
            try:
                self.source = await self.opener()
            except Exception as e:  # noqa: BLE001 - shown on screen, retried while the engine starts
                if self.engine_died():
                    return
                self.state.error = str(e)
                await asyncio.sleep(0.2)
        from traintop.engine import events as ev
        from traintop.engine.runstore import is_live, killed_note

        timing = self.main.query_one("#timing-view", TimingView)
        async for event in self.source.events():
            self.state.apply(event)
            timing.apply(event)
            if isinstance(event, ev.RunFinished):
                self.main.refresh_bindings()  # its footer, even before the app counts as mounted
            if isinstance(event, ev.RunStarted) and event.source == "lr_find":
                self.main.query_one("#views", TabbedContent).active = "timing"  # its only curve is there
            elif isinstance(event, ev.LrFind) and event.done and event.suggested and event.run_args:
                self.found = event
                self.refresh_bindings()
                self.notify(f"suggested learning rate {event.suggested:.3g}: "
                            f"{self.key_of('use_suggested_lr')} trains with it")
        if self.state.status not in ("finished", "failed"):  # the log ends with no run_finished
            if self.source.live and self.engine_proc is not None:  # its socket closes before it has exited
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(self.engine_proc.wait, 3)
            if self.source.live and (self.engine_died() or is_live(self.source.folder)):
                self.state.status = "failed"  # the engine we started failed, or dropped us
                self.state.error = self.state.error or self.source.closed_reason or "the engine went away"
            else:
                self.state.killed(killed_note(self.source.folder))
            self.main.refresh_bindings()
        self.state.version += 1
        self.redraw()  # now, not at the next tick: a finished run's whole history has just been read

    def engine_died(self) -> bool:
        """True (and the log's tail shown) when the engine process we started has exited."""
        if self.engine_pid is None:
            return False
        if self.engine_proc is not None:  # its Popen: whoever reaps it first, the exit status is kept there
            self.engine_exit = self.engine_proc.poll()
            if self.engine_exit is None:
                return False
        else:
            try:
                os.kill(self.engine_pid, 0)
                pid, status = os.waitpid(self.engine_pid, os.WNOHANG)
                if pid == 0:
                    return False
                self.engine_exit = os.waitstatus_to_exitcode(status)  # reaped here: the caller cannot wait
            except (ProcessLookupError, ChildProcessError):
                pass
        tail = ""
        if self.log_path and os.path.exists(self.log_path):
            tail = "\n".join(open(self.log_path, errors="replace").read().strip().splitlines()[-8:])
        if self.engine_exit is not None and self.engine_exit < 0:  # a signal (kill -9, the OOM killer)
            from .format import signal_name

            self.state.killed(f"the engine was killed by {signal_name(-self.engine_exit)}.\n{tail}")
        else:
            self.state.status = "failed"
            self.state.error = f"the engine exited.\n{tail}"
        self.state.version += 1
        return True

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """At most ten times a second, and only when the state or the view changed."""
        try:
            self._redraw()
        except NoMatches:  # the app is closing: its widgets are already gone
            pass

    def _redraw(self) -> None:
        from .figures import Plots
        from .panels import header_text, side_text

        s = self.state
        main = self.main
        if self.output is not None:
            self.output.update()
        main.query_one("#header", Literal).update(
            header_text(s, self.state_title, self.size.width, self.starting_text(), self.view_words()))
        active = main.query_one("#views", TabbedContent).active
        if active == "layers" and self.layers is not None:
            self.layers.update(s)
        if s.version == self.drawn_version and self.view.key() == self.drawn_view:
            return
        self.drawn_version, self.drawn_view = s.version, self.view.key()
        width = max(20, main.query_one("#loss-plot").size.width)
        plots = Plots(s, self.view, width)
        main.query_one("#loss-plot", PlotWidget).show(plots.loss())
        if self.narrow:
            main.query_one("#grad-plot", PlotWidget).show(plots.chosen(narrow=True))
        else:
            main.query_one("#grad-plot", PlotWidget).show(plots.grad())
            main.query_one("#lr-plot", PlotWidget).show(plots.lr())
            main.query_one("#metric-plot", PlotWidget).show(plots.chosen(narrow=False))
        main.query_one("#side", Literal).update(side_text(s))
        if len(s.loss):
            start_up_measured(self, "curves")
        if self.events is not None:
            self.events.update(s)
        main.query_one("#resources-view", ResourcesView).show(s.resources, s.rank_samples_per_s)  # a few lines: cheap
        main.query_one("#timing-view", TimingView).redraw(width)
        if s.config and not self.config_shown:
            from traintop.engine.config import dumps_toml

            # Literal: as markup, every [section] header of the TOML would vanish.
            main.query_one("#config-view", Literal).update(dumps_toml(s.config))
            self.config_shown = True

    def starting_text(self) -> str:
        """What the header says before the first event: an engine of ours is loading, or an
        existing run is being read."""
        return "starting: loading PyTorch and the data…" if self.engine_pid else "reading the run…"

    @on(TabbedContent.TabActivated)
    def tab_shown(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "layers" and self.layers is not None and self._state is not None:
            self.layers.update(self.state)
        elif event.pane.id == "inference":
            self.main.query_one(InferenceView).shown()

    @on(EscInput.Changed, "#events-filter")
    def refilter(self) -> None:
        if self.events is not None:
            self.events.refilter(self.state)

    # -- actions ---------------------------------------------------------------------------------

    async def command(self, command: cmd.Command) -> cmd.Reply | None:
        """Send a command to the run; its answer, or why it was refused, shows as a toast."""
        if self.source is None:
            self.notify("the engine is still starting", severity="warning")
            return None
        reply = await self.source.send(command)
        self.notify(reply.message, severity="information" if reply.ok else "error")
        return reply

    async def action_pause(self) -> None:
        await self.command(cmd.Resume() if self.state.status == "paused" else cmd.Pause())

    async def action_lr_factor(self, factor: float) -> None:
        await self.command(cmd.SetLr(factor=factor))

    def action_type_lr(self) -> None:
        async def chosen(set_lr):
            if set_lr is not None:
                await self.command(set_lr)
        self.push_screen(LrScreen(self.state.lr), chosen)

    async def action_validate(self) -> None:
        await self.command(cmd.Validate())

    async def action_checkpoint(self) -> None:
        await self.command(cmd.Checkpoint())

    async def action_early_stopping(self) -> None:
        """Ask the engine to turn early stopping over; what it then is comes back as its
        early_stopping_changed event (to every attached client), never from a guess here."""
        if self.source is None:
            self.notify("the engine is still starting", severity="warning")
            return
        reply = await self.source.send(cmd.EarlyStopping(enabled=not self.state.early_enabled))
        # The engine's message is the confirmation: it warns when the run will stop at once.
        severity = "error" if not reply.ok else ("warning" if reply.data.get("stops_next") else "information")
        self.notify(reply.message, severity=severity, timeout=12 if severity == "warning" else None)

    def action_tab(self, tab: str) -> None:
        if tab == "inference":
            self.action_inference()
            return
        self.main.query_one("#views", TabbedContent).active = tab
        self.set_focus(None)

    def action_inference(self) -> None:
        """Show the inference view, with its keys active, on a sample."""
        self.main.query_one("#views", TabbedContent).active = "inference"
        view = self.main.query_one(InferenceView)
        view.focus()
        view.shown()

    async def action_quit_run(self) -> None:
        live = self.source is not None and self.source.live and self.state.status in ("running", "paused", "starting")
        if not live and not (self.engine_pid and self.state.status == "starting"):
            await self.leave()
            return

        async def chosen(choice: str) -> None:
            if choice == "stop":
                if self.source is not None:
                    await self.source.send(cmd.Stop(save=True))
                elif self.engine_pid:  # still starting, not yet listening: it stops on SIGTERM
                    os.kill(self.engine_pid, signal.SIGTERM)
                self.outcome = "stopped"
                await self.leave()
            elif choice == "detach":
                self.outcome = "detached"
                await self.leave()
        self.push_screen(QuitScreen(paused=self.state.status == "paused"), chosen)

    async def leave(self) -> None:
        if self.source is not None:
            await self.source.close()
        self.exit(self.outcome)


def start_up_measured(app: App, moment: str) -> bool:
    """For bench/render.py: when TRAINTOP_START_UP names this moment ("frame": the first frame,
    "curves": the first with curves), write the wall-clock time and this process's CPU time once it
    is on screen to the file TRAINTOP_START_UP_FILE, and quit. True when it does."""
    if os.environ.get("TRAINTOP_START_UP") != moment or getattr(app, "_start_up_measured", False):
        return False
    app._start_up_measured = True

    def painted() -> None:
        import time

        with open(os.environ["TRAINTOP_START_UP_FILE"], "w") as f:
            f.write(f"{time.time():.6f} {time.process_time():.6f}\n")
        app.exit()
    app.call_after_refresh(painted)
    return True

