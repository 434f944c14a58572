"""A config run's training loop: forward, loss, backward, update; everything else hangs off named points.

The Trainer owns the model, optimizer and data of a config run and stands on a Session, as every
loop owner does: the session records steps, serves commands, writes checkpoints and ends the run.
What follows a validation (best weights, overfitting, plateau, early stopping) hangs on
`ValidationPolicies`; commands are served from the session's table of handlers.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from . import commands as cmd
from . import events as ev
from .checkpoint import all_finite, snapshot
from .config import Config
from .data import Dataset
from .early_stopping import EarlyStopping
from .errors import NonFiniteLoss, UserError
from .evaluation import evaluate, predict_outputs, prediction_summary
from .gradients import Gradients
from .lr import LearningRate
from .lrscale import LrScale
from .models import DataInfo, Objective, build_model, loss_name, n_model_outputs
from .policies import ValidationPolicies
from .recorder import StepRecorder
from .session import Session

BEST_SAVE_SECONDS = 2.0  # best.pt is rewritten at most this often; the final best is always saved
LR_SAVE_SECONDS = 5.0  # a user's LR change saves last.pt first when the last save is older than this
LOGGED_OUTPUTS = 100  # a prediction event lists the answers of requests up to this size


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


def check_monitor(cfg: Config, task: str) -> None:
    """Early stopping must watch something this task measures."""
    allowed = ["val_loss"] + [f"val_{m}" for m in metric_names(task)]
    if cfg.early_stopping.monitor not in allowed:
        raise UserError(f"early_stopping.monitor = {cfg.early_stopping.monitor!r} is not measured for a "
                        f"{task} task; allowed: {', '.join(allowed)}")


class Model:
    """What a config builds for its data: the model, its loss, and how many steps an epoch takes."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device):
        check_monitor(cfg, data.task)
        torch.manual_seed(cfg.run.seed)
        n_classes = len(data.classes)
        self.objective = Objective(loss_name(cfg, data.task, n_classes))
        n_outputs = n_model_outputs(self.objective.name, data.task, n_classes)
        self.module = build_model(cfg, DataInfo.of(data.preprocess, n_outputs)).to(device)
        self.params = [p for p in self.module.parameters() if p.requires_grad]


