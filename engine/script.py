"""A user's own script as the engine: `traintop run train.py` watches a script that never
imports traintop.

    python -m traintop.engine.script RUN_FOLDER SCRIPT.py [ARGS...]

Torch's global optimizer step hooks count the steps, read and scale the learning rate, measure the
gradient norms the optimizer is about to use, and hold the step boundary where commands apply:
pause blocks there, stop raises KeyboardInterrupt there (a script that catches it to save its work
ends as it would on Ctrl-C). The loss of each backward pass is captured by wrapping backward (a
step's loss is the mean of its backward passes). Optimizers that take a closure (LBFGS,
Lightning's automatic optimization) run forward and backward inside `step`, so there the norms
are measured after it. Nothing here changes the script's numbers. `TRAINTOP_AUTOWATCH=0` turns the
hooks off; a script that calls `traintop.watch` itself is watched through that instead.

Under torchrun every rank runs the script watched: rank 0 records the run, the others follow, and
at the first optimizer step (the script has joined its process group by then) the ranks start
applying every command at the same step.
"""

from __future__ import annotations

import gc
import io
import math
import os
import runpy
import signal
import sys
import warnings
from pathlib import Path

import torch

from .capture import LossCapture
from .errors import StopRequested, UserError
from .lrscale import LrScale
from .runstore import RunFolder, write_json

ENV_FOLDER = "TRAINTOP_RUN_FOLDER"  # a run folder made for the script: traintop.watch uses it


HANDOVER_STEPS = 20  # another optimizer stepping this often while the followed one does not takes over


