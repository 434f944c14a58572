"""The client side of a run, torch-free: a live run over its control socket, or a finished one
read from its events.jsonl, behind one declared interface (RunSource).

    source = await open_run(folder)      # LiveRun or FinishedRun: both a RunSource
    async for event in source.events():  # history, then live events until run_finished
        ...
    reply = await source.send(Pause())   # a finished run refuses, saying why
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import json
import sys
from typing import Any, AsyncIterator

from . import commands as cmd
from . import events as ev
from . import wire
from .errors import UserError
from .runstore import RunFolder, read_events, socket_address, socket_is_live

LINE_LIMIT = wire.LINE_LIMIT  # a steps batch is one line; allow big ones, skip longer ones


class HistoryEnd:
    """Where the history ends and live events begin, for a reader that asks to see it."""

    def __repr__(self) -> str:
        return "HISTORY_END"


HISTORY_END = HistoryEnd()


class RunSource(abc.ABC):
    """What a dashboard talks to, whether the run trains now or finished long ago: its events (all
    the dashboard knows of it comes from them), commands to it, and what a typed input holds.

    `live`: an engine serves it (commands can steer it); `closed_reason`: why a live stream ended
    early ("" when it did not); `torn`: its log's last line was torn; `notes`: lines of the stream
    this client could not read, and why.
    """

    live: bool = False
    closed_reason: str = ""
    torn: bool = False

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self.notes: list[str] = []

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @abc.abstractmethod
    def events(self, history_end: bool = False) -> AsyncIterator[ev.Event | HistoryEnd]:
        """The run's history, then (from a live run) its events as they come, until run_finished."""

    @abc.abstractmethod
    async def send(self, command: cmd.Command, timeout: float = 60) -> cmd.Reply:
        """The engine's reply to `command` (a run that is not live answers predictions from its
        saved checkpoints and refuses the rest, saying why)."""

    async def input_spec(self) -> dict[str, Any]:
        """What a typed input holds: the fitted preprocessing of the run's data (its columns, their
        kinds, categories and fill values), or {} before the run has written it."""
        try:
            spec = json.loads(self.folder.preprocess.read_text())
        except (OSError, ValueError):
            return {}
        return spec if isinstance(spec, dict) else {}

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave; a live run goes on."""


class CheckpointPredictions:
    """Predictions from a run's saved checkpoints, in a process of its own (this one never imports
    torch), started on first use."""

    def __init__(self, folder: RunFolder, trust: bool = False):
        self.folder = folder
        self.trust = trust
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)

    async def predict(self, command: cmd.Predict, timeout: float) -> cmd.Reply:
        async with self._lock:
            proc = self._proc
            try:
                if proc is None or proc.returncode is not None:
                    proc = self._proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "traintop.engine.predictor", str(self.folder.path),
                        *(["--trust"] if self.trust else []),
                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE, limit=LINE_LIMIT)
                request_id = next(self._ids)
                proc.stdin.write(json.dumps({**command.to_json(), "id": request_id}).encode() + b"\n")
                await proc.stdin.drain()
                # An earlier request that was given up on may still have its reply on the way: skip it.
                while line := await asyncio.wait_for(wire.read_line(proc.stdout), timeout):
                    if isinstance(line, wire.Overlong):
                        if line.reply_id() == request_id:
                            return cmd.Reply(False, f"the answer was {line.size / 1e6:.1f} MB, longer than the "
                                                    f"{LINE_LIMIT / (1 << 20):.0f} MB a client reads; "
                                                    "ask for fewer inputs")
                        continue
                    try:
                        obj = json.loads(line)
                    except (ValueError, RecursionError):
                        continue
                    if isinstance(obj, dict) and obj.get("reply") == request_id:
                        return cmd.Reply.from_json(obj)
            except asyncio.TimeoutError:  # still working: its late reply is skipped by the next request
                return cmd.Reply(False, f"no prediction within {timeout:g} s")
            except ConnectionError:
                pass  # it has exited: say why, below
            err = (await proc.stderr.read()).decode(errors="replace").strip().splitlines()
            await proc.wait()  # the next request starts a new one
            return cmd.Reply(False, err[-1] if err else "the prediction process ended")

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()


class LiveRun(RunSource):
    """A run training in another process, reached through its control socket. Once the engine has
    gone, predictions come from the run's saved checkpoints."""

    live = True

    def __init__(self, folder: RunFolder, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 parse_events: bool = True):
        super().__init__(folder)
        self.reader = reader
        self.writer = writer
        self.parse_events = parse_events
        self.closed_reason = ""  # why the stream ended early: the engine went away, or dropped us
        self._saved: CheckpointPredictions | None = None
        self._queue: asyncio.Queue = asyncio.Queue()
        self._replies: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, folder: RunFolder, parse_events: bool = True) -> LiveRun:
        """Connect to a live run; UserError when it is not live."""
        try:
            with socket_address(folder.socket) as address:
                reader, writer = await asyncio.open_unix_connection(address, limit=LINE_LIMIT)
        except OSError:
            raise UserError(f"run {folder.run_id} is not live (no engine answers on {folder.socket})") from None
        return cls(folder, reader, writer, parse_events)

    async def _read(self) -> None:
        try:
            while line := await wire.read_line(self.reader):
                if isinstance(line, wire.Overlong):
                    self._skipped(line)
                elif line.startswith(b'{"event"'):
                    if self.parse_events:
                        self._read_event(line)
                else:
                    self._control(line)
            if not self.closed_reason:
                self.closed_reason = "the engine closed the connection"
        except Exception as e:  # noqa: BLE001 - a reset or closed connection; never a line's content
            self.closed_reason = f"the connection to the engine broke: {e}"
        finally:
            self._queue.put_nowait(None)
            for future in self._replies.values():
                if not future.done():
                    future.set_result(cmd.Reply(False, self.closed_reason or "the run has ended"))

    def _read_event(self, line: bytes) -> None:
        """An event line, queued for `events()`; one this client cannot read becomes a note."""
        try:
            event = ev.parse_line(line.decode())
        except Exception as e:  # noqa: BLE001 - one bad line must not end the stream
            self._note(f"skipped an event line this client could not read ({type(e).__name__}: {str(e)[:200]})")
            return
        self._queue.put_nowait(event)

    def _control(self, line: bytes) -> None:
        """A line that is not an event: a reply, the end of the history, or why we were dropped."""
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return  # not ours to read (a torn line of a killed engine)
        if not isinstance(obj, dict):
            return
        if "reply" in obj:
            key = obj["reply"]
            future = self._replies.pop(key, None) if isinstance(key, int) else None
            if future is not None and not future.done():
                future.set_result(cmd.Reply.from_json(obj))
        elif "history_end" in obj:
            self._queue.put_nowait(HISTORY_END)
        elif "error" in obj:
            self.closed_reason = str(obj["error"])

    def _skipped(self, line: wire.Overlong) -> None:
        """A line longer than this client reads: a reply to us fails, anything else is a note."""
        limit = f"{LINE_LIMIT / (1 << 20):.0f} MB"
        key = line.reply_id()
        future = self._replies.pop(key, None) if isinstance(key, int) else None
        if future is not None:
            if not future.done():
                future.set_result(cmd.Reply(False, f"the engine's answer was {line.size / 1e6:.1f} MB, longer "
                                                   f"than the {limit} a client reads; ask for fewer inputs"))
            return
        self._note(f"skipped {line.describe()} of the run's stream: longer than the {limit} a client reads")

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.parse_events:  # shown where warnings are: the dashboard's panel, the headless log
            self._queue.put_nowait(ev.RunWarning(kind="stream", message=message))

    async def events(self, history_end: bool = False) -> AsyncIterator[ev.Event | HistoryEnd]:
        """The run's history, then live events, until run_finished (or the engine goes away).

        With `history_end`, HISTORY_END comes between the two (from an engine that marks it).
        """
        while True:
            event = await self._queue.get()
            if event is None:
                return
            if event is HISTORY_END and not history_end:
                continue
            yield event
            if isinstance(event, ev.RunFinished):
                return

    async def send(self, command: cmd.Command, timeout: float = 60) -> cmd.Reply:
        """Send a command; the engine's reply once it has been applied at a step boundary. After the
        engine has gone, a prediction comes from the saved checkpoints; anything else is refused."""
        if self._task.done():
            if isinstance(command, cmd.Predict):
                if self._saved is None:
                    self._saved = CheckpointPredictions(self.folder)
                return await self._saved.predict(command, max(timeout, 120))
            return cmd.Reply(False, f"run {self.run_id} is no longer live ({self.closed_reason or 'it has ended'})")
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._replies[request_id] = future
        try:
            self.writer.write(json.dumps({**command.to_json(), "id": request_id}).encode() + b"\n")
            await self.writer.drain()
        except ConnectionError:
            self._replies.pop(request_id, None)
            return cmd.Reply(False, "the engine is gone")
        return await asyncio.wait_for(future, timeout)

    async def close(self) -> None:
        """Leave; the run goes on."""
        if self._saved is not None:
            await self._saved.close()
        self._task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, asyncio.CancelledError):
            pass


