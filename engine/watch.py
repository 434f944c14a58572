"""`traintop.watch`: a training loop of the user's own, recorded and steered like a config run.

    run = traintop.watch(model, optimizer, name="mnist-cnn", config=vars(args))
    for epoch in range(epochs):
        for xb, yb in run.iter(train_loader, epoch=epoch):
            loss = loss_fn(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            run.step(loss)          # after backward, before optimizer.step()
            optimizer.step()
            scheduler.step()
            if run.should_stop:
                break
        run.validate(val_loss=v, accuracy=a)
    run.finish()

Under torchrun, call it on every rank once the process group is initialized: rank 0 records and
serves the run, every rank applies each command at the same step (`run.step` is where), and
`should_stop` agrees on all of them. `run.validate` averages each rank's numbers.
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import numbers
import operator
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from . import commands as cmd
from . import events as ev
from .checkpoint import all_finite, snapshot
from .config import SignalsConfig, build_config, show_value
from .distributed import World, unwrap
from .early_stopping import EarlyStopping
from .errors import StopRequested, UserError
from .gradients import Gradients
from .lrscale import LrScale
from .models import describe_layers
from .policies import ValidationPolicies
from .precision import pending_scale
from .recorder import StepRecorder, one_number
from .runstore import RunFolder, check_runs_dir, default_runs_dir
from .session import Session
from .signals import Signals, settings_from
from .timing import LOOP_PHASES, PhaseTimer

_live: weakref.WeakSet = weakref.WeakSet()  # runs the exit handler finishes


def watch(model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None = None, *,
          name: str | None = None, config: dict | None = None, epochs: int | None = None,
          early_stopping: dict | None = None, checkpoint_every_seconds: float = 120,
          runs_dir: str | Path | None = None, source: str = "watch",
          folder: str | Path | None = None, signals: dict | None = None, sync_every: int = 1,
          scaler=None) -> WatchedRun:
    """Start recording and serving a run of your own loop; returns the run to call `step` on.

    `model` gives the layers whose gradient norms are recorded; `optimizer` the learning rate
    (changed live as a scale around its steps); `config` (any dict) is recorded with the run;
    `epochs` (or `config["epochs"]`) lets the dashboard show progress and an ETA;
    `early_stopping=dict(monitor="val_loss", patience=5)` turns early stopping on;
    `checkpoint_every_seconds` saves last.pt that often (through `run.on_checkpoint`'s function
    when one is registered; 0 = off); `signals` sets the thresholds of the live diagnoses, with
    the keys of a config's [signals] section (`signals=dict(spike_mads=40)`; `enabled=False` is off).
    Under torch.distributed, every rank calls it (after init_process_group); `sync_every` is how
    many steps apart the ranks exchange commands. `scaler`: the loop's `torch.amp.GradScaler`, so
    that the gradient norms are recorded unscaled even when `run.step` comes before `scaler.unscale_`.
    """
    if model is None and optimizer is None:
        raise UserError("watch needs the model, the optimizer, or both")
    if model is not None and not isinstance(model, torch.nn.Module):
        raise UserError(f"watch: model is {show_value(model)}; give a torch.nn.Module (or None)")
    if optimizer is not None and not isinstance(getattr(optimizer, "param_groups", None), list):
        raise UserError(f"watch: optimizer is {show_value(optimizer)}; give a torch.optim.Optimizer (or None)")
    params = [*(model.parameters() if model is not None else ()),
              *(p for g in (optimizer.param_groups if optimizer is not None else ()) for p in g.get("params", ()))]
    if any(isinstance(p, torch.Tensor) and p.is_meta for p in params):
        raise UserError("watch: the model's parameters are on the meta device (made but not materialised): call "
                        "watch once they hold values, after model.to_empty(device=...) and loading the weights, "
                        "with the optimizer made for them")
    if config is not None and not isinstance(config, Mapping):
        if not hasattr(config, "__dict__"):
            raise UserError(f"watch: config is {show_value(config)}; give a dict (vars(args) for argparse)")
        config = vars(config)  # an argparse.Namespace, or any object of settings
    _check_options(name=name, epochs=epochs, checkpoint_every_seconds=checkpoint_every_seconds, runs_dir=runs_dir,
                   folder=folder, sync_every=sync_every, scaler=scaler)
    epochs = None if epochs is None else operator.index(epochs)  # plain numbers from here: numpy's too
    checkpoint_every_seconds, sync_every = float(checkpoint_every_seconds or 0), operator.index(sync_every)
    settings = settings_from(signals, "watch(signals=...)")
    early = early_stopping_from(early_stopping)
    from . import script

    if script.current is not None and script.current.optimizer is None:
        return script.current.take_over(model, optimizer, name=name, config=config, epochs=epochs,
                                        early_stopping=early if early_stopping is not None else None)
    name = _shown_name(name or (unwrap(model).__class__.__name__.lower() if model is not None else "run"))
    config = _json_safe(config if isinstance(config, dict) else dict(config or {}))  # other values as their repr
    world = World.join()

    def open_session() -> Session:
        if folder is not None:
            run_folder = RunFolder(Path(folder))
        else:
            base = Path(runs_dir).expanduser() if runs_dir else default_runs_dir()
            check_runs_dir(base, _run_name(name), "watch: runs_dir" if runs_dir else "runs dir")
            run_folder = RunFolder.create(base, _run_name(name))
        return Session.open(run_folder, name=name, source=source, config=config,
                            meta={"world_size": world.size} if world is not None else None)

    if world is None:
        session = open_session()
    else:
        made = world.share(open_session, wire=lambda s: str(s.folder.path))
        session = made if world.leader else Session.follower(source, RunFolder(Path(made)))
        session.join(world, sync_every)
    run = WatchedRun(session, model, optimizer, name=name, config=config,
                     epochs=epochs if epochs is not None else _int(config.get("epochs")),
                     early_stopping=early, checkpoint_every_seconds=checkpoint_every_seconds,
                     signals=settings)
    run.scaler = scaler
    session.serve()
    _live.add(run)
    return run


class WatchedRun:
    """A run whose loop belongs to the user: `step` records and obeys, `validate` reports."""

    def __init__(self, session: Session, model, optimizer, *, name: str, config: dict,
                 epochs: int | None, early_stopping: EarlyStopping | None, checkpoint_every_seconds: float = 120,
                 signals: SignalsConfig | None = None):
        self.session = session
        self.name = name
        self.config = config
        self.epochs_planned = epochs or 0
        self.model = self.optimizer = self.recorder = self.lr = None
        self.params: list[torch.nn.Parameter] = []
        self.device = torch.device("cpu")
        self._apart = None  # a launch of several ranks that the script never joined: warned once
        self.started = False  # run_started emitted
        session.flush_hooks.append(self._count_epoch_loss)
        self.signals = Signals(session, signals or SignalsConfig())
        self.timer = PhaseTimer(LOOP_PHASES, device=None)  # steps drawn through run.iter
        self.timer.step_of = lambda: self.steps
        if model is not None or optimizer is not None:
            self.bind(model, optimizer)
        self.set_early_stopping(early_stopping or early_stopping_from(None))
        session.handlers.update({
            cmd.SetLr: self._set_lr, cmd.Validate: self._validate_now, cmd.Checkpoint: self._checkpoint,
            cmd.EarlyStopping: lambda c: self.policies.early_stopping(c), cmd.Predict: self._predict,
        })
        self.steps = 0  # optimizer steps recorded
        self.steps_per_epoch = 0
        self._epoch_loss = [0.0, 0]
        self.lossless: set[int] = set()  # steps of a watched script that had no loss to record
        self._said_finished: set[str] = set()  # calls after the end, warned about once each
        self._said_past_plan = False  # run.iter given an epoch past the plan (1-based counting): warned
        self._epoch_started = time.perf_counter()
        self._last_train_loss = math.nan
        self.batch_samples = 0  # samples in the batch being trained, for samples/s
        self._iterating = False  # inside run.iter: a stop ends the iteration
        self._stop_seen = False
        self._finding = False  # inside lr_find: the range test's steps are not the run's
        self._validated_at = -1
        self._validations = 0  # run.validate calls recorded
        self._epoch_given = False
        self._epoch_counted = False  # run.iter ended an epoch it counted: the next pass is the next epoch
        self.save_every = checkpoint_every_seconds or 0
        self.saved_at = session.now()
        self._before_update = False  # at run.step: the optimizer has not yet stepped
        self.epoch_end_step = 0  # the step of the last epoch_end
        self.extra_scales: list[LrScale] = []  # more optimizers, following the same scale
        self._user_validation = False
        self._checkpoint_fn: Callable | None = None
        self._validate_fn: Callable | None = None
        self._predict_fn: Callable | None = None
        self._samples = None
        self.scaler = None  # the loop's GradScaler, whose scale is taken off the recorded norms

    def set_early_stopping(self, early: EarlyStopping) -> None:
        """Early stopping as `early_stopping_from` made it from `watch(early_stopping=...)`."""
        self.policies = ValidationPolicies(self.session, early, signals=self.signals)

    def bind(self, model: torch.nn.Module | None, optimizer: torch.optim.Optimizer | None,
             names: dict | None = None) -> None:
        """Attach the model whose gradients are measured and the optimizer whose rate is scaled
        (a watched script learns them at its first optimizer step). `names`: parameter -> name,
        when the model is not known."""
        model = unwrap(model)
        self.model, self.optimizer = model, optimizer
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if model is not None else []
        if not named and optimizer is not None:  # no model, or one with nothing to train: the optimizer's
            names = names or {}
            params = [p for g in optimizer.param_groups for p in g["params"]]
            named = [(names.get(p, f"param{i}"), p) for i, p in enumerate(params)]
        self.params = [p for _, p in named]
        self.device = self.params[0].device if self.params else torch.device("cpu")
        gradients = Gradients(self.params, self.device)
        gradients.may_flatten = False  # the user's loop owns zero_grad: autograd's layout stays
        self.recorder = StepRecorder([n for n, _ in named], gradients)
        self.recorder.first_step = 1
        self.session.recorder = self.recorder
        if model is not None:
            self.signals.layers = describe_layers(model)
        if self.device.type == "cuda":
            self.timer.cuda = True
        self.lr = LrScale(optimizer) if optimizer is not None else None
        if self.session.sync is None:  # a watched script under a launcher joins its ranks now
            world = World.join(self.device, required=False)
            if world is not None:
                self.session.join(world)
                self.saved_at = self.session.now()
            else:
                self._apart = ranks_apart()
                if self.started:
                    self._warn_apart()

    # -- what the loop calls -------------------------------------------------------------------

    def epochs(self, n: int) -> Iterator[int]:
        """`range(n)` for the epoch loop that also tells the run how many epochs there are (for
        progress and ETA), and ends early once the run is asked to stop."""
        if isinstance(n, bool) or not hasattr(n, "__index__") or n.__index__() < 0:
            raise UserError(f"run.epochs: n is {show_value(n)}; give a whole number of epochs, 0 or more")
        n = n.__index__()
        self.epochs_planned = n
        for epoch in range(n):
            if self.should_stop:
                return
            self.session.epoch = epoch + 1
            self._epoch_given = True
            self.mark_epoch_start()
            try:
                yield epoch
            except GeneratorExit:  # left by break (or dropped after an error, at a moment no other
                if self.session.world is None:  # rank shares: there, only a finished epoch ends)
                    self._end_open_epoch()
                raise
            self._end_open_epoch()

    def _end_open_epoch(self) -> None:
        """End an epoch trained without run.iter (which ends its own), if it trained at all."""
        if self.started and not self.session.closed and self.steps > self.epoch_end_step:
            self.end_epoch()

    def iter(self, iterable: Iterable, epoch: int | None = None) -> Iterator:
        """Yield from `iterable` (a DataLoader, say), telling the run the epoch (0-based, as
        `range` counts) and its length for progress and ETA; its end is the epoch's end. A pass
        that trains no step (over the validation loader, say) is no epoch: it leaves the count
        and the epoch as they were."""
        before = (self.session.epoch, self._epoch_given, self._epoch_counted, self.steps_per_epoch,
                  self._epoch_started, self.batch_samples, self.steps)
        if epoch is not None:
            try:
                given = -1 if isinstance(epoch, bool) else operator.index(epoch)  # numpy's integers too
            except TypeError:
                given = -1
            if given < 0:
                raise UserError(f"run.iter: epoch is {show_value(epoch)}; give the epoch as range counts it, "
                                "a whole number from 0")
            if self.epochs_planned and given >= self.epochs_planned and not self._said_past_plan:
                self._said_past_plan = True  # range(1, N + 1): every epoch one later than it is
                if not self.started:
                    self._start()
                self.session.warn("config", step=self.steps, id="config:epoch_past_plan",
                                  message=f"run.iter was given epoch={given} with {self.epochs_planned} epochs planned: "
                                          f"epochs count from 0, as range does, so this is epoch {given + 1} of "
                                          f"{self.epochs_planned}",
                                  advice="loop over range(epochs) (or run.epochs(n)), not range(1, epochs + 1); or "
                                         "plan more epochs with watch(epochs=...)")
            self.session.epoch = given + 1
            self._epoch_given = True
        elif self._epoch_counted:  # counting epochs ourselves: this pass is the next one
            self.session.epoch += 1
        self._epoch_counted = False
        try:
            length = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            length = 0
        if length and length != self.steps_per_epoch:
            self.steps_per_epoch = length
        self.mark_epoch_start()
        if self.should_stop:  # a stopped run trains no more epochs: the loop runs on to its end
            self._put_back(before)
            return
        self.session.timer = self.timer
        items, timer = iter(iterable), self.timer
        try:
            while True:
                timer.start()  # the wait for the batch: the loader's time, not the model's
                try:
                    item = next(items)
                except StopIteration:
                    timer.cancel()
                    break
                timer.lap("data")
                self.batch_samples = _batch_len(item)
                self._iterating = True
                yield item
                timer.lap("update")
                if self.should_stop:
                    break
        finally:  # run out, stopped, or left by the loop's own `break`: the epoch ends here
            self._iterating = False
            if self.steps == before[-1]:  # no epoch
                self._put_back(before)
            else:
                if not self.session.closed:
                    self.end_epoch()
                # Counting epochs ourselves, the next pass is the next epoch; until it starts, a
                # validation after this loop (and the run's end) belongs to this one.
                self._epoch_counted = not self._epoch_given
                self._epoch_given = False

    def _put_back(self, before: tuple) -> None:
        """After a run.iter pass that trained no step: the epoch and its counting as they were."""
        (self.session.epoch, self._epoch_given, self._epoch_counted, self.steps_per_epoch,
         self._epoch_started, self.batch_samples, _) = before

    def step(self, loss, grad_norm=None, **scalars) -> None:
        """Record this step (after backward, before `optimizer.step()`) and apply waiting commands.

        `loss` stays on the device; `grad_norm`, when the loop has it (from `clip_grad_norm_`),
        is used as the total instead of measuring it; `scalars` are more numbers to plot.
        Pause blocks here; stop sets `should_stop`.
        """
        if self.session.closed:
            return self._after_finish("run.step")
        if scalars and not STEP_COLUMNS.isdisjoint(scalars):
            taken = sorted(STEP_COLUMNS.intersection(scalars))
            raise UserError(f"run.step: {', '.join(map(repr, taken))} name(s) traintop records itself; give your "
                            f"scalar another name (taken: {', '.join(sorted(STEP_COLUMNS))})")
        self.record_step(loss, total=grad_norm, scalars=scalars)

    def record_step(self, loss, *, total=None, norms=None, scalars=None, boundary: bool = True) -> None:
        """`step` for the callbacks too: `norms` are per-layer gradient norms measured earlier in the
        step (before the loop cleared the gradients); `boundary=False` leaves the commands to a
        later `step_boundary()`."""
        if self._finding:  # a step function that reports its steps, as the loop's own one does
            return
        if _exit_status:  # training goes on after a sys.exit: the script caught it
            _exit_status.clear()
        if not self.started:
            self._start()
        session = self.session
        if session.stop_request is not None and not self._stop_seen and not self._iterating:
            # The loop never looked at should_stop: stop it as Ctrl-C would.
            self._stop_seen = True
            raise StopRequested()
        if self.timer.on:
            self.timer.lap("forward+backward")
        now = time.perf_counter()
        if self.scaler is not None and total is None and norms is None:
            scale = pending_scale(self.scaler, self.optimizer)
            if scale is not None:  # the gradients are still scaled: the norms are divided on the device
                norms = torch._foreach_div(self.recorder.gradients.layer_norms(), scale.to(self.device))
        self.recorder.record(loss, self._rate(), now, total=total, scalars=scalars, norms=norms)
        self.steps += 1
        session.samples += self.batch_samples
        if boundary and (session.boundary_due(now) or self.recorder.full):
            self._before_update = True
            try:
                self.step_boundary(now)
            finally:
                self._before_update = False

    def step_boundary(self, now: float | None = None) -> None:
        """Apply waiting commands (pause blocks here), flush when it is time, and save last.pt
        every `checkpoint_every_seconds`."""
        session = self.session
        if session.commands_due():
            session.serve_commands()
        now = now or time.perf_counter()
        if self.recorder.full or session.flush_due(now):
            session.flush_and_deliver()
            if self.save_every and session.now() - self.saved_at >= self.save_every:
                self._save_or_warn("periodic")

    def _after_finish(self, call: str) -> None:
        """A step or validation handed over after the run finished: not recorded, and said once
        each, as a Python warning pointing at the loop's line (the loop goes on). In a forked
        child the run is the parent's: nothing is said."""
        if call not in self._said_finished and not self.session.forked:
            self._said_finished.add(call)
            warnings.warn(f"traintop: {call} after run {self.session.run_id} finished (run.finish(), or the end of "
                          "its with block) is not recorded; finish the run after the training loop",
                          RuntimeWarning, stacklevel=3)

    def _save_or_warn(self, kind: str) -> None:
        """A save no command asked for (periodic, or at a stop): its failure is a warning, and the
        training (or its end) goes on."""
        session = self.session
        try:
            self.save(kind)
        except CheckpointFailed as e:
            session.warn("checkpoint_failed", step=self.steps, id="checkpoint_failed", message=str(e),
                         advice="fix the function registered with run.on_checkpoint")
        except UserError as e:  # non-finite weights: the last good file stays
            session.warn("nan_loss", step=self.steps, id="nan_loss:save", message=str(e),
                         advice="lower the learning rate (-), or clip gradients")

    @property
    def should_stop(self) -> bool:
        """True once the user asked to stop, or early stopping decided it. A loop that never
        reads it (nor iterates with `run.iter`) gets a KeyboardInterrupt at its next step."""
        stop = self.session.stop_request is not None
        self._stop_seen = self._stop_seen or stop
        return stop

    def validate(self, **metrics) -> bool:
        """Report a validation (`val_loss=`, and any metrics such as `accuracy=`); True when it is
        the best so far. Early stopping and the overfitting warning follow it, as in config runs."""
        if self._finding:  # the range test's throw-away weights: not the run's validation
            return False
        if self.session.closed:
            return self._after_finish("run.validate") or False
        if not self.started:
            self._start()
        if self.should_stop and self.steps == self._validated_at:
            return False  # stopped: a validation with no training since the last one adds nothing
        if not VALIDATION_FIELDS.isdisjoint(metrics):
            taken = sorted(VALIDATION_FIELDS.intersection(metrics))
            raise UserError(f"run.validate: {', '.join(map(repr, taken))} name(s) a validation event has already; "
                            f"give your metric another name (taken: {', '.join(sorted(VALIDATION_FIELDS))})")
        if "loss" in metrics and "val_loss" in metrics:
            raise UserError("run.validate: loss and val_loss are the same metric; give one of them")
        self._validated_at = self.steps
        self._validations += 1
        val_loss = metrics.pop("val_loss", metrics.pop("loss", None))
        values = {k: _number(v, k) for k, v in metrics.items()}
        if self.session.world is not None:  # each rank measured its shard: the run's numbers are their mean
            if val_loss is not None:
                values["val_loss"] = _number(val_loss, "val_loss")
            values = self.session.world.mean_values(values)
            val_loss = values.pop("val_loss", None)
        source = "user" if self._user_validation else "schedule"
        train_loss = self._last_train_loss
        if self.steps > self.epoch_end_step:  # in an epoch not ended yet: its own mean so far
            self.session.flush()
            if self._epoch_loss[1]:
                train_loss = self._epoch_loss[0] / self._epoch_loss[1]
        best = self.policies.validated(step=self.steps, epoch=self.session.epoch,
                                       val_loss=None if val_loss is None else _number(val_loss, "val_loss"),
                                       metrics=values, train_loss=train_loss, source=source)
        return best

    def finish(self, status: str | None = None, error: str = "", exception: BaseException | None = None, *,
               save: bool = False) -> None:
        """End the run: `run_finished` and report.json. Leaving a `with` block calls it.

        A failed run on several ranks names the rank that failed first (`exception`: this rank's).
        A stop saves last.pt first when traintop asked for it, or with `save` (Ctrl-C under
        `traintop run`, outside the optimizer's step).
        """
        if self.session.closed:
            return
        if status not in (None, *FINISH_STATUSES):
            raise UserError(f"run.finish: status {status!r}; allowed: {', '.join(FINISH_STATUSES)} (or none: "
                            "completed, or stopped when traintop was asked to stop)")
        if status == "failed":
            error = self.session.fail(exception or RuntimeError(error), error)
        if not self.started:
            self._start()
        if status is None:
            status = self.session.stop_status if self.session.stop_request is not None else "completed"
        stop = self.session.stop_request
        if (status in ("stopped", "early_stopped") and (stop is not None and stop.save or save) and self.steps
                and self.session.source in ("watch", "script")  # Lightning's and HF's save their own way
                and (self.model is not None or self.optimizer is not None or self._checkpoint_fn is not None)):
            self._save_or_warn("last")  # as a config run's stop does: last.pt, then the end
        for scale in [self.lr, *self.extra_scales]:
            if scale is not None:
                scale.remove()
        self.session.close(status, error, step=self.steps, epoch=self.session.epoch)
        if self.session.world is not None:
            self.session.world.close()  # traintop's group; the loop's own stays the loop's
        _live.discard(self)

    def __enter__(self) -> WatchedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or (issubclass(exc_type, SystemExit) and exc.code in (None, 0)):
            self.finish()  # sys.exit() and sys.exit(0) end a script as its last line would
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}", exc)
        return False

    def lr_find(self, step_fn: Callable[[], Any], *, lr_min: float = 1e-7, lr_max: float = 10.0,
                steps: int = 100) -> float:
        """The learning-rate range test on this run's model and optimizer: `step_fn()` trains one
        step on the next batch (forward, backward, `optimizer.step()`) and returns its loss; a
        `run.step` or `run.validate` inside it is not recorded, so the loop's own step function
        will do. The rate is set before each call. The points go out as `lr_find` events; the
        model and optimizer are restored afterwards. Returns the suggested rate (0.0 when none
        could be suggested)."""
        from .lrfind import emitter, range_test

        if not callable(step_fn):
            raise UserError(f"run.lr_find takes a function that trains one step and returns its loss; got "
                            f"{show_value(step_fn)}")
        if self.optimizer is None:
            raise UserError("lr_find needs the optimizer: pass it to traintop.watch(model, optimizer)")
        if not self.started:
            self._start()
        self._finding = True
        try:
            result = range_test(step_fn, self.model, self.optimizer, lr_min=lr_min, lr_max=lr_max, steps=steps,
                                emit=emitter(self.session))
        finally:
            self._finding = False
        return result.suggested

    # -- what the dashboard's keys call --------------------------------------------------------

    def on_checkpoint(self, fn: Callable[[Path], Any]) -> Callable:
        """`c` (and `ctl checkpoint`) call `fn(path)` instead of saving the model and optimizer."""
        self._checkpoint_fn = _function(fn, "run.on_checkpoint")
        return fn

    def on_validate(self, fn: Callable[[], Any]) -> Callable:
        """`v` (and `ctl validate`) call `fn()`; it may call `run.validate(...)` or return the metrics."""
        self._validate_fn = _function(fn, "run.on_validate")
        return fn

    def on_predict(self, fn: Callable[[list], list]) -> Callable:
        """The inference view calls `fn(inputs)` with a list of inputs and shows what it returns:
        one answer per input, a label, {"label", "probabilities"} or {"value"}."""
        self._predict_fn = _function(fn, "run.on_predict")
        return fn

    def samples(self, dataset) -> None:
        """Held-out samples the inference view can browse: `dataset[i]` is (input, target)."""
        self._samples = _dataset(dataset, "run.samples")

    # -- inside ----------------------------------------------------------------------------------

    def _start(self) -> None:
        self.started = True
        model = self.model
        self.session.t0 = time.monotonic()
        self.session.emit(
            ev.RunStarted, t=0.0, run_id=self.session.run_id, name=self.name, config=_json_safe(self.config),
            device=str(self.device), params=sum(p.numel() for p in self.params),
            data={"n_val": len(self._samples)} if self._samples is not None else {},
            epochs=self.epochs_planned, steps_per_epoch=self.steps_per_epoch,
            layers=describe_layers(model) if model is not None else [],
            world_size=self.session.world_size, source=self.session.source,
            signals=self.signals.settings_json())
        self.policies.announce()
        if self.policies.early.enabled:
            for kind, message in getattr(self.policies.early, "notes", ()):
                self.session.warn(kind, message, step=0)
        self._warn_apart()
        self.session.flush_started = time.perf_counter()

    def _warn_apart(self) -> None:
        """Said once, on rank 0: the launch has several ranks but the script never joined them."""
        place, self._apart = self._apart, None
        if place is None or not self.session.leader:
            return
        message = (f"this run was launched on {place.world_size} processes, but the script never called "
                   "torch.distributed.init_process_group: the ranks are not synchronised, each rank trains "
                   "alone (its own model, its own data); only rank 0's steps are recorded and only rank 0 "
                   "obeys the dashboard's commands")
        advice = ("call torch.distributed.init_process_group() and wrap the model in DistributedDataParallel "
                  "before training, or launch a single process")
        self.session.warn("ranks_apart", message, step=self.steps, advice=advice, id="ranks_apart",
                          world_size=place.world_size)

    def _rate(self):
        if self.lr is None:
            return math.nan
        groups = self.optimizer.param_groups  # Lightning's stand-in for no optimizer has none
        lr = groups[0].get("lr", math.nan) if groups else math.nan  # one of one's own may have no lr
        if isinstance(lr, torch.Tensor):
            return lr.detach() * self.lr.scale
        return lr * self.lr.scale

    def _count_epoch_loss(self, batch: dict) -> None:
        finite = [x for x in batch["loss"] if x is not None and math.isfinite(x)]
        self._epoch_loss[0] += sum(finite)
        self._epoch_loss[1] += len(finite)
        lossless, self.lossless = self.lossless, set()
        bad = next((s for s, x in zip(batch["step"], batch["loss"])
                    if (x is None or not math.isfinite(x)) and s not in lossless), None)
        if bad is not None:
            self.session.warn("nan_loss", step=bad, id="nan_loss",
                              message=f"the loss became non-finite at step {bad}",
                              advice="lower the learning rate (-), clip gradients, or check the data "
                                     "for NaN or infinite values")

    def mark_epoch_start(self) -> None:
        self._epoch_started = time.perf_counter()

    def end_epoch(self) -> None:
        """The epoch's end: its mean training loss, as an `epoch_end` event."""
        if not self.started:
            return
        self.session.flush()
        self.epoch_end_step = self.steps
        total, n = self._epoch_loss
        self._last_train_loss = total / n if n else math.nan
        self._epoch_loss = [0.0, 0]
        self.session.emit(ev.EpochEnd, epoch=self.session.epoch, step=self.steps,
                          train_loss=self._last_train_loss,
                          seconds=round(time.perf_counter() - self._epoch_started, 4))

    def _set_lr(self, c: cmd.SetLr) -> cmd.Reply:
        if self.lr is None:
            return cmd.Reply(False, "this run was watched without its optimizer: pass it to watch() "
                                    "to change the learning rate")
        if any("lr" not in group for group in self.optimizer.param_groups):
            return cmd.Reply(False, f"{type(self.optimizer).__name__} has no 'lr' in its parameter groups: "
                                    "traintop cannot change a rate it does not have")
        old, new = self.lr.apply(c)
        for scale in self.extra_scales:
            scale.scale = self.lr.scale
        if self._before_update and self.recorder.n:  # this step's update is still to come, at the new rate
            self.recorder.lr[-1] = self._rate()
        self.session.emit(ev.LrChanged, step=self.steps, old=old, new=new, source="user")
        groups = len(self.optimizer.param_groups)
        alike = f" (all {groups} parameter groups scaled alike, x{new / old:.3g})" if groups > 1 and old > 0 else ""
        return cmd.Reply(True, f"learning rate {old:.3g} -> {new:.3g}{alike}", {"old": old, "new": new})

    def _validate_now(self, c: cmd.Validate) -> cmd.Reply:
        if self._validate_fn is None:
            how = ("call traintop.watch in the script and register one with run.on_validate(fn)"
                   if self.session.source == "script" else "register one with run.on_validate(fn)")
            return cmd.Reply(False, f"this loop has no validation to call: {how}")
        self._user_validation = True
        before = self._validations
        try:
            result = self._validate_fn()
            if isinstance(result, Mapping):
                self.validate(**result)
            elif self._validations == before:  # it neither called run.validate nor returned metrics
                what = "nothing" if result is None else show_value(result)
                return cmd.Reply(False, f"run.on_validate returned {what} and did not call run.validate: not "
                                        "validated; return the metrics as a dict (val_loss=..., accuracy=...), or "
                                        "call run.validate(...) in it")
        except UserError as e:
            return cmd.Reply(False, f"not validated: {e}")
        except Exception as e:  # noqa: BLE001 - the loop's function failed; its training goes on
            return cmd.Reply(False, f"run.on_validate failed ({type(e).__name__}: {e}); training goes on")
        finally:
            self._user_validation = False
        return cmd.Reply(True, f"validated at step {self.steps}")

    def _checkpoint(self, c: cmd.Checkpoint) -> cmd.Reply:
        try:
            path = self.save("manual")
        except UserError as e:  # not saved (its function failed, or the weights are not finite): training goes on
            return cmd.Reply(False, str(e))
        if path is None:
            return cmd.Reply(True, "run.on_checkpoint ran; it wrote no file at the path it was given and returned none")
        return cmd.Reply(True, f"saved {path}")

    def save(self, kind: str) -> Path | None:
        """Save through the loop's own function (`on_checkpoint`), or the model's and optimizer's
        state into last.pt: copied here, written off the loop's thread, never with non-finite weights."""
        session = self.session
        path = session.folder.last
        self.saved_at = session.now()
        if self._checkpoint_fn is not None:  # on every rank: the loop's own saving may be collective
            before = _file_state(path)  # an earlier save's file may be there: only a new write counts
            try:
                result = self._checkpoint_fn(path)
            except Exception as e:  # noqa: BLE001 - the loop's function failed; its training goes on
                raise CheckpointFailed(f"run.on_checkpoint failed ({type(e).__name__}: {e}): not saved; "
                                       "training goes on") from None
            if isinstance(result, (str, os.PathLike)):
                path = Path(result).absolute()
                if not path.exists():
                    raise CheckpointFailed(f"run.on_checkpoint returned {show_value(str(result))}, where there is no "
                                           "file: return the path your function wrote, or nothing when it wrote "
                                           "the path it was given")
            elif result is not None:
                raise CheckpointFailed(f"run.on_checkpoint returned {show_value(result)}, not a path: return the path "
                                       "your function wrote (a str or Path), or nothing when it wrote the path it "
                                       "was given")
            elif _file_state(path) in (None, before):  # saved elsewhere (its own store), or nowhere: no file to name
                session.emit(ev.CheckpointSaved, path="", kind=kind, step=self.steps)
                return None
            session.emit(ev.CheckpointSaved, path=str(path), kind=kind, step=self.steps)
            return path
        state: dict = {"step": self.steps, "epoch": session.epoch}
        if self.model is not None:
            state["model"] = self.model.state_dict()
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        tensors = [v for v in state.get("model", {}).values()]
        if not all_finite(tensors):
            raise UserError(f"the weights are not finite at step {self.steps}: not saved, so "
                            f"{path.name} keeps the last finite ones")
        if not session.leader:  # the ranks hold the same weights: rank 0 writes them
            return path
        session.checkpointer.write("last", snapshot(state), kind, self.steps)
        if kind != "periodic":
            session.checkpointer.wait()
            session.announce_saves()
        return path

    def _predict(self, c: cmd.Predict) -> cmd.Reply:
        if self._predict_fn is None:
            return cmd.Reply(False, "this loop answers no predictions: register run.on_predict(fn)")
        inputs, truths = [], []
        for i, item in enumerate(c.inputs):
            if "split" in item:
                if self._samples is None:
                    return cmd.Reply(False, "no samples to browse: register run.samples(dataset)")
                index = item.get("index")
                n = len(self._samples)
                if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
                    return cmd.Reply(False, f"input {i}: index must be an integer from 0 to {n - 1}")
                x, y = self._samples[index]
                inputs.append(x)
                truths.append(_plain(y))
            else:
                inputs.append(item.get("input", item))
                truths.append(None)
        model = self.model
        was_training = model.training if model is not None else False
        try:
            if model is not None:
                model.eval()
            with torch.no_grad():
                answers = list(self._predict_fn(inputs))
        except Exception as e:  # noqa: BLE001 - a failing prediction never fails the run
            return cmd.Reply(False, f"could not predict on these inputs: {type(e).__name__}: {e}")
        finally:
            if model is not None:
                model.train(was_training)
        if len(answers) != len(inputs):
            return cmd.Reply(False, f"run.on_predict returned {len(answers)} answer(s) for {len(inputs)} input(s); "
                                    "it must return one answer per input")
        outputs = []
        for answer, truth in zip(answers, truths):
            out = answer if isinstance(answer, dict) else {"label": _plain(answer)}
            out = {k: _plain(v) for k, v in out.items()}
            if truth is not None:
                out["true"] = truth
            outputs.append(out)
        self.session.emit(ev.Prediction, request_id=c.request_id, outputs=outputs, weights="current",
                          step=self.steps)
        return cmd.Reply(True, f"{len(outputs)} prediction(s)",
                         {"outputs": outputs, "weights": "current", "step": self.steps})


