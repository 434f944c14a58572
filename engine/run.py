"""A training run: its folder, its loop thread, and its async face.

    run = Run.prepare(config)         # data, model, run folder (UserError on bad input)
    run.start()
    async for event in run.events():  # history first, then live, until run_finished
        ...
    reply = await run.send(Pause())
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import traceback
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import AsyncIterator

import torch

from . import commands as cmd
from . import events as ev
from .checkpoint import check_resumable, load_checkpoint
from .config import Config
from .data import load_data
from .distributed import World, placement, threads_per_rank
from .errors import DiskFull, NonFiniteLoss, UserError
from .loop import Model, Trainer
from .models import describe_layers
from .resume import check_log, check_same_data, event_of, resume_config
from .runstore import RunFolder, RunLock, default_runs_dir, read_events, write_json, write_text
from .session import EventLog, Session


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


def on_device(cfg: Config, world) -> torch.device:
    """The device this process trains on, with PyTorch's CPU threads set for it: on several
    ranks, each rank's own GPU or its share of the cores."""
    if world is None:
        set_threads(cfg.run.threads)
        return resolve_device(cfg.run.device)
    set_threads(threads_per_rank(cfg.run.threads, world.local_size))
    return world.device_for(cfg.run.device)


def ranks_meta(world) -> dict:
    """What meta.json says of a run on several ranks: how many, so that it resumes on as many."""
    if world is None:
        return {}
    place = placement()
    nnodes = place.nnodes if place is not None else 1
    return {"world_size": world.size, "nnodes": nnodes, "nproc_per_node": world.size // nnodes}


class Run:
    """A config run: its Trainer on its Session, from prepared data to its report."""

    def __init__(self, cfg: Config, trainer: Trainer, session: Session):
        self.cfg = cfg
        self.trainer = trainer
        self.session = session
        self.folder = session.folder
        self.resumed_from: int | None = None  # the step a resumed run continues from
        self.resume_note = ""  # what the resume changed, in words
        self._thread: threading.Thread | None = None

    @classmethod
    def prepare(cls, cfg: Config, runs_dir: Path | None = None, folder: RunFolder | None = None,
                source: str = "config") -> Run:
        """Load the data and build the model, then create the run folder. Bad input: UserError.

        `folder`: an existing, empty run folder to use (a detached run's parent made it);
        `source`: what the folder records (`lr_find` for a learning-rate range test). Started
        by a launcher of several ranks, every rank trains and rank 0 alone makes the folder.
        """
        world = World.start()

        def build():  # a model that cannot be built fails here, before any folder exists
            data = load_data(cfg)
            device = on_device(cfg, world)
            return data, device, Model(cfg, data, device)

        data, device, model = build() if world is None else world.ready(build)  # on every rank, or on none

        def make() -> Session:
            made = folder or RunFolder.create(runs_dir or default_runs_dir(), cfg.run.name)
            lock = made.lock()
            try:
                write_json(made.preprocess, data.preprocess.to_json())
                return Session.open(made, name=cfg.run.name, source=source, config=cfg.to_dict(), lock=lock,
                                    meta={"seed": cfg.run.seed, "device": str(device),
                                          "threads": torch.get_num_threads(), "config_dir": str(cfg.base_dir),
                                          **ranks_meta(world)})
            except BaseException:
                lock.close()
                raise

        if world is None:
            session = make()
        else:
            made = world.share(make, wire=lambda s: str(s.folder.path))
            session = made if world.leader else Session.follower(source, RunFolder(Path(made)))
            session.join(world, cfg.train.sync_every)
        return cls(cfg, Trainer(cfg, data, device, session, model), session)

    @classmethod
    def resume(cls, folder: RunFolder, overrides: list[str] = (), trust: bool = False) -> Run:
        """A stopped, killed, failed or finished run, ready to continue from checkpoints/last.pt.

        `overrides` (`--set KEY=VALUE`) change the run's config from here on: more epochs, a
        lower learning rate; `trust` lets it import a Python model or data from a folder that is
        not the user's own, in place. The folder is locked first, and nothing in it changes until
        every check has passed. A run of several ranks resumes on as many (rank 0 reads the folder
        and hands every rank what it needs).
        """
        world = World.start()
        if world is not None and not world.leader:
            return cls._resume(folder, None, list(overrides), world, trust)
        lock = folder.lock()
        try:
            return cls._resume(folder, lock, list(overrides), world, trust)
        except BaseException:
            lock.abandon()
            raise

    @classmethod
    def _resume(cls, folder: RunFolder, lock: RunLock | None, overrides: list[str], world,
                trust: bool = False) -> Run:
        def checked():
            cfg, keys, status = resume_config(folder, overrides, trust)
            state = load_checkpoint(folder.last)
            check_resumable(folder.last, state)
            check_log(folder, state.get("events_offset"))
            if cfg.train.epochs < state["epoch"]:
                raise UserError(f"run {folder.run_id} has already trained {state['epoch']} epochs; "
                                f"train.epochs = {cfg.train.epochs} would leave nothing to train")
            trained, size = state.get("world_size", 1), world.size if world is not None else 1
            if trained != size:
                raise UserError(f"run {folder.run_id} was trained on {trained} process(es) and this resume runs on "
                                f"{size}: each process's data order and random state continue only on as many; "
                                f"resume it with --nproc-per-node {trained}" if trained > 1 else
                                f"run {folder.run_id} was trained in one process; resume it without --nproc-per-node")
            return cfg, keys, status, state

        cfg, keys, status, state = checked() if world is None else world.share(checked if world.leader else None)
        def build():
            data = load_data(cfg)
            check_same_data(folder, data.summary(cfg.data.batch_size))
            return data, on_device(cfg, world)

        data, device = build() if world is None else world.ready(build)  # on every rank, or on none
        if world is None or world.leader:
            session = Session(folder, source="config", lock=lock)
        else:
            session = Session.follower("config", folder)
        if world is not None:
            session.join(world, cfg.train.sync_every)
        trainer = Trainer(cfg, data, device, session)
        try:
            trainer.load_state_dict(state, map_location=device)
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as e:
            raise UserError(misfit(folder, e)) from None
        notes = _apply_overrides(trainer, cfg, keys)
        if status == "early_stopped":
            trainer.early.since_best = 0
            notes.append(f"early stopping counts again from here (patience {trainer.early.patience})")
        run = cls(cfg, trainer, session)
        run.resumed_from = trainer.step
        run.resume_note = "; ".join(notes)
        if not session.leader:
            return run
        # Events logged after the checkpoint describe training that is now done again.
        session.log.close()
        last_t = _truncate_log(folder.events, state.get("events_offset"))
        session.log = EventLog(folder)
        folder.report.unlink(missing_ok=True)
        entry = {"at": datetime.now().isoformat(), "step": trainer.step, "pid": os.getpid(),
                 "from": status or "killed"}
        if keys:
            entry["set"] = keys
        meta = folder.read_json("meta.json") or {}
        meta.setdefault("resumes", []).append(entry)
        meta["pid"] = os.getpid()
        write_json(folder.meta, meta)
        if overrides:
            write_text(folder.config, cfg.to_toml())
        session.log.notable = [e for e in read_events(folder.events)[0] if not isinstance(e, ev.Steps)]
        trainer.tested_at = [e.step for e in session.log.notable if isinstance(e, ev.TestResult)]
        session.t0 -= last_t
        return run

    # -- what the CLI and front ends use --------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self.folder.run_id

    @property
    def failure(self) -> DiskFull | None:
        return self.session.failure

    @property
    def unrecorded(self) -> list[str]:
        return self.session.unrecorded

    @property
    def saved_step(self) -> int | None:
        return self.session.saved_step

    def close(self) -> None:
        """Release the run folder for another process; the end of this process does the same.
        On several ranks, the process group ends too (unless a rank failed)."""
        self.session.release()
        if self.session.world is not None:
            self.session.world.close()

    def subscribe(self, callback) -> int:
        return self.session.subscribe(callback)

    def unsubscribe(self, callback) -> None:
        self.session.unsubscribe(callback)

    def events(self) -> AsyncIterator[ev.Event]:
        """Every event of the run: its history so far, then live ones, ending with run_finished."""
        return self.session.events()

    def send_nowait(self, command: cmd.Command) -> Future:
        """Queue a command for the next step boundary; the future gets the Reply."""
        return self.session.send_nowait(command)

    async def send(self, command: cmd.Command) -> cmd.Reply:
        """Apply a command at the next step boundary and return the engine's Reply."""
        return await self.session.send(command)

    async def wait(self) -> str:
        """Wait for the run to finish; its final status."""
        return await self.session.wait()

    def serve(self, printer=None) -> None:
        """The control socket (and `printer`'s log lines) on a thread of their own."""
        self.session.serve(printer)

    # -- the thread ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start training on a thread of its own; for front ends that keep the main thread."""
        self._thread = threading.Thread(target=self.train, name="traintop-loop", daemon=True)
        self._thread.start()

    def train(self) -> str:
        """Train in the calling thread until the run finishes; its final status.

        The CLI trains on the main thread: PyTorch's CPU thread pool runs about 3x slower when a
        second thread drives it after the main thread has used it (measured on the digits MLP).
        """
        t, session = self.trainer, self.session
        if self.resumed_from is None:
            session.t0 = time.monotonic()
            session.emit(
                ev.RunStarted, t=0.0, run_id=self.run_id, name=self.cfg.run.name, config=self.cfg.to_dict(),
                device=str(t.device), params=sum(p.numel() for p in t.params),
                data=t.data.summary(self.cfg.data.batch_size),
                epochs=self.cfg.train.epochs, steps_per_epoch=t.steps_per_epoch,
                layers=describe_layers(t.model), world_size=session.world_size, source="config",
                signals=t.signals.settings_json())
            for kind, message in [*self.cfg.warnings, *t.data.warnings]:
                session.warn(kind, message, step=0)
            t.policies.announce()
        else:
            session.emit(ev.Resumed, step=t.step, source="checkpoint", epochs=self.cfg.train.epochs,
                         note=self.resume_note)
        error, trained = "", False
        try:
            try:
                status = t.fit()
                trained = True  # what fails after this (the test, on the best weights) leaves last.pt alone
                t.finish(status)
            except NonFiniteLoss as e:
                status, error = "failed", str(e)
                t.finish("failed")  # best.pt, and the periodic write in flight: both finite
                kept = (f"; checkpoints/last.pt keeps step {session.saved_step}, the last finite weights"
                        if session.saved_step is not None else "")
                again = (f"resume with a lower rate (traintop resume {self.run_id} --set optim.lr=...)"
                         if session.saved_step is not None else "lower optim.lr")
                seen = f" at step {t.step}, where the steps were next read" if t.step > e.step else ""
                session.warn("nan_loss", step=e.step, id="nan_loss",
                             message=f"the {e.what} became non-finite at step {e.step}; stopped{seen}{kept}",
                             advice=f"{again}, clip gradients (train.grad_clip), or set train.on_nan = "
                                    "\"skip\" to skip such updates")
        except DiskFull as e:
            status, error, session.failure = "failed", session.fail(e, str(e)), e
        except Exception as e:  # noqa: BLE001 - a failed run must still finish its log
            status, error = "failed", session.fail(e, f"{type(e).__name__}: {e}")
            if session.world is None or error.startswith(f"rank {session.world.rank} failed"):
                traceback.print_exc(file=sys.stderr)
            else:  # another rank's failure: that rank says why
                session.world.say(f"ending: {error}")
            if session.world is None and not trained:  # on several ranks a save is collective, and a rank is gone
                t.salvage()
        return session.close(status, error, step=t.step, epoch=t.epoch_of_last_step, name=self.cfg.run.name,
                             epochs=t.epoch)


def misfit(folder: RunFolder, error: Exception) -> str:
    """Why a checkpoint that reads as one does not fit the run the config builds now."""
    shapes = re.search(r"size mismatch for ([\w.]+): copying a param with shape (torch.Size\(\[[\d, ]*\]\)) from "
                       r"checkpoint, the shape in current model is (torch.Size\(\[[\d, ]*\]\))", str(error))
    if shapes:
        name, saved, now = shapes.groups()
        return (f"{folder.last} does not fit the model the config builds now ({name}: {saved[11:-1]} saved, "
                f"{now[11:-1]} now): has the data changed since it trained (its classes or columns)? It was not "
                "loaded; start a new run on the new data")
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return f"{folder.last} does not fit this run ({first[:300]}): it was not loaded"


def _apply_overrides(trainer: Trainer, cfg: Config, keys: dict) -> list[str]:
    """Put a resume's --set values over the state its checkpoint restored; what changed, in words."""
    notes = []
    for group in trainer.optimizer.param_groups:  # the checkpoint restored the old values
        if "weight_decay" in group:
            group["weight_decay"] = cfg.optim.weight_decay
        if cfg.optim.name == "sgd":
            group["momentum"] = cfg.optim.momentum
    if "optim.lr" in keys:
        trainer.lr_scale.scale = 1.0  # the new base rate is the rate: live changes before are dropped
        notes.append(f"learning rate {cfg.optim.lr:g}")
    for key in ("enabled", "patience", "min_delta"):
        if f"early_stopping.{key}" in keys:
            setattr(trainer.early, key, getattr(cfg.early_stopping, key))
    if "train.epochs" in keys:
        notes.append(f"training to epoch {cfg.train.epochs}")
    notes += [f"{k} = {v}" for k, v in keys.items() if k not in ("optim.lr", "train.epochs")]
    return notes


def _truncate_log(path: Path, offset: int | None) -> float:
    """Cut events.jsonl back to `offset` (or its last whole line); the `t` of its last event.

    A test result after the offset stays: it measured the end of training that is not done
    again (a finished run extended by `resume`), and the first test is the run's score.
    """
    with open(path, "rb+") as f:
        data = f.read()
        end = offset if offset is not None and offset <= len(data) else data.rfind(b"\n") + 1
        kept = [line for line in data[end:].splitlines() if isinstance(event_of(line), ev.TestResult)]
        f.truncate(end)
        f.seek(end)
        f.write(b"".join(line + b"\n" for line in kept))
    for line in reversed(data[:end].splitlines() + kept):
        event = event_of(line)
        if event is not None:
            return float(event.t)
    return 0.0
