"""Starting an engine: in this process, in the background, or behind the dashboard.

An engine is a process that trains one run folder: a config run's (`traintop run CONFIG`), a
resumed run's, or a watched script's (`traintop run train.py`). This module starts one the three
ways a user asks for, on one process or, through torch.distributed.run, on several.

    engine = config_engine(folder, config, overrides)   # or resumed_engine(...), script_engine(...)
    engine = on_ranks(engine, launch)                   # --nproc-per-node N: the same engine on N processes
    detach(engine)                              # background; returns once it serves its socket
    with_dashboard(engine)                      # the dashboard attached; the engine started behind it
    foreground(engine)                          # ranks launched here, headless, their output in this terminal
"""

from __future__ import annotations

import errno
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from traintop.engine.errors import UserError

EXIT_CODES = {"completed": 0, "early_stopped": 0, "stopped": 0, "failed": 1}
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
START_SECONDS = 120  # how long `--detach` waits for an engine to serve its socket


@dataclass
class Engine:
    """How to start the engine of one run folder: the arguments after `python`."""

    folder: object  # RunFolder; None for the ranks of a machine other than node 0 (rank 0 has it)
    argv: list[str]
    created: bool = True  # the folder was made for this start: removed again if nothing started in it
    lock: object = field(default=None, repr=False)  # the folder's RunLock, handed to the engine

    def take(self) -> None:
        """Lock the folder now (UserError when another process has it): before a dashboard opens,
        a folder in use is refused at once."""
        if self.lock is None:
            self.lock = self.folder.lock()

    def spawn(self) -> subprocess.Popen:
        """Start the engine in its own session, its output to the run's engine.log; the lock
        goes with it, so no other writer can slip in between."""
        self.take()
        try:
            with open(self.folder.log, "ab") as log:
                return subprocess.Popen([sys.executable, *self.argv], stdin=subprocess.DEVNULL, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True, cwd=Path.cwd(),
                                        pass_fds=(self.lock.fd,), env=self.lock.child_env())
        finally:
            self.lock.close()  # the engine holds the folder now (or nobody, if it could not start)

    def forget(self) -> None:
        """Nothing started: release the folder, and remove it if it was made for this start."""
        if self.lock is not None:
            self.lock.close()
        if self.created:
            shutil.rmtree(self.folder.path, ignore_errors=True)


def config_engine(folder, config: str | None, overrides: list[str], name: str | None = None) -> Engine:
    """A config run's engine (`traintop run CONFIG --headless --into FOLDER`)."""
    argv = ["-m", "traintop.tui", "run", *([str(Path(config).resolve())] if config else []),
            *[x for o in overrides for x in ("--set", o)], "--headless",
            *(["--into", str(folder.path)] if folder is not None else [])]
    if name:
        argv += ["--name", name]
    return Engine(folder, argv)


def lr_find_engine(folder, args) -> Engine:
    """`traintop lr-find [CONFIG]`'s engine behind a dashboard (`... --headless --into FOLDER`)."""
    argv = ["-m", "traintop.tui", "lr-find", *([str(Path(args.config).resolve())] if args.config is not None else []),
            *[x for o in args.overrides for x in ("--set", o)], "--lr-min", repr(args.lr_min), "--lr-max",
            repr(args.lr_max), "--steps", str(args.steps), "--headless", "--into", str(folder.path),
            *(["--runs-dir", str(args.runs_dir.resolve())] if args.runs_dir else [])]
    return Engine(folder, argv)


def resumed_engine(folder, overrides: list[str], trust: bool = False, spec: str = "") -> Engine:
    """A resumed run's engine; its folder is never this start's to remove. Without a folder (the
    ranks of a machine other than node 0), `spec` names the run: node 0's rank 0 reads it."""
    where = [str(folder.path), "--into", str(folder.path)] if folder is not None else [spec]
    argv = ["-m", "traintop.tui", "resume", where[0], *[x for o in overrides for x in ("--set", o)],
            "--headless", *where[1:], *(["--trust"] if trust else [])]
    return Engine(folder, argv, created=False)


def script_engine(folder, script: Path, script_args: list[str], name: str) -> Engine:
    """A user's script as the engine, watched, as run `name`; it has no standard input behind a
    dashboard. Without a folder (`-`: a machine other than node 0), its ranks learn rank 0's."""
    return Engine(folder, ["-m", "traintop.engine.script", "--no-stdin", "--name", name,
                           str(folder.path) if folder else "-", str(script.resolve()), *script_args])


def script_here_engine(folder, script: Path, script_args: list[str], name: str) -> Engine:
    """A user's script watched in the engine's own process with log lines on its output
    (`traintop run train.py --headless --into FOLDER -- ARGS`): the ranks launched in this terminal."""
    return Engine(folder, ["-m", "traintop.tui", "run", str(script.resolve()), "--headless", "--name", name,
                           *(["--into", str(folder.path)] if folder is not None else []), "--", *script_args])