class CheckpointFailed(UserError):
    """The loop's own checkpoint function raised: not saved, and the training goes on."""


# Names a loop's step scalars and validation metrics cannot take: the events' own fields.
STEP_COLUMNS = frozenset({*(f.name for f in dataclasses.fields(ev.Steps)), "event"})
VALIDATION_FIELDS = frozenset({*(f.name for f in dataclasses.fields(ev.Validation)), "event"} - {"val_loss"})
FINISH_STATUSES = ("completed", "stopped", "early_stopped", "failed")


def ranks_apart():
    """This process's place when a launcher started several ranks but no process group joins
    them (the script never called init_process_group); None otherwise."""
    import torch.distributed as dist

    from .distributed import placement

    place = placement()
    if place is None or place.world_size < 2 or (dist.is_available() and dist.is_initialized()):
        return None
    return place


def _finish_at_exit() -> None:
    """A script that simply ends is finished; one that died of an exception failed, and one
    interrupted (Ctrl-C, or traintop's stop raised in a loop that never read should_stop) stopped;
    a notebook kernel that goes leaves its runs as killed (no run_finished).

    The interpreter keeps the uncaught exception in `sys.last_value` before any exception hook
    runs, so one installed after ours (rich's, a logger's) hides nothing (at an interactive prompt
    it is any earlier line's error, so not read there). A `SystemExit` leaves no trace an exit
    handler can read, so the status comes from the main thread's last `sys.exit`, `exit` or `quit`
    call (argparse's errors go through sys.exit), forgotten once the loop trains on after it (the
    script caught it); a bare `raise SystemExit(3)` reads as an end.
    """
    error = _uncaught[0] if _uncaught else None if hasattr(sys, "ps1") else getattr(sys, "last_value", None)
    status = _exit_status[-1] if _exit_status and not hasattr(sys, "ps1") else None
    for run in list(_live):
        if _in_notebook():
            run.session.abandon()
        elif isinstance(error, KeyboardInterrupt):
            run.finish("stopped")
        elif error is not None:
            run.finish("failed", f"{type(error).__name__}: {error}", error)
        elif status not in (None, 0):
            said = f"status {int(status)}" if isinstance(status, int) else f"status 1: {status}"
            run.finish("failed", f"the script exited with {said}")
        else:
            run.finish()


