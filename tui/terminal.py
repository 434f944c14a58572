"""The one boundary between text and a terminal: characters that could steer the terminal are
escaped visibly before anything traintop prints reaches it.

A CSV column, a class name, a run folder or an error quoting a value can hold an escape sequence
(`ESC]0;title BEL` sets the window title, `ESC[2J` clears the screen), a C1 control, or a bidi
override that makes a line read differently from what it holds. `terminal_safe` shows each of them
as a Python-style escape (`\\x1b`, `\\x9b`, `\\u202e`), so the user sees that something was there and
the terminal never acts on it. The CLI routes sys.stdout and sys.stderr through it once, in
`guard_streams`; the dashboard applies it where data becomes widget content (tui/literal.py).

Kept free of Rich and Textual: every `traintop` command imports it before anything else.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any, TextIO

# C0 controls but tab and newline, DEL, C1 controls, lone surrogates (an undecodable byte in a file
# name: the terminal's encoder would fail on them), and the invisible or reordering format
# characters: bidi embeddings, overrides, isolates and marks, zero-width space, word joiner and
# invisible operators, line and paragraph separators, the byte order mark, interlinear
# annotations and tag characters. Joiners (U+200C, U+200D) stay: emoji and several scripts need them.
UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff"
    "\u061c\u180e\u200b\u200e\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb\U000e0001\U000e0020-\U000e007f]")

_NAMED = {"\r": "\\r"}  # a carriage return at the end of a CSV header, from Windows


def escape_char(ch: str) -> str:
    """One unsafe character as the escape a Python string literal would use for it."""
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def terminal_safe(text: str) -> str:
    """`text` with every character that could steer a terminal shown as a visible escape.

    Newlines and tabs are kept; everything else printable is unchanged, so text without such
    characters comes back as it was, and escaping twice changes nothing more.
    """
    if not UNSAFE.search(text):  # the common case: one scan, no copy
        return text
    return UNSAFE.sub(lambda m: escape_char(m.group()), text)


class SafeStream:
    """A text stream that passes everything written to it through `terminal_safe`.

    Everything else (fileno, isatty, flush, encoding...) is the wrapped stream's, so code that
    asks whether it writes to a terminal gets the true answer.
    """

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(terminal_safe(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class LineGate:
    """One output stream written by two: a script's own text and traintop's log lines beside it.

    The script writes through the gate (it is the script's `sys.stdout`) untouched; a line of
    traintop's, written through `beside()`, waits until the line the script is printing ends, so
    neither cuts into the other: a `print` of several values, or a line built up piece by piece,
    is several writes. A line the script leaves open (a progress bar redrawn with \\r, a prompt)
    holds traintop's lines at most `HOLD_SECONDS`; then they start on a line of their own.
    """

    HOLD_SECONDS = 0.2

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.lock = threading.Condition()  # reentrant: a signal handler may print inside a write
        self.open = False  # the script's last write did not end its line
        self.waiting: list[str] = []  # traintop's lines, written by the write that ends the line
        # A process forked while the control thread held the lock (a DataLoader worker) starts
        # with a lock of its own, and none of traintop's lines: they are the parent's to write.
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.lock = threading.Condition()
        self.waiting = []

    def write(self, text: str) -> int:
        with self.lock:
            written = self.stream.write(text)
            if text:
                self.open = not text.endswith("\n")
                if self.waiting and not self.open:  # on the script's thread: before its next line starts
                    try:
                        self._write_waiting()
                    except (OSError, ValueError):  # traintop's lines are lost, never the script's own
                        pass
        return written

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def put(self, lines: str) -> None:
        """Whole lines of traintop's, written and flushed once the script's line has ended."""
        with self.lock:
            self.waiting.append(lines)
            if not self.open:
                self._write_waiting()
            elif not self.lock.wait_for(lambda: not self.waiting, self.HOLD_SECONDS):
                self.waiting.insert(0, "\n")  # the script holds its line open: ours go below it
                self.open = False
                self._write_waiting()

    def _write_waiting(self) -> None:
        lines, self.waiting = "".join(self.waiting), []  # taken first: a failed write is not tried again
        self.lock.notify_all()
        self.stream.write(lines)
        self.stream.flush()

    def beside(self) -> "_Beside":
        """The stream traintop's log lines are written to."""
        return _Beside(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


class _Beside:
    def __init__(self, gate: LineGate):
        self.gate = gate

    def write(self, text: str) -> int:
        self.gate.put(text)
        return len(text)

    def flush(self) -> None:  # every put is flushed
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.gate.stream, name)


def guard_streams() -> None:
    """Route sys.stdout and sys.stderr through `terminal_safe`, once per process.

    Textual draws the dashboard on sys.__stderr__, which stays as it is: its own escape sequences
    must reach the terminal. Text a terminal cannot encode is written as an escape, not raised.
    """
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None or isinstance(stream, SafeStream):
            continue
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper, or already in use
            pass
        setattr(sys, name, SafeStream(stream))