class FinishedRun(RunSource):
    """A run no engine serves: its events.jsonl, read once."""

    live = False

    def __init__(self, folder: RunFolder, trust: bool = False):
        """Read the run's events.jsonl (a missing or damaged one is a UserError naming it).

        `trust`: the prediction process may import the run's Python model and data even from a
        folder that is not the user's own, in place (`--trust`).
        """
        super().__init__(folder)
        self.trust = trust
        self._events, self.torn = read_events(folder.events)
        self.closed_reason = ""
        self._saved = CheckpointPredictions(folder, trust)

    async def events(self, history_end: bool = False) -> AsyncIterator[ev.Event | HistoryEnd]:
        """Every event of the log: all history (followed by HISTORY_END when asked)."""
        for event in self._events:
            yield event
        if history_end:
            yield HISTORY_END

    async def send(self, command: cmd.Command, timeout: float = 120) -> cmd.Reply:
        """Predictions come from the saved checkpoints; every other command needs a live run."""
        if isinstance(command, cmd.Predict):
            return await self._saved.predict(command, timeout)
        finished = next((e for e in self._events if isinstance(e, ev.RunFinished)), None)
        state = f"has {finished.status.replace('_', ' ')}" if finished else "is not running"
        return cmd.Reply(False, f"run {self.folder.run_id} {state}; commands need a live run")

    async def close(self) -> None:
        await self._saved.close()


async def open_run(folder: RunFolder, parse_events: bool = True, trust: bool = False) -> LiveRun | FinishedRun:
    """The run as a client sees it: live through its socket when an engine serves it, else its log.

    `trust` reaches a finished run's prediction process; a live run's engine predicts itself.
    """
    if folder.socket.exists() and socket_is_live(folder.socket):
        try:
            return await LiveRun.connect(folder, parse_events)
        except UserError:
            pass  # it finished between the check and the connect
    return FinishedRun(folder, trust)