_uncaught: list[BaseException] = []
_previous_excepthook = sys.excepthook


def _excepthook(exc_type, exc, tb):
    _uncaught.append(exc)
    _previous_excepthook(exc_type, exc, tb)


_exit_status: list = []  # what the main thread's last sys.exit (or exit, quit) call was handed
_sys_exit = sys.exit


def _exit(status=None):
    if threading.current_thread() is threading.main_thread():
        _exit_status[:] = [status]
    _sys_exit(status)


def _watch_quitters() -> None:
    """The builtins `exit(3)` and `quit()` raise SystemExit themselves: their status is kept too."""
    try:
        import _sitebuiltins
    except ImportError:
        return
    call = _sitebuiltins.Quitter.__call__
    if getattr(call, "_traintop", False):
        return

    def __call__(self, code=None):
        if threading.current_thread() is threading.main_thread():
            _exit_status[:] = [code]
        return call(self, code)

    __call__._traintop = True
    _sitebuiltins.Quitter.__call__ = __call__


def _leave_runs_to_parent() -> None:
    """In a forked child (a Pool worker, os.fork, a DataLoader worker): every run is the parent's.
    The child records nothing into them and its exit finishes none of them."""
    for run in list(_live):
        run.session.leave_to_parent()
    _live.clear()


