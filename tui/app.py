"""The dashboard: watch and steer a run in a terminal.

It only ever talks to a run through the client library (a live socket or a finished log), so it
never imports torch and starts in a fraction of a second: numpy, plotext and the client are
loaded after the first frame has painted. Events append to numpy arrays; the screen redraws at
most ten times a second, and only when something changed.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, TabbedContent, TabPane

from traintop.engine import commands as cmd
from traintop.engine import events as ev

from .headless import duration, fmt
from .inference import InferenceView
from .literal import Literal, LiteralApp, LiteralLabel, LiteralText, shown
from .plot import Figure, Line, PlotWidget
from .timing_view import TimingView

if TYPE_CHECKING:
    from .state import RunState

REDRAW_SECONDS = 0.1
OUTPUT_LINES = 5000  # lines of the engine's output kept in the Output view
OUTPUT_BYTES = 1 << 20  # of a long output, its last this many bytes are read at first
SPARK = "▁▂▃▄▅▆▇█"


class QuitScreen(ModalScreen[str]):
    """Asked when quitting a live run: stop it, or leave it training."""

    BINDINGS = [Binding("escape", "dismiss('cancel')", "cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield LiteralLabel("The run is still training. Stop it (saving last.pt), or detach and leave it running?")
            with Horizontal():
                yield Button("Detach", id="detach", variant="primary")
                yield Button("Stop the run", id="stop", variant="error")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def chosen(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class LrScreen(ModalScreen[float | None]):
    """Type a learning rate; anything but a positive number is refused inline."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, current: float):
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield LiteralLabel(f"Learning rate (now {self.current:.3g}):")
            yield Input(placeholder="e.g. 0.0005", id="lr-input")
            yield LiteralLabel("", id="lr-error")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        try:
            value = float(event.value)
        except ValueError:
            value = float("nan")
        if not (value > 0 and value < float("inf")):
            self.query_one("#lr-error", LiteralLabel).update(f"{event.value!r} is not a positive number")
            return
        self.dismiss(value)


