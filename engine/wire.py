"""The lines of the control socket, both ways: JSON objects, one per line.

One place turns whatever bytes a client sends into a command or a refusal, and one place writes
a reply, so nothing a peer sends can end a reader: a line too long, not UTF-8, not JSON, nested
too deeply or holding a number no float can hold gets a refusal, and the next line is read as
usual. Torch-free: the engine, the dashboard, `traintop ctl` and the prediction process share it.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from . import commands as cmd
from .errors import UserError

LINE_LIMIT = 64 << 20  # the longest line a reader takes whole; longer ones are skipped
REPLY_LIMIT = 32 << 20  # the longest reply the engine sends: well under any reader's LINE_LIMIT
MESSAGE_LIMIT = 2000  # characters of a reply's message (a refusal may quote what it refuses)
HEAD = 256  # bytes of a skipped line kept to say what it was
ID_LIMIT = cmd.ID_LIMIT  # characters of a string request id echoed back


@dataclass(frozen=True)
class Overlong:
    """A line longer than the reader's limit, skipped whole: its size and its first bytes."""

    size: int
    head: bytes

    def describe(self) -> str:
        """What the line was, for a note: "a 74.0 MB prediction event"."""
        kind = re.match(rb'\{"(event|reply)":\s*"?([A-Za-z0-9_]*)', self.head)
        what = "line"
        if kind and kind.group(1) == b"event":
            what = f"{kind.group(2).decode()} event"
        elif kind:
            what = "reply"
        return f"a {self.size / 1e6:.1f} MB {what}"

    def reply_id(self) -> Any:
        """The request id a skipped reply answers, read from its first bytes (None if none)."""
        m = re.match(rb'\{"reply":\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")', self.head)
        return json.loads(m.group(1)) if m else None


async def read_line(reader: asyncio.StreamReader) -> bytes | Overlong:
    """The next line with its newline, b"" at the end of the stream, or Overlong for a line
    longer than the reader's limit, which is consumed to its end so the next line reads whole.

    A last line without a newline is returned as it is.
    """
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as e:
        return e.partial
    except asyncio.LimitOverrunError as e:
        first = await reader.read(e.consumed)
    size, head = len(first), first[:HEAD]
    del first
    while True:
        try:
            return Overlong(size + len(await reader.readuntil(b"\n")), head)
        except asyncio.IncompleteReadError as e:
            return Overlong(size + len(e.partial), head)
        except asyncio.LimitOverrunError as e:
            size += len(await reader.read(e.consumed))


def request_id_of(value: Any) -> Any:
    """The id a reply echoes: a string or an integer as sent; anything else (an object, a
    number no client could match) is answered with null."""
    if isinstance(value, str) and len(value) <= ID_LIMIT:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 63:
        return value
    return None


def read_command(line: bytes | str) -> tuple[Any, cmd.Command | cmd.Reply]:
    """A command line as (its request id, the command), or (its request id, a refusal).

    Never raises: every line, whatever its bytes, gets an answer.
    """
    request_id = None
    try:
        text = line.decode("utf-8") if isinstance(line, (bytes, bytearray)) else line
        obj = json.loads(text)
        if isinstance(obj, dict):
            request_id = request_id_of(obj.get("id"))
        return request_id, cmd.Command.from_json(obj)
    except UserError as e:
        message = str(e)
    except UnicodeDecodeError as e:
        message = f"a command line must be UTF-8 text: {e}"
    except RecursionError:
        message = "not a command: JSON nested too deeply"
    except OverflowError as e:
        message = f"a number in the command is out of range: {e}"
    except ValueError as e:  # bad JSON, or an integer with more digits than Python converts
        message = f"not a JSON command line: {e}"
    except Exception as e:  # noqa: BLE001 - a client's line must never end the reader
        message = f"not a command: {type(e).__name__}: {e}"
    return request_id, cmd.Reply(False, message)


def refuse_overlong(line: Overlong, limit: int) -> tuple[Any, cmd.Reply]:
    """The refusal for a command line longer than the reader takes, with its request id when it
    comes before the long part."""
    m = re.search(rb'"id":\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")', line.head)
    request_id = request_id_of(json.loads(m.group(1))) if m else None
    return request_id, cmd.Reply(False, f"a command line of {line.size / 1e6:.1f} MB is longer than the "
                                        f"{limit / (1 << 20):.0f} MB allowed; send fewer inputs per request "
                                        f"(at most {cmd.MAX_PREDICT_INPUTS:,} per predict)")


def reply_line(request_id: Any, reply: cmd.Reply, limit: int = REPLY_LIMIT) -> bytes:
    """The reply as one line: {"reply": id, "ok", "message", "data"}; an answer too big to send
    (or one JSON cannot hold) becomes a refusal that says why."""
    if len(reply.message) > MESSAGE_LIMIT:
        reply = replace(reply, message=reply.message[:MESSAGE_LIMIT] + "…")
    obj = reply.to_json(request_id)
    try:
        line = json.dumps(obj, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as e:
        return reply_line(request_id, cmd.Reply(False, f"the engine could not write its answer: {e}"), limit)
    if len(line) > limit:
        return reply_line(request_id, cmd.Reply(
            False, f"the answer is {len(line) / 1e6:.1f} MB, more than the {limit / (1 << 20):.0f} MB one "
                   "reply may carry; ask for fewer inputs (or for answers only: with_inputs false)"), limit)
    return line + b"\n"
