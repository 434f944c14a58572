"""Text from a run, shown in the dashboard exactly as it is.

Column names, class names, warnings, errors, configs and paths come from data and run folders. A
string given to a Textual widget is parsed as markup (a column named `[/]` raises, a config's
`[run]` header vanishes), and Rich passes ESC, C1 controls and bidi overrides through to the
terminal. Every widget of ours that shows text is one of the widgets here, or is handed its text
through `shown`, so data is never markup and never steers the terminal (tui/terminal.py).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Span, Text
from textual.app import App
from textual.widgets import Label, Static

from .terminal import UNSAFE, escape_char, terminal_safe


class LiteralText(Text):
    """A rich Text that escapes each string as it is added, before Rich would drop some of its
    control characters unseen: a bell in a class name shows as `\\x07`, not as nothing."""

    def __init__(self, text: str = "", *args, **kwargs):
        super().__init__(terminal_safe(text), *args, **kwargs)

    def append(self, text, style=None) -> Text:
        if isinstance(text, str):
            text = terminal_safe(text)
        return super().append(text, style)


def shown(content: Any) -> Text:
    """Anything bound for a widget, as a Text that is safe to show.

    A string is literal text, never markup. A Text our code built keeps its styles; characters
    that could steer the terminal are escaped in it all the same.
    """
    if not isinstance(content, Text):
        return Text(terminal_safe(str(content)))
    plain = content.plain
    if not UNSAFE.search(plain):
        return content
    where = []  # where each character of `plain` starts in the escaped text, and its end
    pieces = []
    length = 0
    for ch in plain:
        where.append(length)
        piece = escape_char(ch) if UNSAFE.match(ch) else ch
        pieces.append(piece)
        length += len(piece)
    where.append(length)
    escaped = content.blank_copy("".join(pieces))
    last = len(plain)
    escaped.spans = [Span(where[min(s.start, last)], where[min(s.end, last)], s.style) for s in content.spans]
    return escaped


class Literal(Static):
    """A Static whose content is always shown literally (see `shown`)."""

    def __init__(self, content: Any = "", **kwargs):
        super().__init__(shown(content), **kwargs)

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        super().update(shown(content), layout=layout)


class LiteralLabel(Label):
    """A Label whose content is always shown literally (see `shown`)."""

    def __init__(self, content: Any = "", **kwargs):
        super().__init__(shown(content), **kwargs)

    def update(self, content: Any = "", *, layout: bool = True) -> None:
        super().update(shown(content), layout=layout)


class LiteralApp(App):
    """An App whose toasts show their message literally, and whose crash report, printed after
    the screen is restored, is plain text through the CLI's guarded stderr."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Rich would colour the report with escape sequences, which the guarded stream would then
        # show as text; plain is what reads.
        self.error_console = Console(markup=False, highlight=False, stderr=True, force_terminal=False)

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """A toast; `message` and `title` are shown as they are, never as markup."""
        super().notify(terminal_safe(str(message)), title=terminal_safe(title), severity=severity,
                       timeout=timeout, markup=False)