def launch_of(args):
    """The launch of several processes the flags ask for (`--nproc-per-node`...), checked; None for
    one process, and for a process a launcher already started (the user's own torchrun)."""
    from traintop.engine.distributed import Launch, placement

    how = Launch.of(getattr(args, "nproc_per_node", None), getattr(args, "nnodes", None),
                    getattr(args, "node_rank", None), getattr(args, "rdzv_endpoint", None))
    if placement() is not None:
        if getattr(args, "detach", False):
            raise UserError("--detach: this process is a rank that torchrun started and keeps in the "
                            "foreground; start torchrun itself in the background instead")
        return None
    return how


def on_ranks(engine: Engine, how) -> Engine:
    """`engine` on `how.nproc_per_node` processes (ranks) per machine through torch.distributed.run:
    standalone rendezvous on one machine, no restarts. The launcher holds the run folder for rank 0."""
    folder = str(engine.folder.path) if engine.folder is not None else None
    return Engine(engine.folder, how.argv(folder, engine.argv), created=engine.created)


def start(engine: Engine, detached: bool, dashboard: bool) -> int:
    """Start `engine` as the user asked: in the background, behind the dashboard, or here (ranks)."""
    if engine.folder is None:  # a machine other than node 0: its ranks follow node 0's rank 0
        if detached or dashboard:
            print("traintop: the ranks of this machine train here, headless; the dashboard and --detach "
                  "are node 0's, whose rank 0 serves the run", file=sys.stderr)
        return foreground(engine)
    if detached:
        return detach(engine)
    if dashboard:
        return with_dashboard(engine)
    return foreground(engine)


def foreground(engine: Engine) -> int:
    """Launch the ranks here, headless: their output in this terminal. Ctrl-C reaches the launcher
    too, which stops every rank after its step (last.pt saved); SIGTERM is passed on to it."""
    folder = engine.folder
    options = {}
    if folder is not None:
        engine.take()
        options = {"pass_fds": (engine.lock.fd,), "env": engine.lock.child_env()}
    try:
        proc = subprocess.Popen([sys.executable, *engine.argv], cwd=Path.cwd(), **options)
    finally:
        if engine.lock is not None:
            engine.lock.close()  # the launcher holds the folder now (or nobody, if it could not start)
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda sig, frame: proc.send_signal(sig))}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == 2 and folder is not None and engine.created and not folder.meta.exists():
        shutil.rmtree(folder.path, ignore_errors=True)  # bad input: no run to keep
    return code


def detach(engine: Engine) -> int:
    """Start the engine in the background; return once it serves its control socket (or has
    failed, showing why)."""
    from traintop.engine.runstore import socket_is_live

    folder = engine.folder
    proc = engine.spawn()
    deadline = time.monotonic() + START_SECONDS
    while not (folder.socket.exists() and socket_is_live(folder.socket)):
        code = proc.poll()
        if code is not None:
            tail = folder.log.read_text(errors="replace").strip().splitlines()[-5:]
            print("\n".join(tail), file=sys.stderr)
            if code == 2 and engine.created and not folder.meta.exists():  # bad input: no run to keep
                shutil.rmtree(folder.path, ignore_errors=True)
            return code
        if time.monotonic() > deadline:
            print(f"traintop: the engine has not started after {START_SECONDS} s; see {folder.log}", file=sys.stderr)
            return 1
        time.sleep(0.05)
    print(f"{folder.run_id}  training in the background (pid {proc.pid})")
    print(f"  attach:  traintop attach {folder.run_id}")
    print(f"  steer:   traintop ctl {folder.run_id} pause|resume|stop|validate|checkpoint|lr VALUE")
    print(f"  log:     {folder.log}")
    return 0


def with_dashboard(engine: Engine) -> int:
    """`traintop run` in a terminal: the engine in its own process, the dashboard attached to it."""
    from .app import TrainTop

    folder = engine.folder
    started: list[subprocess.Popen] = []

    async def opener():
        # The engine starts once the dashboard's first frame is up: importing torch beside it
        # would hold that frame back on a small machine.
        from traintop.engine.client import LiveRun  # after the first frame, as the engine
        from traintop.engine.runstore import socket_is_live

        if not started:
            started.append(engine.spawn())
            app.engine_pid, app.engine_proc = started[0].pid, started[0]
        if not (folder.socket.exists() and socket_is_live(folder.socket)):
            if started[0].poll() is not None and folder.report.exists():
                # It ended, run_finished and report.json written, before the dashboard connected
                # (a short lr-find): its log has it all. An engine that died before its end is
                # the dashboard's to report, with the tail of its output.
                from traintop.engine.client import FinishedRun

                return FinishedRun(folder)
            raise UserError("waiting for the engine")
        return await LiveRun.connect(folder)

    # First: a bad keymap is refused before the run folder is taken. The engine's output is its log,
    # which the Output tab follows from the start.
    app = TrainTop(opener, title=folder.run_id, log_path=str(folder.log))
    engine.take()
    outcome = app.run()
    if not started:  # the dashboard closed before the engine was started: there is no new run
        engine.forget()
        return 0
    proc = started[0]
    if outcome == "train":  # lr-find's key, once the test has ended: the real run, with its rate
        proc.wait()
        from .cli import dispatch

        return dispatch(app.next_run)
    if outcome == "detached":
        print(f"{folder.run_id} goes on training in the background (pid {proc.pid}).")
        print(f"  attach again:  traintop attach {folder.run_id}")
        return 0
    code = app.engine_exit if app.engine_exit is not None else proc.wait()
    if code == 2 and (not engine.created or not folder.meta.exists()):
        lines = folder.log.read_text(errors="replace").strip().splitlines()
        if lines:
            print(lines[-1], file=sys.stderr)
    if code == 2 and engine.created and not folder.meta.exists():
        shutil.rmtree(folder.path, ignore_errors=True)
    for line in report_lines(folder):
        print(line)
    if code < 0:  # killed by a signal (the OOM killer, kill -9): no report; say so, and how it goes on
        from traintop.engine.runstore import killed_note

        from .format import signal_name

        print(f"traintop: the engine was killed by {signal_name(-code)}; {killed_note(folder)}", file=sys.stderr)
        return 1
    return code