class AutoWatch:
    """Global optimizer hooks that feed one watched run from whichever optimizer steps first.

    Every optimizer's step is a step boundary, where commands apply. The steps recorded are those
    of the optimizer followed: the first to step, until another steps HANDOVER_STEPS times while
    it does not (the script trains a second model after the first); that one is followed from
    then on, its steps numbered on from the first's. Optimizers that take turns (a GAN's) keep
    the first.
    """

    def __init__(self, run):
        self.run = run  # a WatchedRun, bound at the first optimizer step
        self.optimizer: torch.optim.Optimizer | None = None
        self.capture = LossCapture()
        self.norms: list[torch.Tensor] | None = None
        self.closure = False  # the followed optimizer's step was given a closure
        self.accumulates = 0  # N, once a step of N passes each divided by N was seen
        self.in_step = False  # inside the followed optimizer's step (between its hooks)
        self.interrupted: str | None = None  # a signal that came in the step: raised at its end
        self.stopped = False  # traintop asked the script to stop
        self.said_lossless = False  # the no_loss warning is given once
        self._handles = []
        self.active = False
        self.loader = None  # the DataLoader being iterated when the optimizer steps: the training data
        self._iterating = None  # the DataLoader whose batches are being drawn now
        self._original_iter = None
        self._others: dict[int, int] = {}  # id of another optimizer -> its steps since the followed one's last
        self.epoch_ended = False  # a training pass has ended an epoch; the next step begins the next

    def install(self) -> None:
        from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
        from torch.utils.data import DataLoader

        self.capture.__enter__()
        self._handles = [register_optimizer_step_pre_hook(self.before_step),
                         register_optimizer_step_post_hook(self.after_step)]
        self._original_iter = original = DataLoader.__iter__
        watcher = self

        def __iter__(loader):
            return watcher.batches(loader, original(loader))

        DataLoader.__iter__ = __iter__
        self.active = True
        _installed.append(self)

    def uninstall(self) -> None:
        from torch.utils.data import DataLoader

        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._original_iter is not None:
            DataLoader.__iter__ = self._original_iter
            self._original_iter = None
        self.capture.__exit__(None, None, None)
        self.active = False
        if self in _installed:
            _installed.remove(self)

    def batches(self, loader, iterator):
        """A DataLoader's batches as it yields them; the training loader's start is an epoch's start,
        its length the epoch's steps, its batches' sizes the samples trained."""
        from .watch import _batch_len

        run = self.run
        training = self.loader is not None and (loader is self.loader or loader.dataset is self.loader.dataset)
        if training:  # the training loader, or a new one over the same data (made afresh each epoch)
            if run.started and run.steps > run.epoch_end_step:
                run.end_epoch()  # the pass before trained: an epoch, which ends here
                self.epoch_ended = True  # the count moves on at the next step, not at a pass that only evaluates
            run.mark_epoch_start()
            self.loader = loader
        for batch in iterator:
            self._iterating = loader
            if training or loader is self.loader:  # in the first pass, the loader is known at the first step
                run.batch_samples = _batch_len(batch)
            yield batch

    def before_step(self, optimizer, args, kwargs) -> None:
        if self.optimizer is None:
            self.bind(optimizer)
        elif optimizer is not self.optimizer:
            if not any(scale.optimizer is optimizer for scale in self.run.extra_scales):
                # A second optimizer follows the same scale; its hooks, added now, run for this step.
                self.run.extra_scales.append(LrScale(optimizer, self.run.lr.scale))
            return
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        self.closure = closure is not None
        self.in_step = True
        # Without a closure, these are the gradients the optimizer is about to use.
        self.norms = None if closure is not None else self.run.recorder.gradients.layer_norms()

    def after_step(self, optimizer, args, kwargs) -> None:
        run = self.run
        if optimizer is not self.optimizer:
            self.capture.take()  # that optimizer's losses (a GAN's generator's): never the followed one's
            steps = self._others[id(optimizer)] = self._others.get(id(optimizer), 0) + 1
            if steps >= HANDOVER_STEPS:
                self.hand_over(optimizer)
            self.boundary()
            return
        self._others.clear()
        self.in_step = False
        if self.epoch_ended:
            self.epoch_ended = False
            run.session.epoch += 1
        norms, self.norms = self.norms, None
        if norms is None:  # a closure ran forward and backward inside the step
            norms = run.recorder.gradients.layer_norms()
        losses = self.capture.take()
        if len(losses) == 1 or self.closure and losses:  # one backward pass a step, the usual case: its loss
            # as it is; a closure evaluated several times (LBFGS's line search): its first, which
            # `step` returns, the loss at the weights the step started from
            loss = losses[0]
        elif losses:  # accumulation: the mean of the step's backward passes
            loss = torch.stack([x.float() for x in losses]).mean()
            # Each pass's loss divided by the number of passes: undone. An epoch's last, shorter group
            # counts once a whole group of that many was seen; a divisor of any other size (a batch
            # size, a token count) is the loss's own.
            n = round(self.capture.divided_by or 0)
            if n >= 2 and abs(self.capture.divided_by - n) < 1e-6 * n:
                if len(losses) == n:
                    self.accumulates = n
                if len(losses) == n or len(losses) < n == self.accumulates:
                    loss = loss * n
        else:  # gradients set with no backward pass in sight: a step without a loss, not a NaN one
            loss = torch.tensor(math.nan)
        step, recorded = run.recorder.first_step + run.recorder.n, run.steps
        run.record_step(loss, norms=norms, boundary=False)
        if not losses and run.steps > recorded:  # recorded (not skipped by a range test)
            run.lossless.add(step)
        if not losses and not self.said_lossless:
            self.said_lossless = True
            run.session.warn("no_loss", step=step, id="no_loss",
                             message=f"the optimizer stepped at step {step} with no backward pass traintop could "
                                     "see (its gradients were set another way), so such steps have no loss to "
                                     "record; their gradient norms and rates are recorded",
                             advice="to record the loss, call traintop.watch in the script and run.step(loss) "
                                    "before optimizer.step() (see the README)")
        self.boundary()
        if self.interrupted is not None:  # SIGINT or SIGTERM came during the step: now it is whole
            why, self.interrupted = self.interrupted, None
            raise KeyboardInterrupt(why)

    def boundary(self) -> None:
        """Commands apply here (pause holds here); a stop ends the script as Ctrl-C would."""
        run = self.run
        run.step_boundary()
        if run.should_stop and not self.stopped:
            self.stopped = True
            raise StopRequested()

    def hand_over(self, optimizer) -> None:
        """Follow `optimizer` from now on: the script has moved on to another model. The steps so
        far go out as they were; the new ones are numbered on from them, at the rate scale the user
        set, and the signals read the new model's curves afresh."""
        run = self.run
        run.session.flush()
        next_step, scale = run.recorder.first_step + run.recorder.n, run.lr.scale
        for follower in [s for s in run.extra_scales if s.optimizer is optimizer]:
            follower.remove()  # its own scale takes over: two would compound
            run.extra_scales.remove(follower)
        run.extra_scales.append(run.lr)  # the first keeps following the scale, should it step again
        self._others.clear()
        self.capture.take()  # the losses of steps not recorded are no step's to report
        self.bind(optimizer)
        run.recorder.first_step = next_step
        run.lr.scale = scale
        run.signals.restart(run.signals.layers)

    def take_over(self, model, optimizer, *, name, config, epochs, early_stopping):
        """The script called traintop.watch itself: that wins. The hooks come off and its run is
        this one, bound to what it passed."""
        global current
        from .watch import _json_safe, _shown_name

        if self.active:
            self.uninstall()
        current = None
        run = self.run
        run.config = {**run.config, **_json_safe(dict(config or {}))}
        run.epochs_planned = epochs or run.epochs_planned
        if name:
            run.name = _shown_name(name)
            if run.session.leader:  # the listing's name too, as run_started gives it
                meta = run.session.folder.read_json("meta.json") or {}
                write_json(run.session.folder.meta, {**meta, "name": run.name})
        if early_stopping is not None:
            run.set_early_stopping(early_stopping)
        run.session.source = "watch"
        run.bind(model, optimizer)
        return run

    def bind(self, optimizer) -> None:
        self.optimizer = optimizer
        self.loader = self._iterating
        if self.loader is not None:
            try:
                self.run.steps_per_epoch = len(self.loader)
            except TypeError:
                pass
        model, names = owning_module(optimizer)
        self.run.bind(model, optimizer, names=names)  # its scale's hooks, added now, run for this step


