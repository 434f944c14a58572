"""A training run: its folder, its loop thread, and its async face.

    run = Run.prepare(config)         # data, model, run folder (UserError on bad input)
    run.start()
    async for event in run.events():  # history first, then live, until run_finished
        ...
    reply = await run.send(Pause())
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator, Callable

import torch

from . import commands as cmd
from . import events as ev
from .checkpoint import load_checkpoint
from .config import Config, load_config
from .data import load_data
from .errors import UserError
from .inbox import CommandInbox
from .loop import NonFiniteLoss, Trainer
from .runstore import RunFolder, default_runs_dir, is_live, read_events, report_from_events, write_json


def set_threads(threads: int) -> int:
    """PyTorch's CPU threads: `threads`, or with 0 all cores but one.

    The spare core keeps the dashboard, the log and the socket from stalling the loop: with one
    thread per core, any other busy process makes every step wait at OpenMP barriers (measured
    10-40x slower on 2 cores).
    """
    n = threads or max(1, (os.cpu_count() or 1) - 1)
    torch.set_num_threads(n)
    return n


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then the CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"run.device = {name!r} but no CUDA GPU is available; use \"auto\" or \"cpu\"")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"run.device = {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("run.device = \"mps\" but MPS is not available here; use \"auto\" or \"cpu\"")
    return torch.device(name)


class Run:
    """One training run, from its prepared data to its report."""

    def __init__(self, cfg: Config, trainer: Trainer, folder: RunFolder, inbox: CommandInbox):
        self.cfg = cfg
        self.trainer = trainer
        self.folder = folder
        self.inbox = inbox
        self.resumed_from: int | None = None  # the step a resumed run continues from
        self._lock = threading.Lock()
        self._pending: list[ev.Event] = []  # published, not yet delivered
        self._notable: list[ev.Event] = []  # every event but steps: what the report is made of
        self._closed = False
        self._subscribers: list[tuple[asyncio.AbstractEventLoop, Callable]] = []
        self._events_file = open(folder.events, "ab")
        self._offset = self._events_file.tell()  # bytes of events.jsonl written so far
        self._done: Future = Future()
        self._thread: threading.Thread | None = None
        trainer.emit_event = self.publish
        trainer.deliver = self.deliver
        trainer.log_offset = lambda: self._offset

    @classmethod
    def prepare(cls, cfg: Config, runs_dir: Path | None = None, folder: RunFolder | None = None) -> Run:
        """Load the data and build the model, then create the run folder. Bad input: UserError.

        `folder`: an existing, empty run folder to use (a detached run's parent made it).
        """
        data = load_data(cfg)
        device = resolve_device(cfg.run.device)
        set_threads(cfg.run.threads)
        inbox = CommandInbox()
        trainer = Trainer(cfg, data, device, emit=lambda e: None, inbox=inbox)
        if folder is None:
            folder = RunFolder.create(runs_dir or default_runs_dir(), cfg.run.name)
        folder.checkpoints.mkdir(exist_ok=True)
        folder.config.write_text(cfg.to_toml())
        write_json(folder.preprocess, data.preprocess.to_json())
        write_json(folder.meta, {
            "run_id": folder.run_id, "name": cfg.run.name, "seed": cfg.run.seed, "device": str(device),
            "host": socket.gethostname(), "pid": os.getpid(), "started": datetime.now().isoformat(),
            "threads": torch.get_num_threads(),
            "config_dir": str(cfg.base_dir),
            "versions": {"traintop": _version(), "torch": torch.__version__,
                         "python": platform.python_version()},
        })
        trainer.folder = folder
        return cls(cfg, trainer, folder, inbox)

    @classmethod
    def resume(cls, folder: RunFolder) -> Run:
        """A stopped or killed run, ready to continue from checkpoints/last.pt."""
        meta = folder.read_json("meta.json") or {}
        report = folder.read_json("report.json")
        if report is None and is_live(folder) and meta.get("pid") != os.getpid():
            raise UserError(f"run {folder.run_id} is still running (pid {meta['pid']}); attach to it instead")
        if report is not None and report.get("status") not in ("stopped", None):
            raise UserError(f"run {folder.run_id} has {report['status'].replace('_', ' ')}; "
                            "only a stopped or killed run can be resumed")
        if not folder.last.is_file():
            raise UserError(f"run {folder.run_id} has no checkpoints/last.pt to resume from")
        cfg = load_config(folder.config)
        cfg.base_dir = Path(meta.get("config_dir", folder.path))
        state = load_checkpoint(folder.last)
        data = load_data(cfg)
        device = resolve_device(cfg.run.device)
        set_threads(cfg.run.threads)
        inbox = CommandInbox()
        trainer = Trainer(cfg, data, device, emit=lambda e: None, inbox=inbox)
        trainer.folder = folder
        trainer.load_state_dict(state, map_location=device)
        # Events logged after the checkpoint describe training that is now done again.
        last_t = _truncate_log(folder.events, state.get("events_offset"))
        folder.report.unlink(missing_ok=True)
        meta.setdefault("resumes", []).append({"at": datetime.now().isoformat(), "step": trainer.step,
                                               "pid": os.getpid()})
        meta["pid"] = os.getpid()
        write_json(folder.meta, meta)
        run = cls(cfg, trainer, folder, inbox)
        run.resumed_from = trainer.step
        run._notable = [e for e in read_events(folder.events)[0] if not isinstance(e, ev.Steps)]
        trainer.t0 -= last_t
        return run

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    # -- the event stream ------------------------------------------------------------------------

    def publish(self, event: ev.Event) -> None:
        """Queue an event for the next delivery (the training thread calls this)."""
        if not self._closed:
            self._pending.append(event)

    def deliver(self) -> None:
        """Append queued events to events.jsonl in one write and hand them to every subscriber.

        The loop calls this about every 100 ms and after each command, so a front end wakes
        about ten times a second however fast the events come.
        """
        batch, self._pending = self._pending, []
        if not batch:
            return
        data = "".join(e.to_line() + "\n" for e in batch).encode()
        self._notable.extend(e for e in batch if not isinstance(e, ev.Steps))
        with self._lock:
            self._events_file.write(data)
            self._events_file.flush()
            self._offset += len(data)
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
            return self._offset

    def unsubscribe(self, callback: Callable) -> None:
        with self._lock:
            self._subscribers = [(lp, cb) for lp, cb in self._subscribers if cb is not callback]

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

    # -- commands --------------------------------------------------------------------------------

    def send_nowait(self, command: cmd.Command) -> Future:
        """Queue a command for the next step boundary; the future gets the Reply."""
        if self.inbox.closed_reason is not None and isinstance(command, cmd.Predict):
            future: Future = Future()  # the loop has ended: the model is idle, answer here
            future.set_result(self.trainer.apply(command))
            return future
        return self.inbox.submit(command)

    async def send(self, command: cmd.Command) -> cmd.Reply:
        """Apply a command at the next step boundary and return the engine's Reply."""
        return await asyncio.wrap_future(self.send_nowait(command))

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start training on a thread of its own; for front ends that keep the main thread."""
        self._thread = threading.Thread(target=self.train, name="traintop-loop", daemon=True)
        self._thread.start()

    async def wait(self) -> str:
        """Wait for the run to finish; its final status."""
        return await asyncio.wrap_future(self._done)

    def train(self) -> str:
        """Train in the calling thread until the run finishes; its final status.

        The CLI trains on the main thread: PyTorch's CPU thread pool runs about 3x slower when a
        second thread drives it after the main thread has used it (measured on the digits MLP).
        """
        t = self.trainer
        if self.resumed_from is None:
            t.t0 = time.monotonic()
            self.publish(ev.RunStarted(
                t=0.0, run_id=self.run_id, name=self.cfg.run.name, config=self.cfg.to_dict(),
                device=str(t.device), params=sum(p.numel() for p in t.params),
                data=t.data.summary(self.cfg.data.batch_size),
                epochs=self.cfg.train.epochs, steps_per_epoch=t.steps_per_epoch))
            for kind, message in [*self.cfg.warnings, *t.data.warnings]:
                t.emit(ev.RunWarning, kind_=kind, message=message, step=0)
        else:
            t.emit(ev.Resumed, step=t.step, source="checkpoint")
        error = ""
        try:
            status = t.fit()
            t.finish(status)
        except NonFiniteLoss as e:
            status, error = "failed", str(e)
            t.emit(ev.RunWarning, kind_="nan_loss", step=e.step,
                   message=f"the loss or gradient became non-finite at step {e.step}; stopped "
                           "(set train.on_nan = \"skip\" to skip such updates, or lower optim.lr)")
            t.finish("failed")
        except Exception as e:  # noqa: BLE001 - a failed run must still finish its log
            status, error = "failed", f"{type(e).__name__}: {e}"
            traceback.print_exc(file=sys.stderr)
        self.inbox.close(f"the run has finished ({status})")
        t.emit(ev.RunFinished, status=status, error=error, step=t.step, epoch=t.epoch)
        self._write_report(status, error)
        self.deliver()
        with self._lock:
            self._closed = True
            self._events_file.close()
        self._done.set_result(status)
        return status

    def _write_report(self, status: str, error: str) -> None:
        report = report_from_events(self._notable + self._pending)
        report.update({"run_id": self.run_id, "name": self.cfg.run.name, "status": status,
                       "error": error, "epochs": self.trainer.epoch, "steps": self.trainer.step,
                       "seconds": round(self.trainer.clock(), 3)})
        write_json(self.folder.report, report)


def _truncate_log(path: Path, offset: int | None) -> float:
    """Cut events.jsonl back to `offset` (or its last whole line); the `t` of its last event."""
    with open(path, "rb+") as f:
        data = f.read()
        end = offset if offset is not None and offset <= len(data) else data.rfind(b"\n") + 1
        f.truncate(end)
    for line in reversed(data[:end].splitlines()):
        try:
            return float(ev.parse_line(line.decode()).t)
        except ValueError:
            continue
    return 0.0


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("traintop")
    except Exception:  # noqa: BLE001 - running from a source tree
        return "unknown"


__all__ = ["Run", "resolve_device"]
