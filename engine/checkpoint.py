"""Checkpoints: written to a temporary file and renamed, loaded as data (weights_only).

The Checkpointer owns a run's checkpoints/ folder: last.pt, best.pt and their temporary files.
A state is copied on the training thread (`snapshot`) and written on a thread of the
Checkpointer's own, so a model of several GB never holds the loop for the length of a write.

    checkpoints = Checkpointer(folder.checkpoints)
    checkpoints.write("last", snapshot(state), kind="periodic", step=120)
    for saved in checkpoints.written():   # the files now in place, to announce
        ...
    checkpoints.close()                   # waits for the write in flight, removes temporary files
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import stat
import warnings
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .runstore import disk_full

TEMP_SUFFIX = ".tmp"


class _Sink:
    """A file torch.save writes into that keeps the OSError behind a failed write: torch
    reports it as a RuntimeError without its errno."""

    def __init__(self, f):
        self.f = f
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` so that `path` is always either the old or the new checkpoint, never half.

    A full disk raises DiskFull naming the disk, and leaves no temporary file.
    """
    tmp = path.with_name(path.name + TEMP_SUFFIX)
    sink = None
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            torch.save(state, sink)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        error = e if isinstance(e, OSError) else (sink.error if sink is not None else None)
        full = disk_full(error, path.parent.parent) if error is not None else None
        if full is not None:
            raise full from None
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data: tensors and plain values, never code.

    Every way a file can fail to be a checkpoint (missing, empty, truncated, random bytes,
    pickled code) is a UserError naming the file; torch's own text is never shown, since it
    advises retrying with weights_only=False, which would run whatever the file holds.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise UserError(f"{path} could not be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device behind a symlink: reading could never end
        raise UserError(f"{path} is not a regular file: the checkpoint is damaged and was not loaded")
    size = info.st_size
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes): the checkpoint is damaged and was not loaded")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on damaged files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        if code:
            raise UserError(f"{path} holds pickled code ({code.group(1)}), not only tensors and numbers: "
                            "it may be hostile and was not loaded") from None
        raise UserError(f"{path} is damaged or is not a traintop checkpoint: it holds data other than "
                        "tensors and numbers (it may be hostile) and was not loaded") from None
    except OSError as e:
        raise UserError(f"{path} could not be read: {e.strerror or e}") from None
    except Exception:  # noqa: BLE001 - truncated zips, random bytes: torch raises many kinds
        raise UserError(f"{path} is damaged ({size:,} bytes that do not read as a checkpoint: "
                        "truncated or overwritten) and was not loaded") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a checkpoint (it holds a {type(state).__name__}, "
                        "not the dict traintop writes) and was not loaded")
    return state



RESUMED = ("model", "optimizer", "lr", "early_stopping", "epoch_loss", "history", "torch_rng")