_previous_thread_hook = threading.excepthook


def _thread_hook(args) -> None:
    if isinstance(args.exc_value, StopRequested):
        return  # traintop's stop, ending a thread that trains, as asked: no traceback
    _previous_thread_hook(args)


sys.excepthook = _excepthook
threading.excepthook = _thread_hook
sys.exit = _exit
_watch_quitters()
atexit.register(_finish_at_exit)
os.register_at_fork(after_in_child=_leave_runs_to_parent)


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    try:
        return shell is not None and type(shell.get_ipython()).__name__ == "ZMQInteractiveShell"
    except Exception:  # noqa: BLE001
        return False


def _shown_name(name: str) -> str:
    """The run's name as given, on one line: `ls`, the dashboard and the run's lookup by name show it."""
    return " ".join(str(name).split())[:100] or "run"


def _run_name(name: str) -> str:
    """The name as it ends the run's folder: ASCII letters, digits, `.`, `_` and `-`."""
    import re

    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-._") or "run"
    return cleaned[:100]


def _check_options(*, name, epochs, checkpoint_every_seconds, runs_dir, folder, sync_every, scaler) -> None:
    """watch's plain options, refused where they are handed over (a UserError naming each and what
    it takes), not at the first flush or step that would use them."""
    def whole(value) -> bool:  # numpy's integers too
        try:
            return not isinstance(value, bool) and operator.index(value) == value
        except TypeError:
            return False

    if name is not None and not isinstance(name, str):
        raise UserError(f"watch: name is {show_value(name)}; give a string")
    if epochs is not None and not (whole(epochs) and epochs > 0):
        raise UserError(f"watch: epochs is {show_value(epochs)}; give a whole number above 0 (or None)")
    every = 0 if checkpoint_every_seconds is None else checkpoint_every_seconds  # None: off, as 0
    if not (isinstance(every, numbers.Real) and not isinstance(every, bool) and math.isfinite(every) and every >= 0):
        raise UserError(f"watch: checkpoint_every_seconds is {show_value(every)}; give a number of seconds, "
                        "0 or more (0 = off)")
    for option, value in (("runs_dir", runs_dir), ("folder", folder)):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise UserError(f"watch: {option} is {show_value(value)}; give a path (a string or a Path)")
        if isinstance(value, str) and not value.strip():
            raise UserError(f"watch: {option} is {value!r}; give a path, or leave it out for the default")
    if not (whole(sync_every) and sync_every > 0):
        raise UserError(f"watch: sync_every is {show_value(sync_every)}; give a whole number of steps above 0")
    if scaler is not None and not all(callable(getattr(scaler, m, None)) for m in ("is_enabled", "get_scale")):
        raise UserError(f"watch: scaler is {show_value(scaler)}; give the loop's torch.amp.GradScaler (or None)")


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def early_stopping_from(options: dict | None, origin: str = "watch(early_stopping=...)") -> EarlyStopping:
    """Early stopping as `watch(early_stopping=...)` describes it, off when None; its values are
    checked as a config's [early_stopping] keys are (a UserError naming the key)."""
    if options is not None and not isinstance(options, Mapping):
        raise UserError(f"{origin}: {show_value(options)} is not a dict; give dict(monitor=..., patience=...)")
    es = dict(options or {})
    enabled = bool(es.pop("enabled", options is not None))
    unknown = sorted(set(es) - {"monitor", "mode", "patience", "min_delta"})
    if unknown:
        raise UserError(f"{origin}: unknown key {unknown[0]!r}; allowed keys: monitor, mode, patience, min_delta, "
                        "enabled")
    checked = build_config({"early_stopping": es}, origin)
    early = EarlyStopping(monitor=checked.early_stopping.monitor, mode=checked.early_stopping.mode,
                          patience=checked.early_stopping.patience, min_delta=checked.early_stopping.min_delta,
                          enabled=enabled)
    early.notes = checked.warnings  # (kind, message) said when the run starts: a monitor of unknown direction
    return early


