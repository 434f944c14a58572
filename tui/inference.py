"""The inference tab: try the model on held-out samples or a typed input, while it trains.

Every answer comes from the run's RunSource (a `predict` command the engine answers between
steps, or, for a run no engine serves any more, its saved checkpoints); this view never runs the
model itself. It opens on the first validation sample.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input

from traintop.engine import commands as cmd

from .inference_draw import answer_text, draw_image, image_pixels, record_table, summary_text
from .inference_form import TypedForm
from .keys import key_text
from .literal import Literal

REFRESH_SECONDS = 1.0  # with "current" weights, a shown answer follows training this often
BUTTONS = {"inf-prev": ("sample_previous", "◀ prev"), "inf-next": ("sample_next", "next ▶"),
           "inf-random": ("sample_random", "random"), "inf-weights": ("weights", "weights"),
           "inf-all": ("whole_split", "all val"), "inf-typed": ("typed_input", "type input")}


async def _send(source, command: cmd.Predict) -> cmd.Reply:
    try:
        return await source.send(command)
    except (asyncio.TimeoutError, TimeoutError):
        return cmd.Reply(False, "the model did not answer within a minute; try again")


class InferenceView(Vertical, can_focus=True):
    """Browse validation samples or type an input; the answer says which weights and step gave it."""

    BINDINGS = [
        Binding("n,right", "browse(1)", "next", tooltip="Inference: the next validation sample", id="sample_next",
                show=False),
        Binding("p,left", "browse(-1)", "prev", tooltip="Inference: the previous validation sample",
                id="sample_previous", show=False),
        Binding("r", "random_sample", "random", tooltip="Inference: a random validation sample", id="sample_random",
                show=False),
        Binding("w", "toggle_weights", "current/best", tooltip="Inference: answer with the current or the best "
                "weights", id="weights", show=False),
        Binding("a", "whole_split", "all val", tooltip="Inference: predict the whole validation split "
                "(accuracy and confusions)", id="whole_split", show=False),
        Binding("t", "toggle_typed", "type input", tooltip="Inference: type an input of your own instead of a "
                "sample", id="typed_input", show=False),
        Binding("escape", "back_to_samples", "samples", tooltip="Inference: leave the typed input (Esc)",
                id="back_to_samples", show=False),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.index = 0
        self.weights = "current"
        self.typed = False
        self.answer: dict[str, Any] | None = None
        self.answered_step = -1
        self.sample: dict[str, Any] | None = None
        self.tally: dict[int, bool] = {}  # browsed validation index -> answered right
        self.pending = False
        self.message = ""

    def compose(self) -> ComposeResult:
        with Horizontal(id="inf-bar"):
            yield Button("◀ prev", id="inf-prev", compact=True)
            yield Button("next ▶", id="inf-next", compact=True)
            yield Button("random", id="inf-random", compact=True)
            yield Button("weights: current", id="inf-weights", compact=True)
            yield Button("all val", id="inf-all", compact=True)
            yield Button("type input", id="inf-typed", compact=True)
        yield Literal(id="inf-status")
        with Horizontal(id="inf-body"):
            with VerticalScroll(id="inf-left"):
                yield Literal(id="inf-input")
                yield TypedForm(id="inf-form")
            with VerticalScroll(id="inf-right"):
                yield Literal(id="inf-answer")

    def on_mount(self) -> None:
        for button in self.query("#inf-bar Button"):  # its key on it: the footer has the run's keys
            button.label = self.button_label(button.id)
        self.query_one("#inf-form").display = False
        self.set_interval(REFRESH_SECONDS, self.follow_training)
        self.show_status()

    def button_label(self, button_id: str) -> str:
        """A button's text after its key as the user has it mapped: `n next ▶`, `w weights: best`."""
        binding_id, text = BUTTONS[button_id]
        if button_id == "inf-weights":
            text = f"weights: {self.weights}"
        binding = next(b for b in self.BINDINGS if b.id == binding_id)
        return f"{key_text(self.app, binding).split(',')[0]} {text}"

    # -- what the run is ---------------------------------------------------------------------------

    @property
    def data(self) -> dict[str, Any]:
        return self.app.state.data or {}

    @property
    def n_val(self) -> int:
        return int(self.data.get("n_val", 0))

    @property
    def form(self) -> TypedForm:
        return self.query_one(TypedForm)

    def shown(self) -> None:
        """The tab has come into view: open on the first validation sample, or say why there is none,
        never on an empty page."""
        if self.answer is None and self.sample is None and not self.pending and not self.typed:
            if self.ready():  # or it says why there is nothing to browse
                self.ask_sample()

    # -- keys and buttons ----------------------------------------------------------------------------

    @on(Button.Pressed, "#inf-bar Button")
    def pressed(self, event: Button.Pressed) -> None:
        event.stop()
        {"inf-prev": lambda: self.action_browse(-1), "inf-next": lambda: self.action_browse(1),
         "inf-random": self.action_random_sample, "inf-weights": self.action_toggle_weights,
         "inf-all": self.action_whole_split, "inf-typed": self.action_toggle_typed}[event.button.id]()

    def action_browse(self, delta: int) -> None:
        if not self.ready():
            return
        if self.sample is not None or self.typed:
            self.index = (self.index + delta) % self.n_val
        self.leave_typed()
        self.ask_sample()

    def action_random_sample(self) -> None:
        if not self.ready():
            return
        self.index = random.randrange(self.n_val)
        self.leave_typed()
        self.ask_sample()

    def action_toggle_weights(self) -> None:
        self.weights = "best" if self.weights == "current" else "current"
        self.query_one("#inf-weights", Button).label = self.button_label("inf-weights")
        if self.typed:
            self.submit_form()
        elif self.sample is not None:
            self.ask_sample()
        self.show_status()

    def action_whole_split(self) -> None:
        """Every validation sample, asked for in pages of at most MAX_PREDICT_INPUTS; one table."""
        if not self.ready():
            return
        source = self.app.source
        if source is None:
            self.say("not connected to the run yet")
            return
        self.pending = True
        self.say("asking the model…")
        self.run_worker(self._ask_split(source, self.n_val, self.weights), exclusive=True, group="inference")

    def action_toggle_typed(self) -> None:
        if self.typed:
            self.leave_typed()
            self.show_sample()
            return
        if not self.data or self.app.source is None:
            self.say("the run has not started yet")
            return
        self.typed = True
        self.run_worker(self._open_form(), group="form")

    async def _open_form(self) -> None:
        if not self.form.built:
            self.form.build(await self.app.source.input_spec(), self.data)
            await asyncio.sleep(0)  # let the fields mount before one is focused
        if not self.typed:
            return
        self.query_one("#inf-answer", Literal).update(
            Text("Fill in the fields, then Enter.\nA blank field counts as missing and is filled as in training.\n"
                 "Esc goes back to the samples.", style="dim"))
        self.query_one("#inf-input").display = False
        self.form.display = True
        fields = self.form.fields()
        if fields:
            fields.first().focus()
        self.show_status()

    def action_back_to_samples(self) -> None:
        if self.typed:
            self.action_toggle_typed()

    def leave_typed(self) -> None:
        if self.typed:
            self.typed = False
            self.query_one("#inf-input").display = True
            self.form.display = False
            self.focus()

    def ready(self) -> bool:
        if self.n_val == 0:
            state = self.app.state
            if state.source != "config" and state.run_id:  # a loop of the user's own: its samples are its to give
                self.say("this loop gave no samples to browse: register them with run.samples(dataset) (and "
                         "run.on_predict(fn) for the answers) before its first step; see the README")
            else:
                self.say("no validation samples yet: the run has not started" if not self.data
                         else "this run has no validation split")
            return False
        return True

    # -- typed input ---------------------------------------------------------------------------------

    @on(Input.Submitted, "#inf-form Input")
    def field_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit_form()

    @on(Button.Pressed, "#inf-predict")
    def predict_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.submit_form()

    def submit_form(self) -> None:
        record, problem, field = self.form.record()
        self.form.show_error(problem, field)
        if problem:
            self.say(problem)
            return
        self.ask([record], kind="typed")

    # -- asking the engine ---------------------------------------------------------------------------

    def ask_sample(self) -> None:
        self.ask([{"split": "val", "index": self.index}], kind="sample")

    def ask(self, inputs: list[dict], kind: str, with_inputs: bool = True) -> None:
        source = self.app.source
        if source is None:
            self.say("not connected to the run yet")
            return
        self.pending = True
        self.say("asking the model…")
        command = cmd.Predict(request_id=f"view-{kind}", inputs=inputs, weights=self.weights,
                              with_inputs=with_inputs)
        self.run_worker(self._ask(source, command, kind), exclusive=True, group="inference")

    async def _ask_split(self, source, n: int, weights: str) -> None:
        page = cmd.MAX_PREDICT_INPUTS
        outputs: list[dict[str, Any]] = []
        steps: list[int] = []
        try:
            for first in range(0, n, page):
                if n > page:
                    self.say(f"asking the model… {first:,} of {n:,} samples")
                inputs = [{"split": "val", "index": i} for i in range(first, min(n, first + page))]
                reply = await _send(source, cmd.Predict(request_id="view-summary", inputs=inputs,
                                                        weights=weights, with_inputs=False))
                if not reply.ok:
                    self.say(reply.message)
                    return
                outputs += reply.data.get("outputs", [])
                step = reply.data.get("step")
                steps.append(step if isinstance(step, int) else self.app.state.step)
        finally:
            self.pending = False
        self.message = ""
        self.sample = None
        self.answer = None
        self.answered_step = max(steps)
        # with current weights on a live run, training goes on between pages: say over which steps
        at = f"step {steps[0]}" if min(steps) == max(steps) else f"steps {min(steps)}-{max(steps)}"
        pages = f", in {len(steps)} requests of up to {page:,}" if len(steps) > 1 else ""
        self.query_one("#inf-input", Literal).update(
            Text(f"whole validation split\n{weights} weights, {at}{pages}", style="dim"))
        self.query_one("#inf-answer", Literal).update(summary_text(outputs, self.data.get("classes", [])))
        self.show_status()

    async def _ask(self, source, command: cmd.Predict, kind: str) -> None:
        try:
            reply = await _send(source, command)
        finally:
            self.pending = False
        if not reply.ok:
            if kind == "typed":
                self.form.show_error(reply.message)
            self.say(reply.message)
            return
        self.message = ""
        outputs = reply.data.get("outputs", [])
        step = reply.data.get("step")
        self.answered_step = step if isinstance(step, int) else self.app.state.step
        answered_by = f"{reply.data.get('weights', self.weights)} weights, step {self.answered_step}"
        self.answer = outputs[0]
        self.answer["answered_by"] = answered_by
        if kind == "sample":
            self.sample = self.answer.get("input", {})
            if "true" in self.answer:
                self.tally[self.index] = self._right(self.answer)
        self.show_sample()

    def _right(self, answer: dict[str, Any]) -> bool:
        if "label" in answer:
            return str(answer["label"]) == str(answer["true"])
        true = answer.get("true")
        std = (self.data.get("target_std") or 1.0)
        return true is not None and abs(answer["value"] - true) <= 0.1 * std

    def follow_training(self) -> None:
        """With current weights on a live run, keep the shown answer up to date as training goes on;
        a tab opened before the run had started opens on its first sample once it has."""
        source = self.app.source
        if self.answer is None and self.answered_step < 0 and self.is_on_screen:
            self.shown()
        if (self.pending or self.answer is None or self.weights != "current" or source is None
                or not getattr(source, "live", False) or not self.is_on_screen
                or self.app.state.step <= self.answered_step):
            return
        if self.typed:
            record, problem, _ = self.form.record()
            if not problem:
                self.ask([record], kind="typed")
        elif self.sample is not None:
            self.ask_sample()

    @property
    def is_on_screen(self) -> bool:
        try:
            return self.app.main.query_one("#views").active == "inference"
        except Exception:  # noqa: BLE001 - no tabs: not shown
            return False

    # -- showing ---------------------------------------------------------------------------------------

    def show_sample(self) -> None:
        no_color = getattr(self.app, "no_color", False)
        if self.answer is None:
            return
        if self.sample is not None and not self.typed:
            pixels = image_pixels(self.sample, self.data)
            picture = draw_image(pixels, no_color) if pixels else record_table(self.sample)
            head = Text(f"validation sample {self.index + 1} of {self.n_val}\n\n", style="bold")
            self.query_one("#inf-input", Literal).update(head + picture)
        body = answer_text(self.answer, no_color)
        body.append(f"\n{self.answer.get('answered_by', '')}", style="dim")
        self.query_one("#inf-answer", Literal).update(body)
        self.show_status()

    def say(self, message: str) -> None:
        self.message = message
        self.show_status()

    def show_status(self) -> None:
        parts = [f"weights: {self.weights}"]
        if self.tally:
            parts.append(f"browsed: {sum(self.tally.values())} right of {len(self.tally)}")
        if self.typed:  # the buttons above carry the other keys
            parts.append("typed input: Enter predicts, Esc goes back to samples")
        if self.message:
            parts.insert(0, self.message)
        self.query_one("#inf-status", Literal).update("  ·  ".join(parts))