def owning_module(optimizer) -> tuple[torch.nn.Module | None, dict]:
    """The module whose trainable parameters the optimizer updates (the model): looked for in the
    frames that called the step (the training loop's locals and the script's globals), then among
    all live objects; else None, and a name for each parameter from the module holding most."""
    params = {id(p) for g in optimizer.param_groups for p in g["params"]}

    def best_of(candidates) -> tuple[torch.nn.Module | None, int]:
        best, best_count, best_size = None, 0, 0
        for obj in candidates:
            try:
                own = [p for p in obj.parameters() if p.requires_grad]
            except Exception:  # noqa: BLE001 - a half-built module
                continue
            count = sum(1 for p in own if id(p) in params)
            if count > best_count or (count == best_count and count and len(own) < best_size):
                best, best_count, best_size = obj, count, len(own)
        return best, best_count

    frame, seen = sys._getframe(1), []
    while frame is not None:
        seen += [v for v in list(frame.f_locals.values()) + list(frame.f_globals.values())
                 if isinstance(v, torch.nn.Module)]
        frame = frame.f_back
    best, count = best_of({id(m): m for m in seen}.values())
    if count < len(params):
        with warnings.catch_warnings():  # some objects warn when merely looked at (deprecated proxies)
            warnings.simplefilter("ignore")
            best, count = best_of([obj for obj in gc.get_objects() if isinstance(obj, torch.nn.Module)])
    if best is not None and count == len(params):
        return best, {}
    return None, ({p: n for n, p in best.named_parameters()} if best is not None else {})


EPOCH_FLAGS = ("--epochs", "--max-epochs", "--max_epochs", "--num-epochs", "--num_epochs", "--n-epochs",
               "--n_epochs", "--num-train-epochs", "--num_train_epochs")


def epochs_in(argv: list[str]) -> int | None:
    """The epochs a script was asked for, when its arguments say (`--epochs 20`), for progress."""
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in EPOCH_FLAGS:
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            try:
                epochs = int(float(value))
            except ValueError:
                return None
            return epochs if epochs > 0 else None
    return None


class NoInput(io.TextIOBase):
    """stdin of a script with no terminal to read from (under the dashboard, or detached): it
    answers what a program asks of it (isatty, encoding), and reading it says why there is
    nothing to read."""

    encoding = "utf-8"
    errors = "strict"

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> str:
        raise OSError("this script runs under traintop without a terminal (under the dashboard, or detached) and "
                      "has no standard input; run it with --headless to type into it")

    readline = read

    def fileno(self) -> int:
        return os.open(os.devnull, os.O_RDONLY)


current: AutoWatch | None = None  # the script's watch, while it has not bound an optimizer
_installed: list[AutoWatch] = []  # the watches whose hooks are in


def _unhook_in_child() -> None:
    """A forked child's optimizers are its own (a Pool worker training a model of its own): no
    hook of the parent's run follows them, and a traintop.watch there starts a run of its own
    rather than take the parent's over."""
    global current
    for auto in list(_installed):
        auto.uninstall()
    current = None


os.register_at_fork(after_in_child=_unhook_in_child)


