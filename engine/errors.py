"""The one error type for mistakes a user can make: bad config, data, paths or commands."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem the user caused and can fix; printed without a traceback, exit code 2."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' when a close choice exists (letter case aside), else ''."""
    choices = [str(c) for c in choices]
    same = [c for c in choices if c.lower() == str(word).lower()]
    close = same or difflib.get_close_matches(str(word).lower(), [c.lower() for c in choices], n=1, cutoff=0.6)
    close = [next(c for c in choices if c.lower() == close[0].lower())] if close else []
    return f' (did you mean "{close[0]}"?)' if close else ""


class StopRequested(KeyboardInterrupt):
    """traintop's stop, raised in a loop that never read `should_stop`, as Ctrl-C would end it."""

    def __init__(self):
        super().__init__("traintop: the run was asked to stop")


class DiskFull(Exception):
    """A run's file could not be written for want of space (or over a size limit or quota).

    Not a UserError: the run ends `failed` (exit 1) and can be resumed once space is freed.
    `folder` is the run folder whose disk is full; `errno` is ENOSPC, EDQUOT or EFBIG.
    """

    def __init__(self, message: str, folder=None, errno: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.errno = errno


class NonFiniteLoss(Exception):
    """The loss or gradient (or, found at a save, the weights) became NaN or infinite at `step`."""

    def __init__(self, step: int, what: str = "loss or gradient"):
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step
        self.what = what
