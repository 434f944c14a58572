"""The session under every training loop: one run's folder, event log, commands and control server.

A config run's Trainer, `traintop.watch`, the Lightning and Hugging Face callbacks and a watched
script each own their loop; all of them record steps, obey commands, save checkpoints and end
through one Session. Only the owner of the loop differs.

    session = Session.open(folder, name=..., source="watch", config=...)  # folder locked, meta written
    session.recorder = StepRecorder(...)                                    # the loop's per-step numbers
    session.serve()                                                         # control socket, own thread
    ...  session.emit(...); session.serve_commands(); session.flush_and_deliver() ...
    session.close("completed", step=..., epoch=...)                         # run_finished, report.json

An event travels one path, one verb per hop: a loop owner *emits* it (`Session.emit`), the
session *publishes* it on the event log (queued), the log *delivers* each batch (one write to
events.jsonl, then each subscriber: the control server, the headless printer), the server *sends*
it to every client, a client *reads* it (engine/client.py), and a front end *applies* it
(`RunState.apply`, `HeadlessPrinter.apply`).

On several processes (torch.distributed), rank 0's session is this one and every other rank has
a follower (`Session.follower`) that writes nothing; `join` gives both the ranks' lock-step
(lockstep.CommandSync): commands reach every rank at the same step, losses are averaged over
the ranks at each flush, and rank 0's clock times flushes and saves on every rank alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import AsyncIterator, Callable

from . import commands as cmd
from . import events as ev
from .config import dumps_toml
from .errors import DiskFull, NonFiniteLoss, UserError
from .inbox import Answer, CommandInbox
from .runstore import RunFolder, RunLock, disk_full, report_from_events, seal, write_json, write_text

FLUSH_SECONDS = 0.1
RESOURCE_SECONDS = 2.0  # a resources event this often; a sample costs 0.02 ms on the CPU (no GPU)


class EventLog:
    """events.jsonl and the live subscribers: `publish` queues an event, `deliver` hands the queue
    out in one write and one wake-up per subscriber, about ten times a second however fast they come."""

    def __init__(self, folder: RunFolder):
        self.folder = folder
        self._lock = threading.Lock()
        self._pending: list[ev.Event] = []  # published, not yet delivered
        self.notable: list[ev.Event] = []  # every delivered event but steps: what the report is made of
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, Callable]] = []
        # Unbuffered: a write that fails leaves nothing queued to be written later, out of place.
        self._file = open(folder.events, "ab", buffering=0)
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
        """Append queued events to events.jsonl in one write and hand them to every subscriber.

        Written or not (a full disk raises DiskFull), a front end sees every event.
        """
        batch, self._pending = self._pending, []
        if not batch or self.closed:
            return
        data = "".join(e.to_line() + "\n" for e in batch).encode()
        self.notable.extend(e for e in batch if not isinstance(e, (ev.Steps, ev.Resources)))
        subscribers = []
        try:
            with self._lock:  # one section: a new subscriber gets a batch as history or live, never both
                subscribers = list(self._subscribers)
                self._append(data)
        finally:
            for loop, callback in subscribers:
                loop.call_soon_threadsafe(callback, batch, data)

    def _append(self, data: bytes) -> None:
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += self._file.write(view[done:])
        except OSError as e:
            # Half a batch would leave a broken line inside the log once anything follows it.
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), self.offset)
            raise disk_full(e, self.folder.path) or e
        self.offset += len(data)

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


class NoLog:
    """The event log of a rank other than 0: its events go nowhere (rank 0 records the run)."""

    offset = 0
    pending: list = []
    notable: list = []
    closed = False

    def publish(self, event) -> None:
        pass

    def deliver(self) -> None:
        pass

    def close(self) -> None:
        pass


class NoCheckpoints:
    """The checkpoints of a rank other than 0: rank 0 alone writes them."""

    def write(self, name: str, state: dict, kind: str, step: int) -> None:
        pass

    def written(self) -> list:
        return []

    def wait(self) -> None:
        pass

    def close(self) -> list:
        return []


class Session:
    """One run as every loop owner sees it: its folder, events, commands, checkpoints and end."""

    def __init__(self, folder: RunFolder, *, source: str, lock: RunLock | None = None, leader: bool = True):
        """`leader`: this process records the run (False: a rank other than 0, see `follower`)."""
        from .checkpoint import Checkpointer  # torch comes with the checkpoints, not the session

        self.folder = folder
        self.source = source
        self.lock = lock  # the folder is this process's until close() or its end
        self.leader = leader
        self.log = EventLog(folder) if leader else NoLog()
        self.inbox = CommandInbox()
        self.checkpointer = Checkpointer(folder.checkpoints) if leader else NoCheckpoints()
        self.world = None  # distributed.World: this process among the ranks of the run
        self.sync = None  # lockstep.CommandSync, once joined
        self.saved_step: int | None = None  # the step of the last.pt on disk
        self.t0 = time.monotonic()
        self.recorder = None  # the loop owner's StepRecorder
        self.timer = None  # the loop owner's PhaseTimer, when its steps are timed
        self.epoch = 1  # the epoch being trained, 1-based, as steps events carry it
        self.samples = 0  # samples trained since the last flush, for samples/s
        self.samples_per_step = 0  # or, when every step trains as many: that many
        self.flush_started = time.perf_counter()
        self.next_flush = 0.0
        self.flush_hooks: list[Callable[[dict], None]] = []  # each flushed steps batch goes through them
        self.paused = False
        self.stop_request: cmd.Stop | None = None
        self.stop_status = "stopped"
        self.handlers: dict[type, Callable[[cmd.Command], cmd.Reply]] = {
            cmd.Pause: self.pause, cmd.Resume: self.resume, cmd.Stop: self.stop,
        }
        self.failure: DiskFull | None = None  # a full disk ended the run
        self.unrecorded: list[str] = []  # what a full disk kept from being written at the end
        self._warnings: dict[str, ev.RunWarning] = {}
        self._done: Future = Answer()  # awaited by the server, set by the loop
        self._serving: threading.Thread | None = None
        self._ending = False  # run_finished is on its way: nothing from other threads after it
        self.forked = False  # this is a copy of the session in a forked child: see leave_to_parent
        self._ending_lock = threading.Lock()

    def leave_to_parent(self) -> None:
        """In a process forked from this one (a Pool worker, os.fork): the run is the parent's. This
        copy writes nothing (its log's file is the parent's, shared), saves nothing, serves nothing
        and reads as closed, so the child's steps are not mixed into the run."""
        self.leader, self.log, self.checkpointer, self.recorder = False, NoLog(), NoCheckpoints(), None
        self.forked = True
        self._done = Answer()
        self._done.set_result("forked")
        self._serving = None

    @classmethod
    def open(cls, folder: RunFolder, *, name: str, source: str, config: dict | None = None,
             meta: dict | None = None, lock: RunLock | None = None) -> Session:
        """A session on a new run folder: the folder locked, meta.json (and the loop's config) written."""
        lock = lock or folder.lock()
        try:
            folder.checkpoints.mkdir(parents=True, exist_ok=True)
            write_json(folder.meta, run_meta(folder, name=name, source=source, **(meta or {})))
            if config is not None:
                write_text(folder.config, dumps_toml(config))
            return cls(folder, source=source, lock=lock)
        except BaseException:
            lock.close()
            raise

    @classmethod
    def follower(cls, source: str, folder: RunFolder | None = None) -> Session:
        """The session of a rank other than 0: it trains, obeys the commands and writes nothing;
        `join` tells it rank 0's folder (its name for messages)."""
        return cls(folder or RunFolder(Path("rank-0-run")), source=source, leader=False)

    def join(self, world, every: int = 1) -> None:
        """Train in step with the other ranks of `world` (a distributed.World): every rank learns
        rank 0's run folder, and commands, flushes and saves happen at the same step on all."""
        from .lockstep import CommandSync

        path = world.share(lambda: str(self.folder.path))
        if not self.leader:
            self.folder = RunFolder(Path(path))
        self.world = world
        self.sync = CommandSync(self, world, every)

    @property
    def world_size(self) -> int:
        return self.world.size if self.world is not None else 1

    def now(self) -> float:
        """Seconds on the run's clock for timed decisions (periodic saves): on several ranks, rank 0's
        clock as of the last round, so that every rank decides alike at the same step."""
        return self.sync.clock if self.sync is not None else time.perf_counter()

    def commands_due(self) -> bool:
        """Whether this step boundary has commands to serve (on several ranks, every one does: it
        may be a round)."""
        return self.sync is not None or bool(self.inbox) or self.paused

    def boundary_due(self, now: float) -> bool:
        """Whether a step boundary has anything to do, commands or the timed flush; asked at every
        step, so one cheap test (on several ranks always true: each boundary may be a round)."""
        return self.sync is not None or now >= self.next_flush or self.paused or bool(self.inbox)

    def flush_due(self, now: float | None = None) -> bool:
        """Whether the timed flush is due: about every 100 ms (on several ranks, when rank 0's
        timer said so at the last round)."""
        if self.sync is not None:
            return self.sync.take_flush()
        return (time.perf_counter() if now is None else now) >= self.next_flush

    def fail(self, error: BaseException, own: str) -> str:
        """The run's error in words when training ended with `error` (`own`, as this rank says it):
        on several ranks, the rank that failed first is named, and no collective follows."""
        if self.world is None:
            return own
        return self.world.fail(error, own)

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    # -- events ----------------------------------------------------------------------------------

    def clock(self) -> float:
        """Seconds since the run started (a resumed run goes on from its log's last time)."""
        return round(time.monotonic() - self.t0, 4)

    def publish(self, event: ev.Event) -> None:
        """Queue an event made off the loop's thread (resources) for the next delivery, as it is:
        no flush, which belongs to the loop."""
        self.log.publish(event)

    def emit(self, event_type: type[ev.Event], **fields) -> None:
        """Publish an event, at the run's time now unless `t` is given; steps still buffered are
        flushed first, so events stay in order."""
        if event_type is not ev.Steps:
            self.flush()
        self.log.publish(event_type(**{"t": self.clock(), **fields}))

    def deliver(self) -> None:
        self.log.deliver()

    def flush(self) -> None:
        """Fetch the buffered steps from the device (one sync), publish them as one event, and
        hand them to the flush hooks (a non-finite loss may raise there)."""
        if self.recorder is None:
            return
        now = time.perf_counter()
        batch = self.recorder.take(self.world.mean_ if self.world is not None else None)
        if batch is None:
            return
        if self.timer is not None:
            batch["timing"] = self.timer.take()
        n = len(batch["step"])
        elapsed = now - self.flush_started
        self.flush_started = now
        samples = n * self.samples_per_step if self.samples_per_step else self.samples
        self.samples = 0
        rate = round(samples / elapsed, 1) if elapsed > 0 else 0.0
        ranks = {}
        if self.sync is not None:  # every rank's own throughput; the run's is their sum
            self.sync.local_rate = rate
            rates = [rate if r == self.world.rank else x for r, x in enumerate(self.sync.rates)]
            ranks, rate = {"rank_samples_per_s": rates}, round(sum(rates), 1)
        self.log.publish(ev.Steps(t=self.clock(), epoch=[self.epoch] * n, samples_per_s=rate, **ranks, **batch))
        for hook in self.flush_hooks:
            hook(batch)

    def flush_and_deliver(self) -> None:
        """The timed flush: about every 100 ms, steps and events go out together."""
        self.flush()
        self.announce_saves()
        self.deliver()
        self.next_flush = time.perf_counter() + FLUSH_SECONDS

    def warn(self, kind: str, message: str, *, step: int, advice: str = "", id: str = "", **values) -> None:
        """A warning; one with the `id` of an earlier one is that condition again, re-emitted with
        a higher count instead of as a new warning."""
        key = id or f"{kind}:{message}"
        first = self._warnings.get(key)
        event = ev.RunWarning(t=self.clock(), kind=kind, message=message, advice=advice, step=step, id=key,
                              count=first.count + 1 if first is not None else 1,
                              first_step=first.first_step if first is not None else step, last_step=step,
                              values=values)
        self._warnings[key] = event
        self.flush()
        self.log.publish(event)

    # -- checkpoints -------------------------------------------------------------------------------

    def announce_saves(self) -> None:
        """A checkpoint_saved event for each file the checkpointer has put in place."""
        for saved in self.checkpointer.written():
            if saved.kind != "best":
                self.saved_step = saved.step
            self.emit(ev.CheckpointSaved, path=str(saved.path), kind=saved.kind, step=saved.step)

    # -- commands, at step boundaries ------------------------------------------------------------

    def send_nowait(self, command: cmd.Command) -> Future:
        """Queue a command for the next step boundary; the future gets the Reply. Once the loop
        has ended, a prediction is answered at once: the model is idle."""
        if self.inbox.closed_reason is not None and isinstance(command, cmd.Predict) \
                and cmd.Predict in self.handlers:
            future: Future = Answer()
            future.set_result(self.apply(command))
            return future
        return self.inbox.submit(command)

    async def send(self, command: cmd.Command) -> cmd.Reply:
        """Apply a command at the next step boundary and return the engine's Reply."""
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
        except Exception as e:  # noqa: BLE001 - a prediction's failure is the input's, never the run's
            if isinstance(command, cmd.Predict):  # forward-only: a bad input cannot hurt training
                return cmd.Reply(False, f"could not predict on these inputs: {type(e).__name__}: {e}")
            raise

    def serve_commands(self) -> None:
        """Apply waiting commands; while paused, keep serving them until resumed or stopped.

        `wait` wakes every 0.1 s, so Ctrl-C (and Jupyter's interrupt) still reach a paused loop. On
        several ranks, the ranks' round does it, for every rank at the same step.
        """
        if self.sync is not None:
            self.sync.boundary()
            return
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
            if self.log.pending:  # what other threads published (resources) goes out while paused too
                self.deliver()
        self.flush_started = time.perf_counter()  # paused time is not training time

    def step_of(self) -> int:
        """The last recorded step (0 before any)."""
        if self.recorder is None:
            return 0
        return max(0, self.recorder.first_step + self.recorder.n - 1)

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
        self.stop_request, self.stop_status = c, "stopped"
        return cmd.Reply(True, f"stopping at step {self.step_of()}")

    def request_stop(self, c: cmd.Stop, status: str) -> None:
        """Stop at the next step boundary, ending as `status` (early_stopped, say)."""
        if self.stop_request is None:
            self.stop_request, self.stop_status = c, status

    # -- the control server ----------------------------------------------------------------------

    def serve(self, printer=None) -> None:
        """Serve the control socket (and apply every event to `printer`, if any) on a thread of its
        own until the run is closed. Returns once the socket accepts connections."""
        from .server import ControlServer

        if not self.leader:  # rank 0 serves the run
            return
        ready = threading.Event()
        failure: list[BaseException] = []

        async def side():
            server = ControlServer(self)
            try:
                await server.start()
            except BaseException as e:  # noqa: BLE001 - raised again on the caller's thread
                failure.append(e)
                return
            finally:
                ready.set()
            sampler = asyncio.ensure_future(self._sample_resources())
            try:
                if printer is not None:
                    async for event in self.events():
                        try:
                            printer.apply(event)
                        except (OSError, ValueError):  # the terminal went away: keep training
                            break
                await asyncio.wrap_future(self._done)
            finally:
                sampler.cancel()
                await server.close()

        self._serving = threading.Thread(target=asyncio.run, args=(side(),), name="traintop-control",
                                         daemon=True)
        self._serving.start()
        ready.wait()
        if failure:
            raise failure[0]

    async def _sample_resources(self) -> None:
        """A `resources` event every RESOURCE_SECONDS, published from this thread and delivered
        with the loop's next flush; none before the run's first event (run_started comes first)."""
        from .resources import ResourceSampler

        sampler = ResourceSampler()
        while True:
            await asyncio.sleep(RESOURCE_SECONDS)
            event = ev.Resources(t=self.clock(), **sampler.sample())
            with self._ending_lock:  # never after run_finished
                if not self._ending and (self.log.offset or self.log.pending):
                    self.publish(event)

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

    def close(self, status: str, error: str = "", *, step: int = 0, epoch: int = 0, **report) -> str:
        """Record how the run ended, as far as the disk allows, let the clients receive it and stop
        serving; the final status (a failed last write fails a run that had not failed)."""
        if self.closed:
            return status
        try:
            status, error = self._record_end(status, error, step, epoch, report)
        finally:
            self.log.close()
            self._done.set_result(status)
            if self._serving is not None:
                self._serving.join(timeout=5)
            self.release()
        return status

    def _record_end(self, status: str, error: str, step: int, epoch: int, report: dict) -> tuple[str, str]:
        self.inbox.close(f"the run has finished ({status})")
        with self._ending_lock:
            self._ending = True
        if self.sync is not None:
            self.sync.close(f"the run has finished ({status})")
        with contextlib.suppress(NonFiniteLoss):
            self.flush()  # steps still buffered go out before run_finished (a failing run's, too)
        try:
            saved = self.checkpointer.close()  # the write in flight; temporary files removed
        except Exception as e:  # noqa: BLE001 - a failed write fails the run, if nothing did before
            saved = []
            if status != "failed":
                status, error = "failed", str(e)
                self.failure = e if isinstance(e, DiskFull) else None
        for s in saved:
            if s.kind != "best":
                self.saved_step = s.step
            self.emit(ev.CheckpointSaved, path=str(s.path), kind=s.kind, step=s.step)
        if self.failure is not None and self.lock is not None:
            self.lock.give_back_reserve()  # room for run_finished and report.json
        self.emit(ev.RunFinished, status=status, error=error, step=step, epoch=epoch)
        if not self.leader:
            return status, error
        try:
            final = report_from_events(self.log.notable + self.log.pending)
            final.update({"run_id": self.run_id, "status": status, "error": error, "steps": step,
                          "seconds": round(self.clock(), 3), **report})
            write_json(self.folder.report, final)
        except Exception:  # noqa: BLE001 - a full disk: said by the caller, the run's end still goes out
            self.unrecorded.append("report.json")
        try:
            self.deliver()
        except Exception:  # noqa: BLE001 - the subscribers have it; the log could not take it
            self.unrecorded.append("the run_finished event in events.jsonl")
        return status, error

    def abandon(self) -> None:
        """Leave without run_finished (a notebook kernel going away): the run reads as killed."""
        if self.closed:
            return
        self.inbox.close("the run's process has gone")
        with contextlib.suppress(Exception):
            self.deliver()
        self.log.close()
        self._done.set_result("killed")
        if self._serving is not None:
            self._serving.join(timeout=5)
        self.release()

    def release(self) -> None:
        """Let another process take the run folder (a resume, say); the process's end does the same."""
        if self.lock is not None:
            self.lock.close()


def run_meta(folder: RunFolder, *, name: str, source: str, **fields) -> dict:
    """meta.json of a new run: who made it and where (code named by its config is imported from
    it only while both still hold, unless the user passes --trust), when, and which versions."""
    import platform
    import socket
    from datetime import datetime

    import torch

    uid, made_at = os.getuid() if hasattr(os, "getuid") else None, str(folder.path.resolve())
    return {"run_id": folder.run_id, "name": name, "source": source, "host": socket.gethostname(),
            "pid": os.getpid(), "started": datetime.now().isoformat(),
            "uid": uid, "folder": made_at, "seal": seal(folder.run_id, made_at, uid),
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