def run_script(folder: RunFolder | None, script: Path, argv: list[str], name: str | None = None, printer=None,
               stdin: bool = True) -> int:
    """Run `script` as __main__ with `argv`, watched through its optimizer; the exit code.

    `folder`: None on a rank other than 0 that was not told rank 0's folder (it learns it later).
    """
    from .distributed import die_with_launcher, is_follower
    from .watch import WatchedRun, _json_safe, _live
    from .session import Session

    if not script.is_file():
        raise UserError(f"script {script} does not exist" if not script.exists() else f"{script} is not a file")
    autowatch_on = os.environ.get("TRAINTOP_AUTOWATCH", "1") != "0"
    config = {"script": str(script), "args": argv}
    die_with_launcher()
    if is_follower():  # rank 0 records the run
        name = script.stem
        session = Session.follower("script", folder)
    else:
        name = name or script.stem
        os.environ[ENV_FOLDER] = str(folder.path)
        session = Session.open(folder, name=name, source="script", config=config,
                               meta={"script": str(script.resolve()), "args": argv, "cwd": os.getcwd()})
    run = WatchedRun(session, None, None, name=name, config=_json_safe(config), epochs=epochs_in(argv),
                     early_stopping=None)
    auto = AutoWatch(run)
    session.serve(printer)
    _live.add(run)
    global current
    current = auto
    if autowatch_on:
        auto.install()
    if not stdin:
        sys.stdin = NoInput()
    sys.argv = [str(script), *argv]
    sys.path.insert(0, str(script.resolve().parent))
    code, error = 0, ""
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except KeyboardInterrupt as e:
        code = 143 if str(e) == "SIGTERM" else 130
    except BaseException as e:  # noqa: BLE001 - the script's own failure ends its run as failed
        import traceback

        # As `python SCRIPT.py` would show it: from the script's own frame, without traintop's and runpy's.
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != str(script):
            tb = tb.tb_next
        traceback.print_exception(type(e), e, tb)
        code, error = 1, f"{type(e).__name__}: {e}"
    finally:
        if auto.active:
            auto.uninstall()
    if session.closed:  # the script's own traintop.watch finished it
        return code
    if auto.stopped or run.session.stop_request is not None and code in (0, 1, 130):
        _live.discard(run)  # traintop asked it to stop: ended as asked, whatever its exit status
        run.finish("stopped")
        return 0
    if code in (130, 143):  # Ctrl-C or SIGTERM: stopped by the user, as a config run would be
        _live.discard(run)
        # last.pt first, as a config run's stop saves it; not from inside the optimizer's step (half
        # its update done), nor on several ranks, whose saving is collective and each was stopped
        # wherever the signal found it
        run.finish("stopped", save=not auto.in_step and run.session.world is None)
        return code
    if run.recorder is None and code == 0:  # a script that failed says why itself (below)
        message = ("the script finished without a torch.optim optimizer step, so there was nothing to "
                   "watch; a loop that updates its weights another way can be watched only through "
                   "traintop.watch (see the README)")
        if not autowatch_on:
            run.finish("completed")
            return 0
        print(f"traintop: {message}", file=sys.stderr)
        run.finish("failed", message)
        return 1
    if auto.loader is not None and run.steps > run.epoch_end_step:
        run.end_epoch()
    if code == 0:
        run.finish("completed")
    else:
        run.finish("failed", error or f"the script exited with status {code}")
    return code


def _stop_on_signal(sig, frame) -> None:
    """SIGINT or SIGTERM: stop the script as Ctrl-C would (its own handlers and `finally` blocks
    run), but not inside the followed optimizer's step, whose update would be left half done:
    there, at its end. A second signal while one waits stops it at once."""
    why = "SIGTERM" if sig == signal.SIGTERM else ""
    for auto in _installed:
        if auto.in_step and auto.interrupted is None:
            auto.interrupted = why
            return
    raise KeyboardInterrupt(why)


def stop_on_signals() -> None:
    """SIGTERM, and SIGINT unless something else handles it, stop a watched script (`_stop_on_signal`)."""
    signal.signal(signal.SIGTERM, _stop_on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _stop_on_signal)


def main(argv: list[str]) -> int:
    """`python -m traintop.engine.script [--no-stdin] [--name NAME] RUN_FOLDER SCRIPT.py [ARGS...]`."""
    stdin, name = True, None
    if argv and argv[0] == "--no-stdin":
        stdin, argv = False, argv[1:]
    if argv and argv[0] == "--name":
        name, argv = argv[1], argv[2:]
    folder, script, *rest = argv

    stop_on_signals()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return run_script(RunFolder(Path(folder)) if folder != "-" else None, Path(script), rest, name=name, stdin=stdin)


if __name__ == "__main__":
    # Run as the imported module, not as __main__: traintop.watch looks for the script's watch in
    # traintop.engine.script, and a second copy of this module would hold it where it never looks.
    from traintop.engine.script import main as _main

    sys.exit(_main(sys.argv[1:]))
