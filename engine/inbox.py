"""Commands waiting for the loop's next step boundary, each with the future its sender awaits."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future

from .commands import Command, Reply


class Answer(Future):
    """A reply the loop will give: whoever waits for it may stop waiting (a client that goes, a task
    cancelled), but cannot cancel it, so the loop's answer never finds it cancelled."""

    def cancel(self) -> bool:
        return False


class CommandInbox:
    """Thread-safe queue of (command, future); closed once the run has finished."""

    def __init__(self):
        self._items: deque[tuple[Command, Future]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.closed_reason: str | None = None

    def __bool__(self) -> bool:  # checked at every step boundary: keep it cheap
        return bool(self._items)

    def submit(self, command: Command) -> Future:
        """Queue a command; the future gets the engine's Reply."""
        future: Future = Answer()
        with self._lock:
            if self.closed_reason is not None:
                future.set_result(Reply(False, self.closed_reason))
                return future
            self._items.append((command, future))
        self._wake.set()
        return future

    def take(self) -> list[tuple[Command, Future]]:
        """Every waiting command, oldest first."""
        with self._lock:
            items = list(self._items)
            self._items.clear()
            self._wake.clear()
        return items

    def wait(self, timeout: float) -> None:
        """Block until a command arrives or `timeout` seconds pass (used while paused)."""
        self._wake.wait(timeout)

    def close(self, reason: str) -> None:
        """Refuse every waiting and later command with `reason`."""
        with self._lock:
            self.closed_reason = reason
            items = list(self._items)
            self._items.clear()
        for _, future in items:
            future.set_result(Reply(False, reason))
