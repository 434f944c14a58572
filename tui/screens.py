"""The dashboard's dialogs: quit a live run, type a learning rate, type a range of steps, the help.
Esc leaves each of them; an input never keeps the keyboard once Esc is pressed."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input

from traintop.engine.config import plain_float

from .literal import Literal, LiteralLabel


class EscInput(Input):
    """A text field that Esc leaves (the focus goes back to the screen), saying so in the footer."""

    BINDINGS = [Binding("escape", "leave", "leave field", tooltip="Leave the text field", id="leave_input")]

    def action_leave(self) -> None:
        self.screen.set_focus(None)


class QuitScreen(ModalScreen[str]):
    """Asked when quitting a live run: stop it, or leave it training. Arrow keys move between the buttons."""

    BINDINGS = [Binding("escape", "dismiss('cancel')", "cancel"),
                Binding("left,up", "app.focus_previous", "previous", show=False),
                Binding("right,down", "app.focus_next", "next", show=False)]

    def __init__(self, paused: bool = False):
        super().__init__()
        self.paused = paused

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="quit"):
            now, then = ("paused", "leave it paused") if self.paused else ("still training", "leave it running")
            yield LiteralLabel(f"The run is {now}.\nStop it (saving last.pt), or detach and {then}?")
            with Horizontal(id="quit-buttons"):
                yield Button("Detach", id="detach", variant="primary", compact=True)
                yield Button("Stop the run", id="stop", variant="error", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    @on(Button.Pressed)
    def chosen(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class AskScreen(ModalScreen):
    """One line to type, checked when Enter is pressed: a refusal shows under the field, and Esc
    gives up (the screen's result is then None)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]
    question = ""
    placeholder = ""
    input_id, error_id = "ask-input", "ask-error"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield LiteralLabel(self.question)
            yield Input(placeholder=self.placeholder, id=self.input_id)
            yield LiteralLabel("", id=self.error_id, classes="ask-error")

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        value, problem = self.parse(event.value.strip())
        if problem:
            self.query_one(f"#{self.error_id}", LiteralLabel).update(problem)
            return
        self.dismiss(value)

    def parse(self, text: str):
        """(the value, "") or (None, what is wrong with `text`)."""
        raise NotImplementedError


class LrScreen(AskScreen):
    """Type a learning rate; anything but a positive number is refused inline."""

    placeholder = "e.g. 0.0005, or x0.5"
    input_id, error_id = "lr-input", "lr-error"

    def __init__(self, current: float):
        super().__init__()
        self.question = f"Learning rate (now {current:.3g}), or a factor such as x0.5:"

    def parse(self, text: str):
        """A rate (0.0005) or a factor (x0.5, *2), as `ctl lr` reads them: the set_lr to send."""
        from traintop.engine import commands as cmd

        typed = text.strip().lower()
        factor = typed.startswith(("x", "*"))
        try:
            value = plain_float(typed[1:] if factor else typed)
        except ValueError:
            value = float("nan")
        if value == float("inf") and "inf" not in typed:
            return None, f"{text!r} is too large to read; a rate goes up to 10"
        if not (0 < value < float("inf")):
            return None, f"{text!r} is not a positive number: give a rate (0.0005) or a factor (x0.5)"
        return (cmd.SetLr(factor=value) if factor else cmd.SetLr(value=value)), ""


class RangeScreen(AskScreen):
    """Type the steps to show, `200-800` (or `200:800`, `200-` to the end); empty for the whole run."""

    question = "Steps to show (e.g. 200-800, or 5000- to the end; empty: the whole run):"
    placeholder = "from-to"

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = last_step

    def parse(self, text: str):
        if not text:
            return (), ""
        parts = text.replace(":", "-").replace("..", "-").split("-")
        if len(parts) != 2:
            return None, f"{text!r}: give two steps, from-to (e.g. 200-800)"
        try:
            lo = plain_float(parts[0]) if parts[0].strip() else 0.0
            hi = plain_float(parts[1]) if parts[1].strip() else float(self.last_step)
        except ValueError:
            return None, f"{text!r}: the steps must be numbers (e.g. 200-800)"
        if not (0 <= lo < hi < float("inf")):
            return None, f"{text!r}: the first step must be below the second, both 0 or more"
        if lo >= self.last_step > 0:
            return None, f"{text!r}: the run has {self.last_step:,} steps so far; start below that"
        return (lo, min(hi, float(self.last_step)) if self.last_step > 0 else hi), ""


class HelpScreen(ModalScreen[None]):
    """Every key of the app that opened it, with what it does, by section."""

    BINDINGS = [Binding("escape,q,question_mark", "dismiss(None)", "close")]

    def __init__(self, rows: list[str]):
        super().__init__()
        self.rows = rows

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog", classes="wide"):
            yield Literal("traintop keys\n\n" + "\n".join(self.rows) + "\nctrl+p finds any of them by what it "
                          "does; ctrl+q quits as q does. Esc closes this help; a keymap file rebinds any key by "
                          "its id, in [brackets] (see the README).")