class HelpScreen(ModalScreen[None]):
    """Every key of the app that opened it, with what it does."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def compose(self) -> ComposeResult:
        rows = [f"{b.key_display or b.key:>7}  {b.tooltip or b.description}" for b in self.app.BINDINGS
                if isinstance(b, Binding) and b.description]
        with Vertical(id="dialog", classes="wide"):
            yield Literal("traintop keys\n\n" + "\n".join(rows) + "\n\nEsc closes this help.")


class TrainTop(LiteralApp):
    """The run screen: header, curves, side panel, and views for layers, config and events."""

    CSS_PATH = "app.tcss"
    TITLE = "traintop"
    # The tooltip is each key's description in the help and the command palette.
    BINDINGS = [
        Binding("space", "pause", "pause/resume", key_display="space",
                tooltip="Pause training at the next step, or resume it"),
        Binding("plus,equals_sign", "lr_factor(2.0)", "lr ×2", key_display="+",
                tooltip="Double the learning rate"),
        Binding("minus", "lr_factor(0.5)", "lr ÷2", key_display="-", tooltip="Halve the learning rate"),
        Binding("l", "type_lr", "set lr", tooltip="Type an exact learning rate"),
        Binding("v", "validate", "validate", tooltip="Validate now (a report: early stopping does not move)"),
        Binding("c", "checkpoint", "checkpoint", tooltip="Save a checkpoint (last.pt) now"),
        Binding("e", "early_stopping", "early stop on/off", tooltip="Turn early stopping on or off"),
        Binding("y", "log_scale", "log y", tooltip="Loss axis: log or linear scale"),
        Binding("s", "smoothing", "smoothing", tooltip="Loss smoothing: off, EMA 0.6, 0.9, 0.99"),
        Binding("m", "next_metric", "metric", tooltip="The fourth plot: the next validation metric or extra scalar"),
        Binding("question_mark", "help", "help", key_display="?", tooltip="Show every key"),
        Binding("i", "inference", "inference", tooltip="Try the model on validation samples or a typed input"),
        Binding("q", "quit_run", "quit", tooltip="Quit (a live run asks: stop it, or leave it training)"),
    ]

    def __init__(self, opener, title: str = "", engine_pid: int | None = None, log_path=None):
        """`opener`: an async callable returning a run source (LiveRun or FinishedRun)."""
        super().__init__()
        self.opener = opener
        self.source = None
        self._state: RunState | None = None
        self.state_title = title
        self.engine_pid = engine_pid
        self.engine_exit: int | None = None  # the engine's exit code, once the dashboard has reaped it
        self.log_path = log_path
        self.log_y = False
        self.smoothing = 1  # index into SMOOTHING: 0.6
        self.drawn_version = -1
        self.outcome = ""  # "detached" or "stopped" once the user has quit a live run
        self.no_color = "NO_COLOR" in os.environ
        self.config_shown = False
        self.metric_choice = 0  # which metric or scalar the fourth plot shows

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
        yield Footer()

    def on_mount(self) -> None:
        self.on_resize()
        if start_up_measured(self, "frame"):
            return
        # Connecting, numpy and plotext wait until the first frame is on screen.
        self.call_after_refresh(self.start)

    async def start(self) -> None:
        """After the first frame: the hidden views' widgets (DataTable and RichLog cost about a tenth
        of the start-up), then the run."""
        from textual.widgets import DataTable, RichLog

        table = DataTable(id="layers-table", cursor_type="row")
        await self.main.query_one("#layers", TabPane).mount(table)
        table.add_columns("layer", "grad norm", "trend", "")
        await self.main.query_one("#events", TabPane).mount_all([
            Input(placeholder="filter events (e.g. warning, lr_changed)", id="events-filter"),
            RichLog(id="events-log", max_lines=5000)])
        await self.main.query_one("#output", TabPane).mount(RichLog(id="output-log", max_lines=OUTPUT_LINES))
        self.set_interval(REDRAW_SECONDS, self.redraw)
        self.follow()

    def get_system_commands(self, screen):
        """The command palette: every key's action with its description, and Textual's own commands
        (but its Quit, which would not ask what to do with a live run)."""
        yield from palette_commands(self, super().get_system_commands(screen))

    async def action_quit(self) -> None:
        """Ctrl+Q quits as `q` does."""
        await self.action_quit_run()

    def on_resize(self, event=None) -> None:
        narrow = self.size.width < 110 or self.size.height < 30
        self.main.query_one("#plots").set_class(narrow, "narrow")
        self.main.query_one("#side").set_class(self.size.width < 70, "hidden")

    # -- the event stream ------------------------------------------------------------------------

    @work(exclusive=True, group="follow")
    async def follow(self) -> None:
        """Connect (waiting while the engine starts), then fold every event into the state."""
        while self.source is None:
            try:
                self.source = await self.opener()
            except Exception as e:  # noqa: BLE001 - shown on screen, retried while the engine starts
                if self.engine_died():
                    return
                self.state.error = str(e)
                await asyncio.sleep(0.2)
        timing = self.main.query_one("#timing-view", TimingView)
        async for event in self.source.events():
            self.state.apply(event)
            timing.feed(event)
        if self.source.live and self.state.status not in ("finished", "failed"):
            self.state.status = "failed"
            self.state.error = self.source.closed_reason or "the engine went away"
            self.engine_died()
        self.state.version += 1
        self.redraw()  # now, not at the next tick: a finished run's whole history has just been read

    def engine_died(self) -> bool:
        """True (and the log's tail shown) when the engine process we started has exited."""
        if self.engine_pid is None:
            return False
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
        self.state.status = "failed"
        self.state.error = f"the engine exited.\n{tail}"
        self.state.version += 1
        return True

    # -- drawing ---------------------------------------------------------------------------------

    def redraw(self) -> None:
        """At most ten times a second, and only when the state changed."""
        try:
            self._redraw()
        except NoMatches:  # the app is closing: its widgets are already gone
            pass

    def _redraw(self) -> None:
        s = self.state
        self.update_output()
        if s.version == self.drawn_version:
            self.main.query_one("#header", Literal).update(self.header_text())  # elapsed keeps ticking
            return
        self.drawn_version = s.version
        self.main.query_one("#header", Literal).update(self.header_text())
        width = max(20, self.main.query_one("#loss-plot").size.width)
        buckets = max(10, width)
        self.main.query_one("#loss-plot", PlotWidget).show(self.loss_figure(buckets))
        gx, gy = s.grad_norm.view(buckets)
        self.main.query_one("#grad-plot", PlotWidget).show(Figure("gradient norm (log)", [Line(gx, gy, "grad", "green")],
                                                             self.vlines(), log_y=True))
        lx, ly = s.lr_series.view(buckets)
        self.main.query_one("#lr-plot", PlotWidget).show(Figure("learning rate", [Line(lx, ly, "lr", "orange")], self.vlines()))
        self.main.query_one("#metric-plot", PlotWidget).show(self.metric_figure(buckets))
        self.main.query_one("#side", Literal).update(self.side_text())
        if len(s.loss):
            start_up_measured(self, "curves")
        if self.main.query_one("#views", TabbedContent).active == "layers":
            self.update_layers()
        self.main.query_one("#timing-view", TimingView).redraw(buckets)
        self.update_events()
        if s.config and not self.config_shown:
            from traintop.engine.config import dumps_toml

            # Literal: as markup, every [section] header of the TOML would vanish.
            self.main.query_one("#config-view", Literal).update(dumps_toml(s.config))
            self.config_shown = True

    def metric_choices(self) -> list[tuple[str, object]]:
        """What the fourth plot can show: each validation metric, then each extra scalar of the loop."""
        s = self.state
        shown_first = [s.metric_name] if s.metric_name else []
        names = shown_first + [n for n in s.metrics if n not in shown_first]
        return [(f"val {n}", s.metrics.get(n, s.val_metric)) for n in names] + \
            [(n, series) for n, series in s.scalars.items()]

    def metric_figure(self, buckets: int) -> Figure:
        choices = self.metric_choices()
        if not choices:
            return Figure(f"val {self.state.metric_name}".strip(), [], self.vlines(),
                          empty_text="after the first validation")
        title, series = choices[self.metric_choice % len(choices)]
        x, y = series.view(buckets)
        more = f"  (m: {len(choices) - 1} more)" if len(choices) > 1 else ""
        return Figure(title + more, [Line(x, y, title, "magenta")], self.vlines())

    def action_next_metric(self) -> None:
        self.metric_choice += 1
        self.drawn_version = -1

    def vlines(self) -> list[tuple[float, str]]:
        return [(m.step, m.label) for m in self.state.markers]

    def loss_figure(self, buckets: int) -> Figure:
        from .state import SMOOTHING

        s = self.state
        x, y = s.loss.view(buckets)
        alpha = SMOOTHING[self.smoothing]
        lines = [Line(x, y, "train", "blue" if alpha else "cyan")]
        if alpha:
            sx, sy = s.smoothed(alpha).view(buckets)
            lines.append(Line(sx, sy, f"ema {alpha}", "cyan"))
        vx, vy = s.val_loss.view(buckets)
        lines.append(Line(vx, vy, "val", "magenta", joined=False))
        smooth = f", ema {alpha}" if alpha else ""
        return Figure(f"loss (train{smooth}; • val){' log' if self.log_y else ''}", lines, self.vlines(),
                      log_y=self.log_y)

    def header_text(self) -> Text:
        s = self.state
        elapsed = s.t
        status = self.starting_text() if s.status == "starting" else s.status
        style = {"running": "bold green", "paused": "bold yellow", "failed": "bold red",
                 "finished": "bold cyan"}.get(s.status, "bold")
        if s.status == "finished" and s.final_status:
            status = s.final_status.replace("_", " ")
        t = LiteralText()
        t.append(f"{s.name or self.state_title}", style="bold")
        t.append(f"  {s.device}  " if s.device else "  ")
        t.append(status, style=style)
        if s.total_steps:
            eta = s.eta
            before = f"epoch {s.epoch}/{s.epochs}  step {s.step}/{s.total_steps} "
            after = (f" elapsed {duration(elapsed)}  " + (f"ETA {duration(eta)}  " if eta is not None else "")
                     + f"{s.samples_per_s:,.0f} samples/s  lr {fmt(s.lr, 3)}")
            # The bar gives way first when the line is too long for the screen (80 columns).
            width = max(5, min(20, self.size.width - 3 - len(before) - len(after)))
            filled = int(min(1.0, s.step / s.total_steps) * width)
            t.append(f"\n{before}{'█' * filled}{'░' * (width - filled)}{after}")
        elif s.error:
            t.append(f"\n{s.error.splitlines()[0]}", style="red")
        return t

    def starting_text(self) -> str:
        """What the header says before the first event: an engine of ours is loading, or an
        existing run is being read."""
        return "starting: loading PyTorch and the data…" if self.engine_pid else "reading the run…"

    def side_text(self) -> Text:
        s = self.state
        t = LiteralText()
        t.append("best\n", style="bold")
        best = s.best_value()
        if best is not None:
            t.append(f" {s.monitor} {fmt(best)}\n epoch {s.best.epoch}, step {s.best.step}\n")
        else:
            t.append(" -\n")
        t.append("early stopping\n", style="bold")
        if s.early_enabled:
            t.append(f" on, patience left {max(0, s.patience - s.since_best)}/{s.patience}\n")
        else:
            t.append(" off\n")
        if s.test:
            t.append("test\n", style="bold")
            t.append("".join(f" {k} {fmt(v)}\n" for k, v in s.test.items()))
        elif s.source == "config":  # a loop of the user's own has no test of traintop's
            t.append("test\n", style="bold")
            t.append(" after training\n", style="dim")
        if s.warnings:
            t.append(f"warnings ({len(s.warnings)})\n", style="bold red")
            for w in s.warnings[-3:]:
                text = w.message if len(w.message) <= 90 else w.message[:87] + "…"
                t.append(f" step {w.step} [{w.kind_}] {text}\n", style="yellow")
        if s.status == "failed" and s.error:
            t.append("error\n", style="bold red")
            t.append(f" {s.error}\n", style="red")
        return t

    def update_layers(self) -> None:
        table = self.main.query_one("#layers-table")
        table.clear()
        rows = []
        for name, series in self.state.layer_norms.items():
            recent = series.y[-40:]
            last = float(recent[-1]) if len(recent) else float("nan")
            rows.append((last, name, recent))
        rows.sort(key=lambda r: -r[0] if r[0] == r[0] else 0)
        for last, name, recent in rows:
            flag = Text("vanishing", style="yellow") if last < 1e-6 else (
                Text("exploding", style="red") if last > 1e3 else Text(""))
            table.add_row(shown(name), fmt(last), sparkline(recent), flag)

    def update_output(self) -> None:
        """What the engine printed (a watched script's own output, or the engine's log), as it grows."""
        if not self.log_path:
            return
        try:
            size = os.path.getsize(self.log_path)
        except OSError:
            return
        offset = getattr(self, "_output_offset", None)
        if size == offset:
            return
        if offset is None or size < offset:
            offset = max(0, size - OUTPUT_BYTES)  # a long log: its end is what matters
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            data = f.read(size - offset)
        self._output_offset = offset + len(data)
        text = getattr(self, "_output_partial", "") + data.decode(errors="replace")
        *lines, self._output_partial = text.split("\n")
        log = self.main.query_one("#output-log")
        for line in lines:
            # A progress bar redraws its line after each carriage return: show what a terminal would.
            log.write(shown(Text.from_ansi(line.rsplit("\r", 1)[-1])))

    def update_events(self) -> None:
        log = self.main.query_one("#events-log")
        pattern = self.main.query_one("#events-filter", Input).value.strip().lower()
        written = getattr(self, "_events_shown", 0)
        for e in self.state.log[written:]:
            line = event_line(e)
            if not pattern or pattern in line.lower():
                log.write(shown(line))
        self._events_shown = len(self.state.log)

    @on(Input.Changed, "#events-filter")
    def refilter(self) -> None:
        self.main.query_one("#events-log").clear()
        self._events_shown = 0
        self.update_events()

    # -- actions ---------------------------------------------------------------------------------

    async def command(self, command: cmd.Command) -> None:
        """Send a command to the run; its answer, or why it was refused, shows as a toast."""
        if self.source is None:
            self.notify("the engine is still starting", severity="warning")
            return
        reply = await self.source.send(command)
        self.notify(reply.message, severity="information" if reply.ok else "error")

    async def action_pause(self) -> None:
        await self.command(cmd.Resume() if self.state.status == "paused" else cmd.Pause())

    async def action_lr_factor(self, factor: float) -> None:
        await self.command(cmd.SetLr(factor=factor))

    def action_type_lr(self) -> None:
        async def chosen(value):
            if value is not None:
                await self.command(cmd.SetLr(value=value))
        self.push_screen(LrScreen(self.state.lr), chosen)

    async def action_validate(self) -> None:
        await self.command(cmd.Validate())

    async def action_checkpoint(self) -> None:
        await self.command(cmd.Checkpoint())

    async def action_early_stopping(self) -> None:
        if self.source is None:
            self.notify("the engine is still starting", severity="warning")
            return
        reply = await self.source.send(cmd.EarlyStopping(enabled=not self.state.early_enabled))
        # The engine's message is the confirmation: it warns when the run will stop at once.
        severity = "error" if not reply.ok else ("warning" if reply.data.get("stops_next") else "information")
        self.notify(reply.message, severity=severity, timeout=12 if severity == "warning" else None)
        if reply.ok:
            self.state.early_enabled = reply.data.get("enabled", not self.state.early_enabled)
            self.state.patience = reply.data.get("patience", self.state.patience)
        self.state.version += 1

    def action_log_scale(self) -> None:
        self.log_y = not self.log_y
        self.state.version += 1
        self.notify(f"loss axis: {'log' if self.log_y else 'linear'}")

    def action_smoothing(self) -> None:
        from .state import SMOOTHING

        self.smoothing = (self.smoothing + 1) % len(SMOOTHING)
        alpha = SMOOTHING[self.smoothing]
        self.state.version += 1
        self.notify(f"smoothing: {'off' if not alpha else f'EMA {alpha}'}")

    def action_inference(self) -> None:
        """Show the inference view, with its keys active."""
        self.main.query_one("#views", TabbedContent).active = "inference"
        self.main.query_one("#inference-view").focus()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

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
        self.push_screen(QuitScreen(), chosen)

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


def palette_commands(app: App, system_commands):
    """One palette command per key binding (its description, then its key), and Textual's own
    commands but Quit, which the bindings' quit replaces."""
    for binding in app.BINDINGS:
        if not isinstance(binding, Binding) or not binding.description:
            continue
        key = binding.key_display or binding.key

        async def run(action: str = binding.action) -> None:
            await app.run_action(action)

        yield SystemCommand(binding.tooltip or binding.description, f"key {key}: {binding.description}", run)
    for command in system_commands:
        if command.title != "Quit":
            yield command


def sparkline(values) -> str:
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return ""
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo or 1.0
    return "".join(SPARK[min(7, int((x - lo) / span * 7.999))] for x in v)


def event_line(e: ev.Event) -> str:
    """One readable line per event for the event log."""
    fields = {k: v for k, v in e.to_json().items() if k not in ("event", "t", "config", "data")}
    if isinstance(e, ev.RunStarted):
        fields = {"run_id": e.run_id, "device": e.device, "params": e.params}
    text = "  ".join(f"{k}={fmt(v) if isinstance(v, float) else v}" for k, v in fields.items())
    return f"{e.t:8.2f}s  {e.kind:<16} {text}"
