"""The run screen's other tabs: the layers' gradient norms, the event log, the engine's output.

Each fills a Textual widget made after the first frame (DataTable and RichLog cost about a tenth
of the start-up), from the RunState or the engine's log file.
"""

from __future__ import annotations

import os
import re

from rich.table import Table
from rich.text import Text

from .format import fmt
from .literal import shown
from .panels import event_line, sparkline
from .state import RunState

OUTPUT_LINES = 5000  # lines of the engine's output kept in the Output view
OUTPUT_BYTES = 1 << 20  # of a long output, its last this many bytes are read at first
# Strings a terminal consumes without showing: a title (OSC, ended by BEL or ST), DCS, SOS, PM and
# APC. Rich reads colours and ST-ended OSC but would leave a BEL-ended title's text on the line.
UNSHOWN = re.compile(r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[PX^_].*?(?:\x1b\\|$)")
TREND = 40  # the trend column: the last this many samples of each layer's norm


class LayersView:
    """The Layers tab: each layer by what it is, its last gradient norm and its trend, the largest
    first; filled whenever it is shown, for a live run and a finished one alike."""

    COLUMNS = ("layer", "what", "params", "grad norm", f"trend (last {TREND})", "")

    def __init__(self, table):
        self.table = table
        self.shown_version = -1
        table.add_columns(*self.COLUMNS)

    def update(self, state: RunState) -> None:
        if state.version == self.shown_version:
            return
        self.shown_version = state.version
        rows = []
        for name, what, params, series in state.layer_rows():
            recent = series.y[-TREND:]
            last = float(recent[-1]) if len(recent) else float("nan")
            rows.append((last, name, what, params, recent))
        rows.sort(key=lambda r: -r[0] if r[0] == r[0] else 0)
        self.table.clear()
        for last, name, what, params, recent in rows:
            flag = Text("vanishing", style="yellow") if last < 1e-6 else (
                Text("exploding", style="red") if last > 1e3 else Text(""))
            self.table.add_row(shown(name), shown(what), "" if params is None else f"{params:,}", fmt(last),
                               sparkline(recent), flag)


class EventsView:
    """The Events tab: one line per event, as the Events filter (a word of the line) keeps them."""

    def __init__(self, log, filter_input):
        self.log = log
        self.filter = filter_input
        self.written = 0

    def update(self, state: RunState) -> None:
        pattern = self.filter.value.strip().lower()
        for i in range(self.written, len(state.log)):
            head, fields = event_line(state.log[i], state.log_marks.get(i))
            if not pattern or pattern in f"{head.plain} {fields.plain}".lower():
                row = Table.grid(padding=(0, 2), expand=True)  # the fields wrap under themselves, beside the head
                row.add_column(no_wrap=True)
                row.add_column(ratio=1)
                row.add_row(shown(head), shown(fields))
                self.log.write(row)
        self.written = len(state.log)

    def refilter(self, state: RunState) -> None:
        self.log.clear()
        self.written = 0
        self.update(state)


def as_terminal_shows(line: str) -> Text:
    """A line of a program's output as its terminal shows it: colours kept, a title and other
    strings a terminal consumes gone, and of a progress bar, what it drew after its last carriage
    return."""
    line = line.rsplit("\r", 1)[-1]
    if "\x1b" not in line:
        return Text(line)
    return Text.from_ansi(UNSHOWN.sub("", line))


class OutputView:
    """The Output tab: what the engine printed (a watched script's own output), as it grows."""

    def __init__(self, log, path: str | None):
        self.log = log
        self.path = path
        self.offset: int | None = None
        self.partial = ""
        self.noted = False  # saying why there is nothing to show

    def update(self) -> None:
        try:
            size = os.path.getsize(self.path) if self.path else None
        except OSError:
            size = None
        if size is None:
            if not self.noted:
                self.log.write(shown("no output kept for this run: a loop of your own that calls traintop.watch "
                                     "prints where it runs; `traintop run script.py` keeps a script's output "
                                     "here (engine.log in the run folder)"))
                self.noted = True
            return
        if self.noted:
            self.log.clear()
            self.noted = False
        if size == self.offset:
            return
        offset = self.offset
        if offset is None or size < offset:
            offset = max(0, size - OUTPUT_BYTES)  # a long log: its end is what matters
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(size - offset)
        self.offset = offset + len(data)
        *lines, self.partial = (self.partial + data.decode(errors="replace")).split("\n")
        for line in lines:
            self.log.write(shown(as_terminal_shows(line)))
