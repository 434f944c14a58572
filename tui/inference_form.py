"""The inference tab's typed input: one field per input the model takes (a table's columns, a text
column, an image path, a tensor as JSON), each with its own error line right under it, so a
refusal shows next to its field however many fields the form has."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from textual.containers import Vertical
from textual.widgets import Button, Input, Select

from .literal import LiteralLabel, shown


class TypedForm(Vertical):
    """Fields built from what a typed input holds (the run's fitted preprocessing, or its features)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.spec: dict[str, Any] = {}
        self.built = False

    def build(self, spec: dict[str, Any], data: dict[str, Any]) -> None:
        """Mount one field (and its error line) per input; once."""
        if self.built:
            return
        self.spec = spec
        widgets: list = []

        def field(label: str, widget) -> None:
            widgets.extend([LiteralLabel(label, classes="field-label"), widget,
                            LiteralLabel("", classes="field-error", name=widget.name)])

        if spec.get("kind") == "image":
            field("image file", Input(placeholder="path to an image file", name="path"))
        elif spec.get("kind") == "tensor":
            shape = spec.get("input_shape") or []
            field(f"input: a JSON list of shape {shape}", Input(placeholder="[0.5, 1.0, ...]", name="input"))
        else:
            columns = spec["columns"] if "columns" in spec else [{"name": f, "kind": "numeric"}
                                                                  for f in data.get("features", [])]
            for column in columns:
                name, kind = column["name"], column.get("kind", "numeric")
                if kind == "categorical":
                    options = [(shown(c), c) for c in column.get("categories", [])]
                    field(name, Select(options, prompt="(missing)", name=name, compact=True))
                elif kind == "numeric":
                    hint = column.get("fill")
                    field(name, Input(placeholder=f"number (blank: {hint:.4g})" if isinstance(hint, (int, float))
                                      else "number", name=name, compact=True))
                else:
                    field(name, Input(placeholder="text", name=name, compact=True))
            if spec.get("text"):
                field(spec["text"], Input(placeholder="free text", name=spec["text"], compact=True))
        widgets += [Button("predict", id="inf-predict", compact=True, variant="primary"),
                    LiteralLabel("", id="inf-form-error")]
        self.mount_all(widgets)
        for error in widgets:
            if isinstance(error, LiteralLabel) and error.has_class("field-error"):
                error.display = False
        self.built = True

    def fields(self):
        return self.query("Input, Select")

    def record(self) -> tuple[dict[str, Any], str, str]:
        """The typed record, what is wrong with it ("" when nothing), and the field that is wrong."""
        kinds = {c["name"]: c.get("kind", "numeric") for c in self.spec.get("columns", [])}
        if self.spec.get("text"):
            kinds[self.spec["text"]] = "text"
        record: dict[str, Any] = {}
        for widget in self.fields():
            name = widget.name
            if isinstance(widget, Select):
                record[name] = None if widget.is_blank() else widget.value
                continue
            value = widget.value.strip()
            if name == "path":
                if not value:
                    return record, "give the path of an image file", name
                record["path"] = str(Path(value).expanduser().resolve())  # the engine's folder may differ
            elif name == "input":
                try:
                    record["input"] = json.loads(value)
                except ValueError:
                    return record, f"input: {value[:40]!r} is not a JSON list of numbers", name
            elif kinds.get(name, "numeric") == "numeric":
                if not value:
                    record[name] = None
                    continue
                try:
                    number = float(value)
                except ValueError:
                    return record, f"{name}: {value!r} is not a number", name
                if not math.isfinite(number):
                    return record, f"{name}: {value!r} is not a finite number", name
                record[name] = number
            else:
                record[name] = value
        return record, "", ""

    def show_error(self, problem: str, name: str = "") -> None:
        """`problem` under the field `name` (scrolled into view, the field focused), or under the
        predict button for the whole input; "" clears them."""
        for error in self.query(".field-error"):
            here = bool(problem) and error.name == name
            error.update(problem if here else "")
            error.display = here
            if here:
                error.scroll_visible(animate=False)
                field = next((w for w in self.fields() if w.name == name), None)
                if field is not None:
                    field.focus()
        whole = self.query_one("#inf-form-error", LiteralLabel)
        whole.update(problem if problem and not name else "")
        if problem and not name:
            whole.scroll_visible(animate=False)