def run_engine(run) -> int:
    """A config run's engine in this process: train on this thread; beside it, serve the
    control socket and print log lines.

    SIGINT / SIGTERM stop the run after the current step, saving last.pt first.
    """
    from traintop.engine.commands import Stop

    from .headless import HeadlessPrinter

    printer = HeadlessPrinter()
    printer.folder = str(run.folder.path)
    received: list[int] = []

    def on_signal(sig, frame):
        if received:  # a second Ctrl-C: the user wants out now
            sys.exit(SIGNAL_EXIT[sig])
        received.append(sig)
        print(f"\n{signal.Signals(sig).name}: stopping after this step and saving last.pt "
              "(again to quit at once)", file=sys.stderr, flush=True)
        # The handler runs on the training thread, which may hold the inbox lock right now.
        threading.Thread(target=run.send_nowait, args=(Stop(save=True),), daemon=True).start()

    for sig in SIGNAL_EXIT:
        signal.signal(sig, on_signal)
    # A closed terminal must not end the training: log lines stop, the run goes on.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    run.serve(printer)
    status = run.train()  # the control socket is gone when this returns
    run.close()
    if run.failure is not None:
        say_disk_full(run)
    if received:
        return SIGNAL_EXIT[received[0]]
    return EXIT_CODES.get(status, 1)


def run_script_here(folder, script: Path, script_args: list[str], name: str) -> int:
    """A watched script in this process (`--headless`): its own output passes through untouched,
    traintop's log lines go through the terminal guard beside it. SIGTERM stops it as Ctrl-C does."""
    from traintop.engine.script import run_script, stop_on_signals

    from .headless import HeadlessPrinter
    from .terminal import LineGate, SafeStream

    for which in ("stdout", "stderr"):  # the script's own text is its own: colours, progress bars
        stream = getattr(sys, which)
        if isinstance(stream, SafeStream):
            setattr(sys, which, stream.stream)
    sys.stdout = gate = LineGate(sys.stdout)  # traintop's lines wait for the end of the script's
    printer = HeadlessPrinter(SafeStream(gate.beside()))
    printer.folder = str(folder.path) if folder is not None else ""

    stop_on_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal must not end the training
    return run_script(folder, script, script_args, name=name, printer=printer)


def say_disk_full(run) -> None:
    """One line: which disk filled, what of the run's end could not be written, how to go on."""
    lost = f"; could not write {' or '.join(run.unrecorded)}" if run.unrecorded else ""
    step = run.saved_step
    fix = "raise the file size limit" if run.failure.errno == errno.EFBIG else "free some space"
    then = (f"; {fix}, then `traintop resume {run.run_id}` continues from step {step}"
            if step is not None else "; it saved no checkpoint to resume from")
    try:
        print(f"traintop: error: {run.failure}{lost}{then}", file=sys.stderr, flush=True)
    except OSError:  # stderr is a file on the same full disk (a detached run's engine.log)
        pass


def report_lines(folder) -> list[str]:
    """A finished run in a few lines, as the headless log ends: status, best, test, folder."""
    from .headless import fmt, metrics_text

    try:
        report = folder.read_json("report.json") or {}
    except UserError as e:
        return [f"traintop: {e}"]
    if not report:
        return []
    lines = [f"{folder.run_id}: {str(report.get('status', '?')).replace('_', ' ')}"]
    best = report.get("best")
    if isinstance(best, dict) and isinstance(best.get("value"), (int, float)):
        lines.append(f"  best    {best.get('monitor', '')} {fmt(best['value'])} at epoch {best.get('epoch')}"
                     f" (step {best.get('step')})")
    test = report.get("test")
    if isinstance(test, dict) and test:
        lines.append(f"  test    {metrics_text(test)}")
    lines.append(f"  folder  {folder.path}")
    return lines