def check_resumable(path: Path, state: dict[str, Any]) -> None:
    """What a resume reads of a checkpoint, each of its kind, and finite weights: a file damaged,
    edited or from elsewhere is a UserError naming it, before anything of the run changes."""
    def refuse(why: str):
        raise UserError(f"{path} {why}: the checkpoint is damaged or not this run's, and was not loaded")

    missing = [key for key in RESUMED if key not in state]
    if missing:
        refuse(f"has no {', '.join(map(repr, missing))}")
    for key in ("model", "optimizer", "lr", "early_stopping"):
        if not isinstance(state[key], dict):
            refuse(f"holds a {type(state[key]).__name__} for {key!r}")
    for key in ("step", "epoch", "batch"):
        if type(state.get(key)) is not int or state[key] < 0:
            refuse(f"says {key} {state.get(key)!r}, not a whole number >= 0")
    offset = state.get("events_offset")
    if offset is not None and (type(offset) is not int or offset < 0):
        refuse(f"says events_offset {offset!r}, not a position in events.jsonl")
    size = state.get("world_size", 1)
    if type(size) is not int or not 1 <= size <= 1 << 20:
        refuse(f"says world_size {size!r}")
    weights = [t for t in state["model"].values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not all(bool(torch.isfinite(t).all()) for t in weights):
        refuse("holds non-finite weights (NaN or infinity)")


def snapshot(state: Any) -> Any:
    """A copy of `state` that training can no longer change: every tensor copied to the CPU.

    From a CUDA device the copies go into pinned memory without waiting: `Checkpointer.write`
    records an event behind them, and its writer thread, not the training thread, waits for it.
    """
    if isinstance(state, torch.Tensor):
        t = state.detach()
        if t.device.type == "cuda":
            out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            return out.copy_(t, non_blocking=True)
        return t.to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: snapshot(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(v) for v in state)
    return state  # numbers, strings: immutable


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every floating-point value of `tensors` is finite: one fused pass, one sync.

    The largest magnitude of each tensor (norm of order inf) is NaN or inf exactly when the
    tensor holds one; unlike the 2-norm it never overflows on large finite weights.
    """
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in floats:
        by_device.setdefault(t.device, []).append(t)
    checks = [torch.isfinite(torch.stack(torch._foreach_norm(ts, float("inf")))).all().cpu()
              for ts in by_device.values()]
    return bool(torch.stack(checks).all())


@dataclass(frozen=True)
class Saved:
    """A checkpoint file now in place: what to announce."""

    path: Path
    kind: str  # best | last | periodic | manual
    step: int


@dataclass
class _Job:
    name: str
    state: dict
    kind: str
    step: int
    ready: Any = None  # a CUDA event the copies were recorded behind


class Checkpointer:
    """Writes a run's last.pt and best.pt off the training thread, one file at a time.

    At most one write is in flight; a newer state for a file replaces one still queued for it
    (the older was never going to be the latest). A failed write (DiskFull) is raised on the
    training thread by the next call.
    """

    def __init__(self, folder: Path):
        self.folder = folder  # the run's checkpoints/ folder
        self._cond = threading.Condition()
        self._queue: dict[str, _Job] = {}
        self._writing: _Job | None = None
        self._done: list[Saved] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.remove_temporaries()  # left by a writer that was killed mid-write

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.pt"

    def write(self, name: str, state: dict, kind: str, step: int) -> None:
        """Queue `state` (a `snapshot`, which nothing else changes) to become `<name>.pt`."""
        ready = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            ready = torch.cuda.Event()
            ready.record()
        with self._cond:
            self._raise_error()
            # A replaced state keeps its place in line, so a file rewritten often (best.pt)
            # never holds the other back for long.
            self._queue[name] = _Job(name, state, kind, step, ready)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="traintop-checkpoints", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def written(self) -> list[Saved]:
        """The files put in place since the last call; raises a failed write's error."""
        with self._cond:
            self._raise_error()
            done, self._done = self._done, []
            return done

    def wait(self) -> None:
        """Until every queued state is written; raises a failed write's error."""
        with self._cond:
            while self._queue or self._writing is not None:
                if self._error is not None:
                    break
                self._cond.wait()
            self._raise_error()

    def close(self) -> list[Saved]:
        """Finish the writes in flight and queued, stop the writer, remove temporary files.

        Returns what was written and not yet announced; a failed write's error is raised after
        the cleanup.
        """
        try:
            self.wait()
            return self.written()
        finally:
            with self._cond:
                self._closed = True
                self._queue.clear()
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join()
            self.remove_temporaries()

    def remove_temporaries(self) -> None:
        """Delete half-written checkpoint files (this run's writes are atomic renames)."""
        with contextlib.suppress(OSError):
            for tmp in self.folder.glob("*" + TEMP_SUFFIX):
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                name = next(iter(self._queue))
                job = self._writing = self._queue.pop(name)
            try:
                if job.ready is not None:
                    job.ready.synchronize()
                save_checkpoint(self.path(job.name), job.state)
            except BaseException as e:  # noqa: BLE001 - handed to the training thread
                with self._cond:
                    self._error = e
                    self._queue.clear()
                    self._writing = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._done.append(Saved(self.path(job.name), job.kind, job.step))
                self._writing = None
                self._cond.notify_all()