class Trainer:
    """Trains one config run's model on its data, on a Session."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device, session: Session,
                 model: Model | None = None):
        """`model`: the config's model, when it was built already (to fail before the folder exists)."""
        self.cfg, self.data, self.device, self.session = cfg, data, device, session
        built = model or Model(cfg, data, device)
        self.objective, self.model = built.objective, built.module
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = build_optimizer(cfg, self.params)
        self.gradients = Gradients(self.params, device)

        self.feeds = data.feeds(device)  # device tensors, or DataLoaders for streamed data
        self.batch_size = cfg.data.batch_size
        self.n_train = len(self.feeds["train"])
        self.steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        self.lr = LearningRate(cfg, self.steps_per_epoch)  # the schedule's rate, in the optimizer's groups
        self.lr_scale = LrScale(self.optimizer)  # the user's changes, around each step
        self.recorder = StepRecorder([n for n, _ in named], self.gradients)

        es = cfg.early_stopping
        early = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.enabled)
        self.early = early
        self.policies = ValidationPolicies(session, early, on_best=self.keep_best)
        self.policies.checks.append(self.plateau)

        session.recorder = self.recorder
        session.samples_per_step = self.batch_size
        session.flush_hooks.append(self.after_flush)
        session.handlers.update({
            cmd.SetLr: self.set_lr, cmd.Validate: self.validate_now, cmd.Checkpoint: self.checkpoint,
            cmd.EarlyStopping: self.policies.early_stopping, cmd.Predict: self.predict,
        })

        self.step = 0  # optimizer steps done; the step being trained is step + 1
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done in the current epoch
        self.optimizer_lr = math.nan  # the rate last written into the optimizer's groups
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_saved_at = -math.inf
        self.best_pending = False
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.skipped: list[int] = []
        self.test_done = False
        self.tested_at: list[int] = []  # steps of the tests in the run's history (an extended run's)
        self.save_every = cfg.checkpoint.every_seconds
        self.saved_at = time.perf_counter()  # the last save of last.pt, or the start of training
        self.save_due = False  # last.pt is written at the next step boundary
        self.last_train_loss = math.nan

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> str:
        """Train until the epochs run out, early stopping, a stop command, or a failure."""
        session = self.session
        session.flush_started = self.saved_at = time.perf_counter()
        self.recorder.first_step = self.step + 1
        session.epoch = self.epoch + 1
        self.set_optimizer_lr(self.lr.at(self.step))
        while self.epoch < self.cfg.train.epochs and session.stop_request is None:
            self.train_epoch()
        session.flush()
        return "completed" if session.stop_request is None else session.stop_status

    def permutation(self, epoch: int) -> torch.Tensor:
        """This epoch's data order: seeded by (seed, epoch), so a resumed run repeats it."""
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_train, generator=g)

    def train_epoch(self) -> None:
        session = self.session
        batches = self.feeds["train"].batches(self.permutation(self.epoch), self.batch_size,
                                              start=self.batch, augment=self.data.augment)
        val_every = self.cfg.train.val_every_steps
        started = time.perf_counter()
        self.model.train()
        while self.batch < self.steps_per_epoch:
            if session.inbox or session.paused or self.save_due:
                self.at_boundary()
                if session.stop_request is not None:
                    return
            self.train_step(*next(batches))
            if self.recorder.full or time.perf_counter() >= session.next_flush:
                self.flush_and_deliver()
            if val_every and self.step % val_every == 0:
                self.validate()
                if session.stop_request is not None:  # early stopping: not one step more
                    return
        self.end_epoch(time.perf_counter() - started)

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        """One step: forward, loss, backward (gradients cleared, then filled), update."""
        loss = self.objective(self.model(xb), yb)
        self.gradients.backward(loss)
        lr = self.lr.at(self.step)
        self.recorder.record(loss, lr * self.lr_scale.scale, time.perf_counter())  # kept on the device
        if self.cfg.train.grad_clip:
            self.gradients.clip_(self.recorder.last_total(), self.cfg.train.grad_clip)
        if lr != self.optimizer_lr:
            self.set_optimizer_lr(lr)
        if self.cfg.train.on_nan == "skip" and not self.recorder.last_finite():
            self.skipped.append(self.step + 1)  # one host sync per step: only with on_nan = "skip"
        else:
            self.optimizer.step()
        self.step += 1
        self.batch += 1

    def flush_and_deliver(self) -> None:
        """The timed flush: about every 100 ms, steps and events go out together, and a
        periodic save falls due."""
        self.session.flush_and_deliver()
        if self.save_every and time.perf_counter() - self.saved_at >= self.save_every:
            self.save_due = True

    def at_boundary(self) -> None:
        """Between two steps: the periodic save when due, then the waiting commands.

        Here, before the next step, the state is whole: a resume from it starts this very step.
        """
        if self.save_due:
            self.save_due = False
            self.save("periodic")
        if self.session.inbox or self.session.paused:
            self.session.serve_commands()

    def set_optimizer_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer_lr = lr

    def after_flush(self, batch: dict) -> None:
        """Each flushed batch: the epoch's loss, and a non-finite step stops or is reported."""
        finite = [x for x in batch["loss"] if math.isfinite(x)]
        self.epoch_loss_sum += sum(finite)
        self.epoch_loss_n += len(finite)
        if self.cfg.train.on_nan == "stop":
            for s, loss, norm in zip(batch["step"], batch["loss"], batch["grad_norm"]):
                if not (math.isfinite(loss) and math.isfinite(norm)):
                    raise NonFiniteLoss(s)
        elif self.skipped:
            skipped, self.skipped = self.skipped, []
            self.session.warn("nan_loss", step=skipped[0], id="nan_loss:skipped",
                              message=f"skipped {len(skipped)} update(s) with a non-finite loss or gradient, "
                                      f"first at step {skipped[0]}",
                              advice="lower the learning rate (-), clip gradients (train.grad_clip), or check "
                                     "the data for NaN or infinite values", skipped=len(skipped))

    def end_epoch(self, seconds: float) -> None:
        session = self.session
        session.flush()
        self.epoch += 1
        self.batch = 0
        session.epoch = self.epoch + 1
        train_loss = self.epoch_loss_sum / max(1, self.epoch_loss_n)
        self.epoch_loss_sum, self.epoch_loss_n = 0.0, 0
        self.last_train_loss = train_loss
        session.emit(ev.EpochEnd, epoch=self.epoch, step=self.step, train_loss=train_loss, seconds=round(seconds, 4))
        if self.lr.name == "step" and self.lr.at(self.step) != self.lr.at(self.step - 1):
            scale = self.lr_scale.scale
            session.emit(ev.LrChanged, step=self.step, old=self.lr.at(self.step - 1) * scale,
                         new=self.lr.at(self.step) * scale, source="schedule")
        if not self.cfg.train.val_every_steps:
            self.validate()
        every = self.cfg.checkpoint.every_epochs
        if every and self.epoch % every == 0 and session.stop_request is None:
            self.save("periodic")

    # -- validation and what hangs off it -------------------------------------------------------

    def validate(self, source: str = "schedule") -> tuple[float, dict]:
        """Measure the validation split; the policies (best, overfitting, plateau, early stopping)
        follow the schedule's validations. Returns the loss and the metrics."""
        self.session.flush()
        val_loss, metrics = evaluate(self.model, self.objective, self.feeds["val"], self.data)
        epoch = self.epoch if self.batch == 0 else self.epoch + 1
        self.policies.validated(step=self.step, epoch=epoch, val_loss=val_loss, metrics=metrics,
                                train_loss=self.last_train_loss, source=source)
        return val_loss, metrics

    def keep_best(self) -> None:
        """A new best: its weights kept in memory, and best.pt rewritten at most every few seconds."""
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_pending = True
        if time.monotonic() - self.best_saved_at >= BEST_SAVE_SECONDS:
            self.save_best()

    def plateau(self, val_loss: float) -> None:
        """The plateau schedule decays the rate after validations without improvement."""
        if self.lr.name != "plateau":
            return
        old = self.lr.at(self.step)
        if self.lr.observe_validation(val_loss):
            scale = self.lr_scale.scale
            self.session.emit(ev.LrChanged, step=self.step, old=old * scale, new=self.lr.at(self.step) * scale,
                              source="plateau")

    # -- checkpoints ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything a resume needs, as plain data."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr": {**self.lr.state_dict(), "user_scale": self.lr_scale.scale},
            "early_stopping": self.early.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.policies.history,
            "best_model": self.best_state if self.best_state is not None else {},
            "events_offset": self.session.log.offset,
        }

    def load_state_dict(self, state: dict, map_location=None) -> None:
        """Continue from a checkpoint written by `state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr.load_state_dict(state["lr"])
        self.lr_scale.scale = state["lr"].get("user_scale", 1.0)
        self.early.load_state_dict(state["early_stopping"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.session.saved_step = self.step
        self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss = state["epoch_loss"]
        self.policies.history = [tuple(h) for h in state["history"]]
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
        session = self.session
        session.flush()
        if not self.weights_finite():
            raise NonFiniteLoss(self.step, "weights")
        self.save_best()
        session.deliver()
        session.checkpointer.write("last", snapshot(self.state_dict()), kind, self.step)
        self.saved_at = time.perf_counter()
        self.save_due = False
        if kind != "periodic":
            session.checkpointer.wait()
            session.announce_saves()

    def weights_finite(self) -> bool:
        """Whether the model and the optimizer's state hold only finite numbers (one host sync)."""
        tensors = list(self.model.state_dict().values())
        tensors += [v for s in self.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
        return all_finite(tensors)

    def save_best(self) -> None:
        """Save best.pt from the best weights kept in memory (announced once in place)."""
        if self.best_state is None or not self.best_pending:
            return
        state = {"model": self.best_state, "step": self.early.best_step, "epoch": self.early.best_epoch,
                 "value": self.early.best, "monitor": self.early.monitor}
        self.session.checkpointer.write("best", snapshot(state), "best", self.early.best_step)
        self.best_saved_at = time.monotonic()
        self.best_pending = False

    # -- the end -------------------------------------------------------------------------------

    def finish(self, status: str) -> None:
        """After training: last.pt, best.pt, then the one test on the restored best weights.

        A run extended by `resume` is tested once more, marked as the extension's; a run whose
        test at this very step is already in its history (killed during its end) is not.
        """
        session = self.session
        if status in ("completed", "early_stopped") or (status == "stopped" and session.stop_request.save):
            self.save("last")
        self.save_best()
        session.checkpointer.wait()
        session.announce_saves()
        if status not in ("completed", "early_stopped") or len(self.feeds["test"]) == 0:
            return
        if self.step in self.tested_at:
            return
        if self.cfg.early_stopping.restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        loss, metrics = evaluate(self.model, self.objective, self.feeds["test"], self.data)
        self.test_done = True
        session.emit(ev.TestResult, metrics={**metrics, "loss": loss}, step=self.step,
                     extension=bool(self.tested_at))
        self.tested_at.append(self.step)

    # -- commands: the handlers the session serves ---------------------------------------------

    def set_lr(self, c: cmd.SetLr) -> cmd.Reply:
        """The rate from now on; the schedule goes on from the new level (refused past LR_RANGE)."""
        self.set_optimizer_lr(self.lr.at(self.step))  # the rate the next step is scheduled at
        self.lr_scale.check(c)
        if self.save_every and time.perf_counter() - self.saved_at >= LR_SAVE_SECONDS:
            self.save("periodic")  # a new rate is the usual cause of a blow-up: keep a way back
        old, new = self.lr_scale.apply(c)
        self.session.emit(ev.LrChanged, step=self.step, old=old, new=new, source="user")
        return cmd.Reply(True, f"learning rate {old:.3g} -> {new:.3g}", {"old": old, "new": new})

    def validate_now(self, c: cmd.Validate) -> cmd.Reply:
        val_loss, metrics = self.validate(source="user")
        # The values in the reply: the toast and `ctl validate` say what the validation found.
        values = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in {"val_loss": val_loss, **metrics}.items())
        return cmd.Reply(True, f"validated at step {self.step}: {values}")

    def checkpoint(self, c: cmd.Checkpoint) -> cmd.Reply:
        self.save("manual")
        return cmd.Reply(True, f"saved {self.session.folder.last}")

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
        self.session.emit(ev.Prediction, request_id=c.request_id, outputs=logged, weights=c.weights, step=step,
                          n_outputs=len(outputs), summary=prediction_summary(outputs))
        return cmd.Reply(True, f"{len(outputs)} prediction(s)", {"outputs": outputs, "weights": c.weights, "step": step})