def check_callback(*, config, runs_dir, early_stopping, predict, samples) -> None:
    """A Lightning or Hugging Face callback's arguments, checked as `watch` checks its own when the
    callback is made: a bad one fails the line that builds the trainer, not the start of training."""
    if config is not None and not isinstance(config, Mapping):
        raise UserError(f"TraintopCallback: config is {show_value(config)}; give a dict")
    if runs_dir is not None:
        if not isinstance(runs_dir, (str, os.PathLike)) or not str(runs_dir).strip():
            raise UserError(f"TraintopCallback: runs_dir is {show_value(runs_dir)}; give a path, or leave it out "
                            "for the default")
        check_runs_dir(Path(runs_dir).expanduser(), what="TraintopCallback: runs_dir")
    early_stopping_from(early_stopping, "TraintopCallback(early_stopping=...)")
    if predict is not None:
        _function(predict, "TraintopCallback(predict=...)")
    if samples is not None:
        _dataset(samples, "TraintopCallback(samples=...)")


def _dataset(dataset, what: str):
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise UserError(f"{what} takes a dataset with a length, whose dataset[i] is (input, target); "
                        f"got {show_value(dataset)}")
    return dataset


def _function(fn, what: str) -> Callable:
    if not callable(fn):
        raise UserError(f"{what} takes a function; got {show_value(fn)}")
    return fn


