"""The inference view: try the model on held-out samples or a typed input, while it trains.

Every answer comes from the engine (a `predict` command, answered between steps), or, for a run
no engine serves any more, from its saved checkpoints; this view never runs the model itself.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Input, Select

from traintop.engine import commands as cmd

from .literal import Literal, LiteralLabel, LiteralText, shown
from .terminal import terminal_safe

TOP_CLASSES = 5
BAR = 24  # width of a probability bar
REFRESH_SECONDS = 1.0  # with "current" weights, a shown answer follows training this often
IMAGE_COLUMNS = 24  # a small image is scaled up to about this many characters wide


# -- drawing, no widgets ---------------------------------------------------------------------------

def image_pixels(sample: dict[str, Any], data: dict[str, Any]) -> list[list[float]] | None:
    """A held-out sample's picture as rows of grey levels from 0 to 1, or None if it is no image.

    Image runs send `pixels` (rows of 0..255); a table whose features are an image's pixels
    (`image_shape` in the run's data, as for digits) is drawn from its feature values.
    """
    if isinstance(sample.get("pixels"), list):
        rows = sample["pixels"]
        return [[float(v) / 255.0 for v in row] for row in rows]
    shape = data.get("image_shape")
    features = data.get("features") or []
    if not shape or len(shape) != 2 or shape[0] * shape[1] != len(features):
        return None
    values = [sample.get(f) for f in features]
    if any(not isinstance(v, (int, float)) for v in values):
        return None
    top = max(max(values), 1e-12)
    h, w = shape
    return [[values[r * w + c] / top for c in range(w)] for r in range(h)]


def draw_image(pixels: list[list[float]], no_color: bool = False) -> Text:
    """Grey levels as half-block characters (two pixel rows per line), scaled up to be legible."""
    h, w = len(pixels), len(pixels[0]) if pixels else 0
    scale = max(1, IMAGE_COLUMNS // max(w, 1))
    big = [[pixels[r // scale][c // scale] for c in range(w * scale)] for r in range(h * scale)]
    if len(big) % 2:
        big.append([0.0] * (w * scale))
    text = Text()
    shades = " ░▒▓█"
    for r in range(0, len(big), 2):
        for top, bottom in zip(big[r], big[r + 1]):
            if no_color:
                text.append(shades[min(4, int((top + bottom) / 2 * 4.999))])
            else:
                fg, bg = _grey(top), _grey(bottom)
                text.append("▀", style=f"{fg} on {bg}")
        text.append("\n")
    return text


def _grey(level: float) -> str:
    v = max(0, min(255, int(round(level * 255))))
    return f"rgb({v},{v},{v})"


def record_table(record: dict[str, Any], limit: int = 40) -> Text:
    """A raw record as `feature  value` lines, as the user's file had it."""
    text = LiteralText()
    names = [terminal_safe(str(k)) for k in record]  # escaped before measuring, so columns line up
    width = min(22, max(map(len, names), default=0))
    for i, (name, v) in enumerate(zip(names, record.values())):
        if i == limit:
            text.append(f"… {len(record) - limit} more features\n", style="dim")
            break
        value = "(missing)" if v is None else (f"{v:.6g}" if isinstance(v, float) else terminal_safe(str(v)))
        text.append(f"{name[:width]:<{width}}  ", style="bold")
        text.append(value[:60] + "\n", style="dim" if v is None else "")
    return text


def answer_text(answer: dict[str, Any], no_color: bool = False) -> Text:
    """The model's answer: the true and predicted label (right or wrong), and the top classes."""
    text = LiteralText()
    true = answer.get("true")
    if "probabilities" in answer:
        label = answer["label"]
        if "true" in answer:
            text.append("true       ", style="bold").append(f"{true}\n")
        text.append("predicted  ", style="bold").append(f"{label}")
        if "true" in answer:
            right = str(label) == str(true)
            text.append("  ✓ right" if right else "  ✗ wrong",
                        style="" if no_color else ("bold green" if right else "bold red"))
        text.append("\n\n")
        ranked = sorted(answer["probabilities"].items(), key=lambda kv: -kv[1])[:TOP_CLASSES]
        name_width = min(14, max(len(terminal_safe(str(c))) for c, _ in ranked))
        for c, p in ranked:
            filled = p * BAR
            bar = "█" * int(filled) + (" ▏▎▍▌▋▊▉"[int((filled % 1) * 8)] if filled < BAR else "")
            style = "" if no_color else ("green" if str(c) == str(true) else "cyan")
            name = terminal_safe(str(c))[:name_width]
            text.append(f"{name:>{name_width}} ").append(f"{bar:<{BAR}}", style=style)
            text.append(f" {p * 100:5.1f}%\n")
    else:
        value = answer["value"]
        text.append("predicted  ", style="bold").append(f"{value:.6g}\n")
        if true is not None:
            text.append("true       ", style="bold").append(f"{true:.6g}\n")
            text.append("error      ", style="bold").append(f"{value - true:+.4g}\n")
    return text


def summary_text(outputs: list[dict[str, Any]], classes: list[str]) -> Text:
    """The whole validation split at once: accuracy and where the mistakes go, or MAE and RMSE."""
    text = LiteralText()
    if not outputs:
        return text.append("no validation samples")
    if "probabilities" not in outputs[0]:
        errors = [o["value"] - o["true"] for o in outputs if o.get("true") is not None]
        mae = sum(abs(e) for e in errors) / len(errors)
        rmse = math.sqrt(sum(e * e for e in errors) / len(errors))
        return text.append(f"validation split, {len(errors)} samples\nMAE   {mae:.4g}\nRMSE  {rmse:.4g}\n")
    right = sum(str(o["label"]) == str(o["true"]) for o in outputs)
    text.append(f"validation split: {right} of {len(outputs)} right ({right / len(outputs):.1%})\n\n",
                style="bold")
    confusions: dict[tuple[str, str], int] = {}
    for o in outputs:
        if str(o["label"]) != str(o["true"]):
            key = (str(o["true"]), str(o["label"]))
            confusions[key] = confusions.get(key, 0) + 1
    if len(classes) <= 10:
        names = {c: terminal_safe(c) for c in classes}  # escaped before measuring, so columns line up
        width = max(3, max(map(len, names.values())))
        counts = {(str(o["true"]), str(o["label"])): 0 for o in outputs}
        for o in outputs:
            counts[(str(o["true"]), str(o["label"]))] += 1
        text.append(f"{'true↓ pred→':>{width + 1}}" + "".join(f"{names[c][:width]:>{width + 1}}" for c in classes)
                    + "\n", style="dim")
        for t in classes:
            text.append(f"{names[t][:width]:>{width + 1}}", style="bold")
            for p in classes:
                n = counts.get((t, p), 0)
                text.append(f"{n or '·':>{width + 1}}", style="green" if t == p and n else ("red" if n else "dim"))
            text.append("\n")
    elif confusions:
        text.append("most confused (true → predicted):\n")
        for (t, p), n in sorted(confusions.items(), key=lambda kv: -kv[1])[:8]:
            text.append(f"  {t} → {p}: {n}\n")
    return text


async def _send(source, command: cmd.Predict) -> cmd.Reply:
    try:
        return await source.send(command)
    except (asyncio.TimeoutError, TimeoutError):
        return cmd.Reply(False, "the model did not answer within a minute; try again")


# -- the view --------------------------------------------------------------------------------------

class InferenceView(Vertical, can_focus=True):
    """Browse validation samples or type an input; the answer says which weights and step gave it."""

    BINDINGS = [
        Binding("n,right", "browse(1)", "next sample", tooltip="The next validation sample"),
        Binding("p,left", "browse(-1)", "previous sample", tooltip="The previous validation sample"),
        Binding("r", "random_sample", "random sample", tooltip="A random validation sample"),
        Binding("w", "toggle_weights", "current/best", tooltip="Answer with the current or the best weights"),
        Binding("a", "whole_split", "all val", tooltip="Predict the whole validation split: accuracy and confusions"),
        Binding("t", "toggle_typed", "type input", tooltip="Type an input of your own instead of a sample"),
        Binding("escape", "back_to_samples", "samples", show=False, tooltip="Leave the typed input"),
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
        self.form_built = False
        self.message = ""
        self.finished_source = None  # answers from saved checkpoints once a live run has ended

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
                yield Vertical(id="inf-form")
            with VerticalScroll(id="inf-right"):
                yield Literal(id="inf-answer")

    def on_mount(self) -> None:
        self.query_one("#inf-form").display = False
        self.set_interval(REFRESH_SECONDS, self.follow_training)
        self.show_status()

    # -- what the run is ---------------------------------------------------------------------------

    @property
    def data(self) -> dict[str, Any]:
        return self.app.state.data or {}

    @property
    def n_val(self) -> int:
        return int(self.data.get("n_val", 0))

    def preprocess(self) -> dict[str, Any]:
        folder = getattr(self.app.source, "folder", None)
        try:
            return json.loads(folder.preprocess.read_text()) if folder is not None else {}
        except (OSError, ValueError):
            return {}

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
        self.query_one("#inf-weights", Button).label = f"weights: {self.weights}"
        if self.typed:
            self.submit_form()
        elif self.sample is not None:
            self.ask_sample()
        self.show_status()

    def action_whole_split(self) -> None:
        """Every validation sample, asked for in pages of at most MAX_PREDICT_INPUTS; one table."""
        if not self.ready():
            return
        source = self.answering_source()
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
        if not self.data:
            self.say("the run has not started yet")
            return
        self.typed = True
        self.build_form()
        self.query_one("#inf-answer", Literal).update(
            Text("Fill in the fields, then Enter.\nA blank field counts as missing and is filled as in training.",
                 style="dim"))
        self.query_one("#inf-input").display = False
        self.query_one("#inf-form").display = True
        first = self.query("#inf-form Input, #inf-form Select")
        if first:
            first.first().focus()
        self.show_status()

    def action_back_to_samples(self) -> None:
        if self.typed:
            self.action_toggle_typed()

    def leave_typed(self) -> None:
        if self.typed:
            self.typed = False
            self.query_one("#inf-input").display = True
            self.query_one("#inf-form").display = False
            self.focus()

    def ready(self) -> bool:
        if self.n_val == 0:
            self.say("no validation samples yet: the run has not started" if not self.data
                     else "this run has no validation split")
            return False
        return True

    # -- typed input ---------------------------------------------------------------------------------

    def build_form(self) -> None:
        if self.form_built:
            return
        form = self.query_one("#inf-form", Vertical)
        pre = self.preprocess()
        widgets: list = []
        if pre.get("kind") == "image":
            widgets += [LiteralLabel("image file"), Input(placeholder="path to an image file", name="path")]
        elif pre.get("kind") == "tensor":
            shape = pre.get("input_shape") or []
            widgets += [LiteralLabel(f"input: a JSON list of shape {shape}"), Input(placeholder="[0.5, 1.0, ...]", name="input")]
        else:
            columns = pre["columns"] if "columns" in pre else [{"name": f, "kind": "numeric"}
                                                                for f in self.data.get("features", [])]
            for column in columns:
                name, kind = column["name"], column.get("kind", "numeric")
                widgets.append(LiteralLabel(name, classes="field-label"))
                if kind == "categorical":
                    options = [(shown(c), c) for c in column.get("categories", [])]
                    widgets.append(Select(options, prompt="(missing)", name=name, compact=True))
                elif kind == "numeric":
                    hint = column.get("fill")
                    widgets.append(Input(placeholder=f"number (blank: {hint:.4g})" if isinstance(hint, (int, float))
                                         else "number", name=name, compact=True))
                else:
                    widgets.append(Input(placeholder="text", name=name, compact=True))
            if pre.get("text"):
                widgets += [LiteralLabel(pre["text"], classes="field-label"),
                            Input(placeholder="free text", name=pre["text"], compact=True)]
        widgets += [Button("predict", id="inf-predict", compact=True, variant="primary"),
                    LiteralLabel("", id="inf-form-error")]
        form.mount_all(widgets)
        self.form_built = True

    @on(Input.Submitted, "#inf-form Input")
    def field_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit_form()

    @on(Button.Pressed, "#inf-predict")
    def predict_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.submit_form()

    def form_record(self) -> tuple[dict[str, Any], str]:
        """The typed record, and what is wrong with it ("" when nothing)."""
        pre = self.preprocess()
        kinds = {c["name"]: c.get("kind", "numeric") for c in pre.get("columns", [])}
        if pre.get("text"):
            kinds[pre["text"]] = "text"
        record: dict[str, Any] = {}
        for widget in self.query("#inf-form Input, #inf-form Select"):
            name = widget.name
            if isinstance(widget, Select):
                record[name] = None if widget.is_blank() else widget.value
                continue
            value = widget.value.strip()
            if name == "path":
                if not value:
                    return record, "give the path of an image file"
                record["path"] = str(Path(value).expanduser().resolve())  # the engine's folder may differ
            elif name == "input":
                try:
                    record["input"] = json.loads(value)
                except ValueError:
                    return record, f"input: {value[:40]!r} is not a JSON list of numbers"
            elif kinds.get(name, "numeric") == "numeric":
                if not value:
                    record[name] = None
                    continue
                try:
                    number = float(value)
                except ValueError:
                    return record, f"{name}: {value!r} is not a number"
                if not math.isfinite(number):
                    return record, f"{name}: {value!r} is not a finite number"
                record[name] = number
            else:
                record[name] = value
        return record, ""

    def submit_form(self) -> None:
        record, problem = self.form_record()
        error = self.query_one("#inf-form-error", LiteralLabel)
        error.update(problem)
        if problem:
            return
        self.ask([record], kind="typed")

    # -- asking the engine ---------------------------------------------------------------------------

    def ask_sample(self) -> None:
        self.ask([{"split": "val", "index": self.index}], kind="sample")

    def ask(self, inputs: list[dict], kind: str, with_inputs: bool = True) -> None:
        source = self.answering_source()
        if source is None:
            self.say("not connected to the run yet")
            return
        self.pending = True
        self.say("asking the model…")
        command = cmd.Predict(request_id=f"view-{kind}", inputs=inputs, weights=self.weights,
                              with_inputs=with_inputs)
        self.run_worker(self._ask(source, command, kind), exclusive=True, group="inference")

    def answering_source(self):
        """Who answers: the engine while it runs; once it has finished, the run's saved checkpoints."""
        source = self.app.source
        if source is None or not getattr(source, "live", False):
            return source
        if self.app.state.final_status or getattr(source, "closed_reason", ""):
            if self.finished_source is None:
                from traintop.engine.client import FinishedRun

                self.finished_source = FinishedRun(source.folder)
            return self.finished_source
        return source

    async def on_unmount(self) -> None:
        if self.finished_source is not None:
            await self.finished_source.close()

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
                self.query_one("#inf-form-error", LiteralLabel).update(reply.message)
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
        """With current weights on a live run, keep the shown answer up to date as training goes on."""
        source = self.app.source
        if (self.pending or self.answer is None or self.weights != "current" or source is None
                or not getattr(source, "live", False) or not self.is_on_screen
                or self.app.state.step <= self.answered_step):
            return
        if self.typed:
            record, problem = self.form_record()
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
            shown = draw_image(pixels, no_color) if pixels else record_table(self.sample)
            head = Text(f"validation sample {self.index + 1} of {self.n_val}\n\n", style="bold")
            self.query_one("#inf-input", Literal).update(head + shown)
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
        if self.typed:
            parts.append("typed input: Enter predicts, Esc goes back to samples")
        else:
            parts.append("n p r: samples · w: weights · a: whole split · t: type")
        if self.message:
            parts.insert(0, self.message)
        self.query_one("#inf-status", Literal).update("  ·  ".join(parts))
