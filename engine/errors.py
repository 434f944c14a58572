"""The one error type for mistakes a user can make: bad config, data, paths or commands."""

from __future__ import annotations

import difflib


class UserError(Exception):
    """A problem the user caused and can fix; printed without a traceback, exit code 2."""


def did_you_mean(word: str, choices) -> str:
    """' (did you mean "x"?)' when a close choice exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""