def _number(value, name: str) -> float:
    return float(one_number(value, f"validate: {name}"))


def _plain(value, depth: int = 0):
    """A value the loop answered as plain JSON: tensors and numpy values as numbers or lists, text
    as text, anything else as its repr: an answer never fails the reply that carries it."""
    if value is None or isinstance(value, (bool, int, float, str)) or depth > 20:
        return value if depth <= 20 else repr(value)
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else _plain(value.detach().cpu().tolist(), depth + 1)
    if isinstance(value, dict):
        return {str(k): _plain(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        try:
            return _plain(value.tolist(), depth + 1)
        except (TypeError, ValueError):
            pass
    return repr(value)


def _json_safe(value, depth: int = 0, within: frozenset = frozenset()):
    """A user's config as JSON: numbers, strings, lists and dicts kept, anything else as its repr
    (cut short); a dict or list inside itself is "{...}" or "[...]", as Python's repr shows it."""
    if depth > 20:
        return show_value(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        if id(value) in within:
            return "{...}" if isinstance(value, dict) else "[...]"
        inside = within | {id(value)}
        if isinstance(value, dict):
            return {str(k): _json_safe(v, depth + 1, inside) for k, v in value.items()}
        return [_json_safe(v, depth + 1, inside) for v in value]
    if isinstance(value, Path):
        return str(value)
    return show_value(value)


def _file_state(path: Path) -> tuple | None:
    """What tells a rewritten file from the one there before (None: no file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def _batch_len(item) -> int:
    """How many samples a batch holds: the length of its first tensor."""
    first = item
    while isinstance(first, (list, tuple)) and first:
        first = first[0]
    if isinstance(first, dict) and first:
        first = next(iter(first.values()))
    shape = getattr(first, "shape", None)
    return int(shape[0]) if shape else 0
