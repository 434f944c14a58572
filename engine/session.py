"""The session under every training loop: one run's folder, event log, commands and control server.

A config run's Trainer, `traintop.watch`, the Lightning and Hugging Face callbacks and a watched
script each own their loop; all of them record steps, obey commands and report through one
Session. Only the owner of the loop differs.

    session = Session.create(runs_dir, name, source="watch")   # folder made and locked
    session.start(run_started_fields)                          # the first event
    session.serve()                                            # control socket, on its own thread
    ...  session.record_step(...); session.at_step_boundary(apply) ...
    session.close("completed")                                 # run_finished, report.json
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import Future
from typing import AsyncIterator, Callable

from . import commands as cmd
from . import events as ev
from .errors import UserError
from .inbox import CommandInbox
from .config import dumps_toml
from .runstore import RunFolder, report_from_events, write_json

FLUSH_SECONDS = 0.1


class EventLog:
    """events.jsonl and the live subscribers: the loop queues events, `deliver` hands them out in
    one write and one wake-up per subscriber, about ten times a second however fast they come."""

    def __init__(self, path):
        self.path = path
        self._lock = threading.Lock()
        self._pending: list[ev.Event] = []  # published, not yet delivered
        self.notable: list[ev.Event] = []  # every delivered event but steps: what the report is made of
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, Callable]] = []
        self._file = open(path, "ab")
        self.offset = self._file.tell()  # bytes of events.jsonl written so far
        self.closed = False

    def publish(self, event: ev.Event) -> None:
        """Queue an event for the next delivery."""
        if not self.closed:
            self._pending.append(event)

    @property
    def pending(self) -> list[ev.Event]:
        return self._pending

    def deliver(self) -> None:
        """Append queued events to events.jsonl in one write and hand them to every subscriber."""
        batch, self._pending = self._pending, []
        if not batch or self.closed:
            return
        data = "".join(e.to_line() + "\n" for e in batch).encode()
        self.notable.extend(e for e in batch if not isinstance(e, ev.Steps))
        with self._lock:
            self._file.write(data)
            self._file.flush()
            self.offset += len(data)
            subscribers = list(self._subscribers)
        for loop, callback in subscribers:
            loop.call_soon_threadsafe(callback, batch, data)

    def subscribe(self, callback: Callable[[list[ev.Event], bytes], None]) -> int:
        """Call `callback(events, data)` on this asyncio loop for every later delivery.

        Returns the length of events.jsonl at that moment: the history is exactly its bytes
        before that offset, the live stream exactly what comes after.
        """
        with self._lock:
            self._subscribers.append((asyncio.get_running_loop(), callback))
            return self.offset

    def unsubscribe(self, callback: Callable) -> None:
        with self._lock:
            self._subscribers = [(lp, cb) for lp, cb in self._subscribers if cb is not callback]

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._file.close()


class Session:
    """One run as every loop owner sees it: its folder, events, commands, control server and end."""

    def __init__(self, folder: RunFolder, *, source: str, lock=None):
        self.folder = folder
        self.source = source
        self.lock = lock
        self.log = EventLog(folder.events)
        self.inbox = CommandInbox()
        self.t0 = time.monotonic()
        self.recorder = None  # a StepRecorder, once the loop owner has one
        self.epoch = 1  # the epoch being trained, 1-based, as steps events carry it
        self.samples = 0  # samples trained since the last flush, for samples/s
        self.flush_started = time.perf_counter()
        self.next_flush = 0.0
        self.flush_hooks: list[Callable[[dict], None]] = []  # called with every flushed steps batch
        self.paused = False
        self.stop_request: cmd.Stop | None = None
        self.stop_status = "stopped"
        self.handlers: dict[type, Callable[[cmd.Command], cmd.Reply]] = {
            cmd.Pause: self.pause, cmd.Resume: self.resume, cmd.Stop: self.stop,
        }
        self._warnings: dict[str, ev.RunWarning] = {}
        self._done: Future = Future()
        self._serving: threading.Thread | None = None
        self._server_loop: asyncio.AbstractEventLoop | None = None
        self._server_done: asyncio.Event | None = None

    @classmethod
    def open(cls, folder: RunFolder, *, name: str, source: str, config: dict | None = None,
             meta: dict | None = None) -> Session:
        """A session on a new run folder: meta.json (and the loop's config) written."""
        folder.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json(folder.meta, run_meta(folder, name=name, source=source, **(meta or {})))
        if config is not None:
            folder.config.write_text(dumps_toml(config))
        return cls(folder, source=source)

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    # -- events ----------------------------------------------------------------------------------

    def clock(self) -> float:
        """Seconds since the run started (a resumed run goes on from its log's last time)."""
        return round(time.monotonic() - self.t0, 4)

    def publish(self, event: ev.Event) -> None:
        self.log.publish(event)

    def emit(self, event_type: type[ev.Event], **fields) -> None:
        """Publish an event now; steps still buffered are flushed first, so events stay in order."""
        if event_type is not ev.Steps:
            self.flush()
        self.log.publish(event_type(t=self.clock(), **fields))

    def deliver(self) -> None:
        self.log.deliver()

    def flush(self) -> None:
        """Fetch the buffered steps from the device (one sync) and publish them as one event."""
        if self.recorder is None:
            return
        now = time.perf_counter()
        batch = self.recorder.take()
        if batch is None:
            return
        n = len(batch["step"])
        elapsed = now - self.flush_started
        self.flush_started = now
        samples, self.samples = self.samples, 0
        self.log.publish(ev.Steps(t=self.clock(), epoch=[self.epoch] * n,
                                  samples_per_s=round(samples / elapsed, 1) if elapsed > 0 else 0.0, **batch))
        for hook in self.flush_hooks:
            hook(batch)

    def flush_and_deliver(self) -> None:
        """The timed flush: about every 100 ms, steps and events go out together."""
        self.flush()
        self.deliver()
        self.next_flush = time.perf_counter() + FLUSH_SECONDS

    def warn(self, kind: str, message: str, *, step: int, advice: str = "", id: str = "", **values) -> None:
        """A warning; one with the `id` of an earlier one is that condition again, re-emitted with
        a higher count instead of as a new warning."""
        key = id or f"{kind}:{step}:{message}"
        first = self._warnings.get(key)
        count = first.count + 1 if first is not None else 1
        first_step = first.first_step if first is not None else step
        event = ev.RunWarning(t=self.clock(), kind_=kind, message=message, advice=advice, step=step,
                              id=key, count=count, first_step=first_step, last_step=step, values=values)
        self._warnings[key] = event
        self.flush()
        self.log.publish(event)

    # -- commands, at step boundaries ------------------------------------------------------------

    def send_nowait(self, command: cmd.Command) -> Future:
        """Queue a command for the next step boundary; the future gets the Reply."""
        return self.inbox.submit(command)

    async def send(self, command: cmd.Command) -> cmd.Reply:
        return await asyncio.wrap_future(self.send_nowait(command))

    def apply(self, command: cmd.Command) -> cmd.Reply:
        """One command's effect, from the table of handlers; a refused command changes nothing."""
        handler = self.handlers.get(type(command))
        if handler is None:
            return cmd.Reply(False, f"command {command.name!r} is not served by this {self.source} run")
        try:
            return handler(command)
        except UserError as e:
            return cmd.Reply(False, str(e))

    def serve_commands(self) -> None:
        """Apply waiting commands; while paused, keep serving them until resumed or stopped.

        `wait` wakes every 0.1 s, so Ctrl-C (and Jupyter's interrupt) still reach a paused loop.
        """
        while True:
            for command, future in self.inbox.take():
                try:
                    reply = self.apply(command)
                    self.flush_and_deliver()  # the command's events before its reply
                except BaseException as e:  # the run is failing (a non-finite flush): answer, then fail
                    future.set_result(cmd.Reply(False, f"the run is failing: {e}"))
                    raise
                future.set_result(reply)
            if not self.paused or self.stop_request is not None:
                break
            self.inbox.wait(0.1)
        self.flush_started = time.perf_counter()  # paused time is not training time

    def step_of(self) -> int:
        """The last recorded step (0 before any)."""
        return self.recorder.first_step + self.recorder.n - 1 if self.recorder is not None else 0

    def pause(self, c: cmd.Pause) -> cmd.Reply:
        if self.paused:
            return cmd.Reply(False, "already paused")
        self.paused = True
        self.emit(ev.Paused, step=self.step_of())
        return cmd.Reply(True, f"paused at step {self.step_of()}")

    def resume(self, c: cmd.Resume) -> cmd.Reply:
        if not self.paused:
            return cmd.Reply(False, "not paused")
        self.paused = False
        self.emit(ev.Resumed, step=self.step_of())
        return cmd.Reply(True, f"resumed at step {self.step_of()}")

    def stop(self, c: cmd.Stop) -> cmd.Reply:
        self.request_stop(c, "stopped")
        return cmd.Reply(True, f"stopping at step {self.step_of()}")

    def request_stop(self, c: cmd.Stop, status: str) -> None:
        if self.stop_request is None:
            self.stop_request, self.stop_status = c, status

    # -- the control server ----------------------------------------------------------------------

    def serve(self, printer=None) -> None:
        """Serve the control socket (and feed `printer`, if any) on a thread of its own until the
        run is closed. Returns once the socket accepts connections."""
        from .server import ControlServer

        ready = threading.Event()
        failure: list[BaseException] = []

        async def side():
            server = ControlServer(self)
            self._server_loop = asyncio.get_running_loop()
            self._server_done = asyncio.Event()
            try:
                await server.start()
            except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
                failure.append(e)
                return
            finally:
                ready.set()
            try:
                if printer is not None:
                    async for event in self.events():
                        try:
                            printer.show(event)
                        except (OSError, ValueError):  # the terminal went away: keep training
                            break
                await asyncio.wrap_future(self._done)
            finally:
                await server.close()

        self._serving = threading.Thread(target=asyncio.run, args=(side(),), name="traintop-control",
                                         daemon=True)
        self._serving.start()
        ready.wait()
        if failure:
            raise failure[0]

    def subscribe(self, callback) -> int:
        return self.log.subscribe(callback)

    def unsubscribe(self, callback) -> None:
        self.log.unsubscribe(callback)

    async def events(self) -> AsyncIterator[ev.Event]:
        """Every event of the run: its history so far, then live ones, ending with run_finished."""
        queue: asyncio.Queue = asyncio.Queue()
        callback = lambda batch, data: queue.put_nowait(batch)  # noqa: E731
        offset = self.subscribe(callback)
        try:
            with open(self.folder.events, "rb") as f:
                history = f.read(offset).decode().splitlines()
            for line in history:
                event = ev.parse_line(line)
                yield event
                if isinstance(event, ev.RunFinished):
                    return
            while True:
                for event in await queue.get():
                    yield event
                    if isinstance(event, ev.RunFinished):
                        return
        finally:
            self.unsubscribe(callback)

    async def wait(self) -> str:
        """Wait for the run to close; its final status."""
        return await asyncio.wrap_future(self._done)

    # -- the end ---------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._done.done()

    def abandon(self) -> None:
        """Leave without run_finished (a notebook kernel going away): the run reads as killed."""
        if self.closed:
            return
        self.inbox.close("the run's process has gone")
        self.deliver()
        self.log.close()
        self._done.set_result("killed")
        if self._serving is not None:
            self._serving.join(timeout=5)
        if self.lock is not None:
            self.lock.release()

    def close(self, status: str, error: str = "", *, step: int = 0, epoch: int = 0, **report) -> None:
        """Write run_finished and report.json, let the clients receive them, stop serving."""
        if self.closed:
            return
        self.inbox.close(f"the run has finished ({status})")
        self.emit(ev.RunFinished, status=status, error=error, step=step, epoch=epoch)
        final = report_from_events(self.log.notable + self.log.pending)
        final.update({"run_id": self.run_id, "status": status, "error": error, "steps": step,
                      "seconds": round(self.clock(), 3), **report})
        write_json(self.folder.report, final)
        self.deliver()
        self.log.close()
        self._done.set_result(status)
        if self._serving is not None:
            self._serving.join(timeout=5)
        if self.lock is not None:
            self.lock.release()


def run_meta(folder: RunFolder, *, name: str, source: str, **fields) -> dict:
    """meta.json of a new run: who, where, when, and which versions."""
    import os
    import platform
    import socket
    from datetime import datetime

    import torch

    return {"run_id": folder.run_id, "name": name, "source": source, "host": socket.gethostname(),
            "pid": os.getpid(), "uid": os.getuid() if hasattr(os, "getuid") else None,
            "path": str(folder.path.resolve()), "started": datetime.now().isoformat(),
            "versions": {"traintop": version(), "torch": torch.__version__,
                         "python": platform.python_version()}, **fields}


def version() -> str:
    """traintop's installed version."""
    try:
        from importlib.metadata import version as installed

        return installed("traintop")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


def finite_or_none(value) -> float | None:
    """A number for an event: non-finite values become None (null on the wire)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None
