"""The training loop: forward, loss, backward, update; everything else hangs off named points.

Runs on its own thread. Commands are applied at step boundaries; per-step numbers stay on the
device and are flushed about every 100 ms, and at every validation, epoch end, pause and stop.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch

from . import commands as cmd
from . import events as ev
from .checkpoint import Checkpointer, all_finite, snapshot
from .config import LR_RANGE, Config
from .data import Dataset
from .early_stopping import EarlyStopping
from .errors import UserError
from .evaluation import evaluate, predict_outputs, prediction_summary
from .gradients import Gradients
from .inbox import CommandInbox
from .lr import LearningRate
from .models import DataInfo, Objective, build_model, loss_name, n_model_outputs
from .recorder import StepRecorder
from .runstore import RunFolder

FLUSH_SECONDS = 0.1
BEST_SAVE_SECONDS = 2.0  # best.pt is rewritten at most this often; the final best is always saved
LR_SAVE_SECONDS = 5.0  # a user's LR change saves last.pt first when the last save is older than this
OVERFIT_RISES = 3
LOGGED_OUTPUTS = 100  # a prediction event lists the answers of requests up to this size


class NonFiniteLoss(Exception):
    """The loss or gradient (or, found at a save, the weights) became NaN or infinite at `step`."""

    def __init__(self, step: int, what: str = "loss or gradient"):
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step
        self.what = what


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """The configured optimizer over `params`."""
    o = cfg.optim
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
    return opt(params, lr=o.lr, weight_decay=o.weight_decay)


def metric_names(task: str) -> list[str]:
    return ["accuracy"] if task == "classification" else ["mae", "rmse", "r2"]


class Trainer:
    """Owns the model, optimizer and data tensors of one run, and trains them."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device,
                 emit: Callable[[ev.Event], None], inbox: CommandInbox,
                 deliver: Callable[[], None] = lambda: None):
        self.cfg = cfg
        self.data = data
        self.device = device
        self.emit_event = emit  # buffers an event
        self.deliver = deliver  # hands buffered events to the log and the subscribers
        self.log_offset: Callable[[], int] = lambda: 0  # bytes of events.jsonl delivered so far
        self.inbox = inbox
        self.folder: RunFolder | None = None  # set once the run folder exists
        self.checkpointer: Checkpointer | None = None  # writes the folder's checkpoints, with it
        torch.manual_seed(cfg.run.seed)

        n_classes = len(data.classes)
        self.objective = Objective(loss_name(cfg, data.task, n_classes))
        n_outputs = n_model_outputs(self.objective.name, data.task, n_classes)
        self.model = build_model(cfg, DataInfo.of(data.preprocess, n_outputs))
        self.model.to(device)
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.optimizer = build_optimizer(cfg, self.params)
        self.gradients = Gradients(self.params, device)

        self.feeds = data.feeds(device)  # device tensors, or DataLoaders for streamed data
        self.batch_size = cfg.data.batch_size
        self.n_train = len(self.feeds["train"])
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.lr = LearningRate(cfg, self.steps_per_epoch)
        self.recorder = StepRecorder(self.param_names, self.gradients)

        es = cfg.early_stopping
        allowed = ["val_loss"] + [f"val_{m}" for m in metric_names(data.task)]
        if es.monitor not in allowed:
            raise UserError(f"early_stopping.monitor = {es.monitor!r} is not measured for a "
                            f"{data.task} task; allowed: {', '.join(allowed)}")
        self.early = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.enabled)

        self.step = 0  # optimizer steps done; the step being trained is step + 1
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done in the current epoch
        self.paused = False
        self.stop_request: cmd.Stop | None = None
        self.stop_status = "stopped"
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_saved_at = -math.inf
        self.best_pending = False
        self.next_flush = 0.0
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.skipped: list[int] = []
        self.history: list[tuple[float, float]] = []  # (val_loss, epoch train loss) per scheduled validation
        self.overfit_warned = False
        self.test_done = False
        self.tested_at: list[int] = []  # steps of the tests in the run's history (an extended run's)
        self.save_every = cfg.checkpoint.every_seconds
        self.saved_at = time.perf_counter()  # the last save of last.pt, or the start of training
        self.save_due = False  # last.pt is written at the next step boundary
        self.saved_step: int | None = None  # the step of the last.pt on disk
        self.t0 = time.monotonic()
        self.flush_started = time.perf_counter()
        self.last_train_loss = math.nan

    # -- events --------------------------------------------------------------------------------

    def clock(self) -> float:
        return round(time.monotonic() - self.t0, 4)

    def emit(self, event_type: type[ev.Event], **fields) -> None:
        """Publish an event; steps still buffered are flushed first, so events stay in order."""
        if event_type is not ev.Steps:
            self.flush()
        self.emit_event(event_type(t=self.clock(), **fields))

    def flush(self) -> None:
        """Fetch the buffered steps from the device (one sync) and publish them as one event."""
        now = time.perf_counter()
        batch = self.recorder.take()
        if batch is None:
            return
        n = len(batch["step"])
        elapsed = now - self.flush_started
        self.flush_started = now
        finite = [x for x in batch["loss"] if math.isfinite(x)]
        self.epoch_loss_sum += sum(finite)
        self.epoch_loss_n += len(finite)
        self.emit(ev.Steps, epoch=[self.epoch + 1] * n,
                  samples_per_s=round(n * self.batch_size / elapsed, 1) if elapsed > 0 else 0.0, **batch)
        if self.cfg.train.on_nan == "stop":
            for s, loss, norm in zip(batch["step"], batch["loss"], batch["grad_norm"]):
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise NonFiniteLoss(s)
        elif self.skipped:
            self.emit(ev.RunWarning, kind_="nan_loss", step=self.skipped[0],
                      message=f"skipped {len(self.skipped)} update(s) with a non-finite loss or gradient, "
                              f"first at step {self.skipped[0]}")
            self.skipped = []

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> str:
        """Train until the epochs run out, early stopping, a stop command, or a failure."""
        self.flush_started = self.saved_at = time.perf_counter()
        self.recorder.first_step = self.step + 1
        self.set_optimizer_lr(self.lr.at(self.step))
        while self.epoch < self.cfg.train.epochs and self.stop_request is None:
            self.train_epoch()
        self.flush()
        if self.stop_request is None:
            return "completed"
        return self.stop_status

    def permutation(self, epoch: int) -> torch.Tensor:
        """This epoch's data order: seeded by (seed, epoch), so a resumed run repeats it."""
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_train, generator=g)

    def train_epoch(self) -> None:
        model, objective, optimizer = self.model, self.objective, self.optimizer
        gradients, recorder = self.gradients, self.recorder
        batches = self.feeds["train"].batches(self.permutation(self.epoch), self.batch_size,
                                              start=self.batch, augment=self.data.augment)
        clip = self.cfg.train.grad_clip
        skip_nonfinite = self.cfg.train.on_nan == "skip"
        val_every = self.cfg.train.val_every_steps
        started = time.perf_counter()
        model.train()
        while self.batch < self.steps_per_epoch:
            if self.inbox or self.paused or self.save_due:
                self.at_boundary()
                if self.stop_request is not None:
                    return
            xb, yb = next(batches)
            # forward
            loss = objective(model(xb), yb)
            # backward
            gradients.backward(loss)  # cleared, then filled
            now = time.perf_counter()
            lr = self.lr.at(self.step)
            recorder.record(loss, lr, now)  # loss and gradient norms, kept on the device
            if clip:
                gradients.clip_(recorder.last_total(), clip)
            # update
            if lr != self.optimizer_lr:
                self.set_optimizer_lr(lr)
            if skip_nonfinite and not recorder.last_finite():
                self.skipped.append(self.step + 1)  # one host sync per step: only with on_nan = "skip"
            else:
                optimizer.step()
            self.step += 1
            self.batch += 1
            if recorder.full or now >= self.next_flush:
                self.flush_and_deliver()
            if val_every and self.step % val_every == 0:
                self.validate()
                if self.stop_request is not None:  # early stopping: not one step more
                    return
        self.end_epoch(time.perf_counter() - started)

    def flush_and_deliver(self) -> None:
        """The timed flush: about every 100 ms, steps and events go out together, and a
        periodic save falls due."""
        self.flush()
        self.announce_saves()
        self.deliver()
        now = time.perf_counter()
        self.next_flush = now + FLUSH_SECONDS
        if self.save_every and now - self.saved_at >= self.save_every:
            self.save_due = True

    def at_boundary(self) -> None:
        """Between two steps: the periodic save when due, then the waiting commands.

        Here, before the next step, the state is whole: a resume from it starts this very step.
        """
        if self.save_due:
            self.save_due = False
            self.save("periodic")
        if self.inbox or self.paused:
            self.serve_commands()

    def set_optimizer_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer_lr = lr

    def end_epoch(self, seconds: float) -> None:
        self.flush()
        self.epoch += 1
        self.batch = 0
        train_loss = self.epoch_loss_sum / max(1, self.epoch_loss_n)
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.last_train_loss = train_loss
        self.emit(ev.EpochEnd, epoch=self.epoch, step=self.step, train_loss=train_loss, seconds=round(seconds, 4))
        if self.lr.name == "step" and self.lr.at(self.step) != self.lr.at(self.step - 1):
            self.emit(ev.LrChanged, step=self.step, old=self.lr.at(self.step - 1), new=self.lr.at(self.step),
                      source="schedule")
        if not self.cfg.train.val_every_steps:
            self.validate()
        every = self.cfg.checkpoint.every_epochs
        if every and self.epoch % every == 0 and self.stop_request is None:
            self.save("periodic")

    # -- validation, early stopping, checkpoints -------------------------------------------------

    def validate(self, source: str = "schedule") -> None:
        """Measure the validation split; update best, early stopping, plateau and warnings."""
        self.flush()
        val_loss, metrics = evaluate(self.model, self.objective, self.feeds["val"], self.data)
        monitor = self.early.monitor
        value = val_loss if monitor == "val_loss" else metrics[monitor[4:]]
        epoch = self.epoch if self.batch == 0 else self.epoch + 1
        # A validation the user asks for is a report: early stopping and best weights follow
        # the schedule's validations only, so pressing `v` never changes what training does.
        best = source == "schedule" and self.early.update(value, epoch, self.step)
        self.emit(ev.Validation, step=self.step, epoch=epoch, val_loss=val_loss, metrics=metrics,
                  best=best, since_best=self.early.since_best, source=source)
        if best:
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.best_pending = True
            if time.monotonic() - self.best_saved_at >= BEST_SAVE_SECONDS:
                self.save_best()
        if source != "schedule":
            return
        self.check_overfitting(val_loss)
        if self.lr.name == "plateau":
            old = self.lr.at(self.step)
            if self.lr.observe_validation(val_loss):
                self.emit(ev.LrChanged, step=self.step, old=old, new=self.lr.at(self.step), source="plateau")
        if self.early.should_stop and self.stop_request is None:
            self.stop_request = cmd.Stop(save=True)
            self.stop_status = "early_stopped"
            self.emit(ev.EarlyStopped, step=self.step, epoch=epoch, best_epoch=self.early.best_epoch,
                      best_value=self.early.best, monitor=monitor)

    def check_overfitting(self, val_loss: float) -> None:
        """Warn once per stretch when validation loss rose 3 times in a row while training loss fell."""
        train_loss = self.last_train_loss
        self.history.append((val_loss, train_loss))
        recent = self.history[-(OVERFIT_RISES + 1):]
        rising = len(recent) == OVERFIT_RISES + 1 and all(b[0] > a[0] for a, b in zip(recent, recent[1:]))
        if not rising:
            self.overfit_warned = False
            return
        if recent[-1][1] < recent[0][1] and not self.overfit_warned:
            self.overfit_warned = True
            self.emit(ev.RunWarning, kind_="overfitting", step=self.step,
                      message=f"validation loss rose {OVERFIT_RISES} times in a row "
                              f"({recent[0][0]:.4g} -> {val_loss:.4g}) while training loss fell "
                              f"({recent[0][1]:.4g} -> {recent[-1][1]:.4g}): the model is overfitting")

    def state_dict(self) -> dict:
        """Everything a resume needs, as plain data."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": self.lr.state_dict(),
            "early_stopping": self.early.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.history,
            "best_model": self.best_state if self.best_state is not None else {},
            "events_offset": self.log_offset(),
        }

    def load_state_dict(self, state: dict, map_location=None) -> None:
        """Continue from a checkpoint written by `state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state["lr"])
        self.early.load_state_dict(state["early_stopping"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.saved_step = self.step
        self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss = state["epoch_loss"]
        self.history = [tuple(h) for h in state["history"]]
        self.best_state = state.get("best_model") or None
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def save(self, kind: str) -> None:
        """Save last.pt (kinds last, periodic, manual); it is announced once the file is in place.

        The steps since the last flush are checked first (a non-finite one raises), then the
        weights themselves: weights that went bad are never saved, so the last finite last.pt
        stays. Everything logged so far is delivered before the copy, so the log offset in the
        state matches the log a resume cuts back to. A periodic save is written in the
        background; the others wait until the file is in place (stop and the end of the run,
        and a user's `checkpoint`, whose reply means the file is there).
        """
        if self.checkpointer is None:
            return
        self.flush()
        if not self.weights_finite():
            raise NonFiniteLoss(self.step, "weights")
        self.save_best()
        self.deliver()
        self.checkpointer.write("last", snapshot(self.state_dict()), kind, self.step)
        self.saved_at = time.perf_counter()
        self.save_due = False
        if kind != "periodic":
            self.checkpointer.wait()
            self.announce_saves()

    def weights_finite(self) -> bool:
        """Whether the model and the optimizer's state hold only finite numbers (one host sync)."""
        tensors = list(self.model.state_dict().values())
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return all_finite(tensors)

    def save_best(self) -> None:
        """Save best.pt from the best weights kept in memory (announced once in place)."""
        if self.checkpointer is None or self.best_state is None or not self.best_pending:
            return
        state = {"model": self.best_state, "step": self.early.best_step, "epoch": self.early.best_epoch,
                 "value": self.early.best, "monitor": self.early.monitor}
        self.checkpointer.write("best", snapshot(state), "best", self.early.best_step)
        self.best_saved_at = time.monotonic()
        self.best_pending = False

    def announce_saves(self) -> None:
        """A checkpoint_saved event for each file the checkpointer has put in place."""
        if self.checkpointer is None:
            return
        for saved in self.checkpointer.written():
            if saved.kind != "best":
                self.saved_step = saved.step
            self.emit(ev.CheckpointSaved, path=str(saved.path), kind_=saved.kind, step=saved.step)

    # -- the end -------------------------------------------------------------------------------

    def finish(self, status: str) -> None:
        """After training: last.pt, best.pt, then the one test on the restored best weights.

        A run extended by `resume` is tested once more, marked as the extension's; a run whose
        test at this very step is already in its history (killed during its end) is not.
        """
        if status in ("completed", "early_stopped") or (status == "stopped" and self.stop_request.save):
            self.save("last")
        self.save_best()
        if self.checkpointer is not None:
            self.checkpointer.wait()
            self.announce_saves()
        if status not in ("completed", "early_stopped") or len(self.feeds["test"]) == 0:
            return
        if self.step in self.tested_at:
            return
        if self.cfg.early_stopping.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        loss, metrics = evaluate(self.model, self.objective, self.feeds["test"], self.data)
        self.test_done = True
        self.emit(ev.TestResult, metrics={**metrics, "loss": loss}, step=self.step, extension=bool(self.tested_at))
        self.tested_at.append(self.step)

    # -- commands, at step boundaries ------------------------------------------------------------

    def serve_commands(self) -> None:
        """Apply waiting commands; while paused, keep serving them until resumed or stopped."""
        while True:
            for command, future in self.inbox.take():
                try:
                    reply = self.apply(command)
                    self.flush_and_deliver()  # the command's events before its reply
                except BaseException as e:  # e.g. NonFiniteLoss from the flush: the run ends,
                    future.set_result(cmd.Reply(False, f"the run is failing: {e}"))  # but we answer
                    raise
                future.set_result(reply)
            if not self.paused or self.stop_request is not None:
                break
            self.inbox.wait(0.1)
        self.flush_started = time.perf_counter()  # paused time is not training time

    def apply(self, c: cmd.Command) -> cmd.Reply:
        """One command's effect; a refused command changes nothing."""
        try:
            return self._apply(c)
        except UserError as e:
            return cmd.Reply(False, str(e))
        except Exception as e:  # noqa: BLE001 - a prediction's failure is the input's, never the run's
            if isinstance(c, cmd.Predict):  # forward-only: a bad input cannot hurt training
                return cmd.Reply(False, f"could not predict on these inputs: {type(e).__name__}: {e}")
            raise

    def _apply(self, c: cmd.Command) -> cmd.Reply:
        if isinstance(c, cmd.Pause):
            if self.paused:
                return cmd.Reply(False, "already paused")
            self.paused = True
            self.emit(ev.Paused, step=self.step)
            return cmd.Reply(True, f"paused at step {self.step}")
        if isinstance(c, cmd.Resume):
            if not self.paused:
                return cmd.Reply(False, "not paused")
            self.paused = False
            self.emit(ev.Resumed, step=self.step)
            return cmd.Reply(True, f"resumed at step {self.step}")
        if isinstance(c, cmd.SetLr):
            old = self.lr.at(self.step)
            new = c.value if c.value is not None else old * c.factor
            low, high = LR_RANGE
            if not low < new <= high:
                asked = f"{new:.3g}" if c.value is not None else f"x{c.factor:g} (which gives {new:.3g})"
                return cmd.Reply(False, f"learning rate {asked} refused: allowed {low:g} < lr <= {high:g}; "
                                        f"it stays {old:.3g}")
            if self.save_every and time.perf_counter() - self.saved_at >= LR_SAVE_SECONDS:
                self.save("periodic")  # a new rate is the usual cause of a blow-up: keep a way back
            if c.value is not None:
                self.lr.set_value(self.step, c.value)
            else:
                self.lr.multiply(c.factor)
            new = self.lr.at(self.step)
            self.set_optimizer_lr(new)
            self.emit(ev.LrChanged, step=self.step, old=old, new=new, source="user")
            return cmd.Reply(True, f"learning rate {old:.3g} -> {new:.3g}", {"old": old, "new": new})
        if isinstance(c, cmd.Stop):
            self.stop_request = c
            self.stop_status = "stopped"
            return cmd.Reply(True, f"stopping at step {self.step}")
        if isinstance(c, cmd.Validate):
            self.validate(source="user")
            return cmd.Reply(True, f"validated at step {self.step}")
        if isinstance(c, cmd.Checkpoint):
            self.save("manual")
            return cmd.Reply(True, f"saved {self.folder.last if self.folder else 'nothing'}")
        if isinstance(c, cmd.EarlyStopping):
            if c.enabled is not None:
                self.early.enabled = c.enabled
            if c.patience is not None:
                self.early.patience = c.patience
            return self.early_stopping_reply()
        if isinstance(c, cmd.Predict):
            return self.predict(c)
        return cmd.Reply(False, f"command {c.name!r} is not served by this engine")

    def early_stopping_reply(self) -> cmd.Reply:
        """What early stopping will now do, said before it happens: turned on with its patience
        already used up, the run stops at the very next validation that does not improve."""
        es = self.early
        data = {"enabled": es.enabled, "patience": es.patience, "since_best": es.since_best,
                "stops_next": es.enabled and es.best is not None and 0 < es.since_best and es.since_best >= es.patience}
        if not es.enabled:
            return cmd.Reply(True, f"early stopping off (patience {es.patience})", data)
        if not data["stops_next"]:
            return cmd.Reply(True, f"early stopping on, patience {es.patience} "
                                   f"({es.since_best} validation(s) since the best)", data)
        run = self.folder.run_id if self.folder else "RUN"
        counted = f"{es.since_best} validation{'s' if es.since_best != 1 else ''} since the best"
        return cmd.Reply(True, f"early stopping on: patience {es.patience} is already used up ({counted}); "
                               "the run stops at the next validation unless it improves. Set a larger patience: "
                               f"traintop ctl {run} early-stopping on --patience {es.since_best + max(es.patience, 1)}",
                         data)

    def predict(self, c: cmd.Predict) -> cmd.Reply:
        """Forward only, on the current or best weights; emits a `prediction` event."""
        model = self.model
        if c.weights == "best":
            if self.best_state is None:
                return cmd.Reply(False, "no best weights yet: nothing has been validated")
            model = copy.deepcopy(self.model)
            model.load_state_dict(self.best_state)
        outputs = predict_outputs(model, self.objective, self.data, c.inputs, self.device,
                                  allow_test=self.test_done, with_inputs=c.with_inputs)
        step = self.early.best_step if c.weights == "best" else self.step
        # The log keeps the answers of a small request; a big one (a whole split, page by page) is
        # summarised, and the raw inputs (a split of images, say) go to the asker only.
        logged = [{k: v for k, v in o.items() if k != "input"}
                  for o in (outputs if len(outputs) <= LOGGED_OUTPUTS else [])]
        self.emit(ev.Prediction, request_id=c.request_id, outputs=logged, weights=c.weights, step=step,
                  n_outputs=len(outputs), summary=prediction_summary(outputs))
        return cmd.Reply(True, f"{len(outputs)} prediction(s)", {"outputs": outputs, "weights": c.weights, "step": step})

