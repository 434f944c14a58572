"""A config run's training loop: forward, loss, backward, update; everything else hangs off named points.

The Trainer owns the model, optimizer and data of a config run and stands on a Session, as every
loop owner does: the session records steps, serves commands, writes checkpoints and ends the run.
What follows a validation (best weights, overfitting, plateau, early stopping) hangs on
`ValidationPolicies`; commands are served from the session's table of handlers.

On several ranks (the session has joined a distributed.World) the model trains wrapped in
DistributedDataParallel, each rank on its shard of every epoch's permutation, all with the same
number of steps; validation and the test measure the whole split across the ranks.
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
from .precision import Precision
from .recorder import StepRecorder
from .session import Session
from .signals import Signals
from .timing import PhaseTimer

BEST_SAVE_SECONDS = 2.0  # best.pt is rewritten at most this often; the final best is always saved
LR_SAVE_SECONDS = 5.0  # a user's LR change saves last.pt first when the last save is older than this
LOGGED_OUTPUTS = 100  # a prediction event lists the answers of requests up to this size


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """The configured optimizer over `params`; a compiled run's rate is a tensor, changed in
    place, so that a new rate is an input of the compiled step rather than a constant in it."""
    o = cfg.optim
    lr = torch.tensor(o.lr, device=params[0].device) if cfg.train.compile and params else o.lr
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0,
                               weight_decay=o.weight_decay)
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=o.weight_decay)
    opt = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[o.name]
    return opt(params, lr=lr, weight_decay=o.weight_decay)


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


def ranks_model(model: torch.nn.Module, device: torch.device, world) -> torch.nn.Module:
    """The model as a training step calls it: wrapped in DistributedDataParallel on several ranks
    (gradients averaged over the ranks in backward), itself in one process."""
    if world is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shard_size(n_train: int, world) -> int:
    """The training samples each rank trains on per epoch: the same on every rank, so every rank
    takes the same number of steps (a few samples an epoch are left out, a different few each time)."""
    if world is None:
        return n_train
    if n_train < world.size:
        raise UserError(f"the training split has {n_train} sample(s), fewer than the {world.size} ranks training it")
    return n_train // world.size


def rank_rng(device: torch.device) -> dict:
    """This rank's random state, for an exact resume of every rank."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.zeros(0, dtype=torch.uint8)
    return {"torch": torch.get_rng_state(), "cuda": cuda}


class Trainer:
    """Trains one config run's model on its data, on a Session."""

    def __init__(self, cfg: Config, data: Dataset, device: torch.device, session: Session,
                 model: Model | None = None):
        """`model`: the config's model, when it was built already (to fail before the folder exists)."""
        self.cfg, self.data, self.device, self.session = cfg, data, device, session
        built = model or Model(cfg, data, device)
        self.objective, self.model = built.objective, built.module
        self.world = session.world  # several ranks, or None
        self.net = ranks_model(self.model, device, self.world)  # what the step calls: DDP on several ranks
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.optimizer = build_optimizer(cfg, self.params)
        self.gradients = Gradients(self.params, device)
        self.precision = Precision(cfg.train.precision, device, self.optimizer)
        # Training only: validation, test and predict run the eager model, whose state_dict keeps
        # its own names. Under fp16 the scaler calls the optimizer's eager step itself.
        self.compiled_step = cfg.train.compile and self.precision.scaler is None
        self.forward = torch.compile(self.net) if cfg.train.compile else self.net
        self.optimizer_step = torch.compile(self.optimizer.step) if self.compiled_step else self.optimizer.step
        self.compiled_graphs = 0  # graphs compiled in the first epoch; more later is a recompile
        self.first_epoch = 0

        self.feeds = data.feeds(device)  # device tensors, or DataLoaders for streamed data
        self.batch_size = cfg.data.batch_size
        self.accumulate = cfg.train.accumulate
        self.n_train = len(self.feeds["train"])
        self.n_shard = shard_size(self.n_train, self.world)  # the samples each rank trains on per epoch
        self.batches_per_epoch = math.ceil(self.n_shard / self.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.accumulate)  # optimizer steps
        self.lr = LearningRate(cfg, self.steps_per_epoch)  # the schedule's rate, in the optimizer's groups
        if cfg.schedule.warmup_steps > self.lr.total:  # equal: the rate reaches optim.lr at the last step
            cfg.warnings.append(("config", f"schedule.warmup_steps = {cfg.schedule.warmup_steps} is longer than the "
                                           f"whole run ({self.lr.total} steps): the rate never reaches optim.lr; "
                                           "give fewer warm-up steps"))
        # The user's changes, around each step: by optimizer hooks, or for a compiled step around
        # the call, outside the compiled code (a hook would be traced into it, its scale a constant).
        self.lr_scale = LrScale(self.optimizer, hooks=not self.compiled_step)
        self.recorder = StepRecorder([n for n, _ in named], self.gradients)

        es = cfg.early_stopping
        early = EarlyStopping(es.monitor, es.mode, es.patience, es.min_delta, es.enabled)
        self.early = early
        val = self.feeds["val"]
        inputs = (lambda n: val.inputs(list(range(min(n, len(val)))))) if len(val) else None
        self.signals = Signals.for_model(session, cfg.signals, self.model, inputs)
        self.policies = ValidationPolicies(session, early, on_best=self.keep_best, signals=self.signals)
        self.policies.checks.append(self.plateau)

        self.timer = PhaseTimer(device=device)  # a step now and then, phase by phase
        self.timer.step_of = lambda: self.step + 1  # the step being trained
        session.recorder, session.timer = self.recorder, self.timer
        # an epoch's samples over its steps: a step that would take more batches than an epoch has
        # trains the epoch's (and the last step of an epoch may take fewer)
        session.samples_per_step = self.n_shard / self.steps_per_epoch
        session.flush_hooks.append(self.after_flush)
        session.handlers.update({
            cmd.SetLr: self.set_lr, cmd.Validate: self.validate_now, cmd.Checkpoint: self.checkpoint,
            cmd.EarlyStopping: self.policies.early_stopping, cmd.Predict: self.predict,
        })

        self.step = 0  # optimizer steps done; the step being trained is step + 1
        self.epoch = 0  # epochs completed
        self.batch = 0  # batches done in the current epoch (accumulate of them a step)
        self.optimizer_lr = math.nan  # the rate last written into the optimizer's groups
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_saved_at = -math.inf
        self.best_pending = False
        self.epoch_loss_sum = 0.0
        self.epoch_loss_n = 0
        self.skipped: list[int] = []
        self.overflowed = 0  # fp16 steps the scaler skipped
        self.test_done = False
        self.tested_at: list[int] = []  # steps of the tests in the run's history (an extended run's)
        self.save_every = cfg.checkpoint.every_seconds
        self.saved_at = session.now()  # the last save of last.pt, or the start of training
        self.save_due = False  # last.pt is written at the next step boundary
        self.last_train_loss = math.nan

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> str:
        """Train until the epochs run out, early stopping, a stop command, or a failure."""
        session = self.session
        session.flush_started = time.perf_counter()
        self.saved_at = session.now()
        self.recorder.first_step = self.step + 1
        self.first_epoch = self.epoch  # this process's first: a resumed run compiles afresh
        session.epoch = self.epoch + 1
        self.set_optimizer_lr(self.lr.at(self.step))
        while self.epoch < self.cfg.train.epochs and session.stop_request is None:
            self.train_epoch()
        session.flush()
        return "completed" if session.stop_request is None else session.stop_status

    @property
    def epoch_of_last_step(self) -> int:
        """The epoch (1-based) the last step trained in: a run that ends mid-epoch ends in the one
        it had begun, not the last it completed."""
        return self.epoch + 1 if self.batch else self.epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        """This epoch's data order: seeded by (seed, epoch), so a resumed run repeats it."""
        g = torch.Generator().manual_seed(self.cfg.run.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_train, generator=g)

    def shard(self, order: torch.Tensor) -> torch.Tensor:
        """This rank's part of an epoch's order: every size-th sample from its rank on, the same
        number on every rank (one process: the whole order)."""
        if self.world is None:
            return order
        return order[self.world.rank:self.n_shard * self.world.size:self.world.size]

    def train_epoch(self) -> None:
        session = self.session
        batches_left = self.feeds["train"].batches(self.shard(self.permutation(self.epoch)), self.batch_size,
                                                   start=self.batch, augment=self.data.augment)
        val_every = self.cfg.train.val_every_steps
        started = time.perf_counter()
        self.net.train()
        while self.batch < self.batches_per_epoch:
            if session.commands_due() or self.save_due:
                self.at_boundary()
                if session.stop_request is not None:
                    return
            n = min(self.accumulate, self.batches_per_epoch - self.batch)
            self.timer.start()
            batches = [next(batches_left) for _ in range(n)]
            self.timer.lap("data")
            self.train_step(batches)
            if self.recorder.full or session.flush_due():
                self.flush_and_deliver()
            if val_every and self.step % val_every == 0:
                self.validate()
                if session.stop_request is not None:  # early stopping: not one step more
                    return
        self.end_epoch(time.perf_counter() - started)

    def train_step(self, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step over `batches` (one, or `train.accumulate`): forward and loss (under
        autocast), backward (gradients cleared, then filled by each batch), update."""
        precision, loss = self.precision, None
        total = sum(len(yb) for _, yb in batches) if len(batches) > 1 else 0
        for i, (xb, yb) in enumerate(batches):
            with precision.autocast():
                part = self.objective(self.forward(xb), yb)
            if total:  # each batch by its share of the samples: the step's loss is their mean
                part = part * (len(yb) / total)
            self.timer.lap("forward")
            self.gradients.backward(precision.scale(part), clear=i == 0)
            self.timer.lap("backward")
            loss = part.detach() if loss is None else loss + part.detach()
        precision.unscale()  # fp16: the true gradients, before they are measured or clipped
        lr = self.lr.at(self.step)
        self.recorder.record(loss, lr * self.lr_scale.scale, time.perf_counter())  # no sync: see StepRecorder
        if self.cfg.train.grad_clip:
            self.gradients.clip_(self.recorder.last_total(), self.cfg.train.grad_clip)
        if lr != self.optimizer_lr:
            self.set_optimizer_lr(lr)
        if self.cfg.train.on_nan == "skip" and not self.recorder.last_finite():
            self.skipped.append(self.step + 1)  # one host sync per step: only with on_nan = "skip"
            precision.skip()
        else:
            precision.step(self.update)
        self.timer.lap("update")
        self.step += 1
        self.batch += len(batches)

    def update(self) -> None:
        """The optimizer's step, with the user's scale on its rate."""
        if self.compiled_step:
            self.lr_scale.around(self.optimizer_step)
        else:
            self.optimizer_step()  # the scale is applied by the optimizer's own hooks

    def flush_and_deliver(self) -> None:
        """The timed flush: about every 100 ms, steps and events go out together, and a
        periodic save falls due."""
        self.session.flush_and_deliver()
        if self.save_every and self.session.now() - self.saved_at >= self.save_every:
            self.save_due = True

    def at_boundary(self) -> None:
        """Between two steps: the periodic save when due, then the waiting commands.

        Here, before the next step, the state is whole: a resume from it starts this very step.
        """
        if self.save_due:
            self.save_due = False
            self.save("periodic")
        if self.session.commands_due():
            self.session.serve_commands()

    def set_optimizer_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # in place: the compiled step reads the same tensor
            else:
                group["lr"] = lr
        self.optimizer_lr = lr

    def after_flush(self, batch: dict) -> None:
        """Each flushed batch: the epoch's loss, and a non-finite step stops or is reported."""
        finite = [x for x in batch["loss"] if math.isfinite(x)]
        self.epoch_loss_sum += sum(finite)
        self.epoch_loss_n += len(finite)
        if self.precision.scaler is not None:
            self.overflows(batch)
        if self.cfg.train.compile:
            self.recompiles()
        if self.cfg.train.on_nan == "stop":
            for s, loss, norm in zip(batch["step"], batch["loss"], batch["grad_norm"]):
                if not (math.isfinite(loss) and (math.isfinite(norm) or self.precision.scaler is not None)):
                    raise NonFiniteLoss(s)
        elif self.skipped:
            skipped, self.skipped = self.skipped, []
            self.session.warn("nan_loss", step=skipped[0], id="nan_loss:skipped",
                              message=f"skipped {len(skipped)} update(s) with a non-finite loss or gradient, "
                                      f"first at step {skipped[0]}",
                              advice="lower the learning rate (-), clip gradients (train.grad_clip), or check "
                                     "the data for NaN or infinite values", skipped=len(skipped))

    def overflows(self, batch: dict) -> None:
        """fp16: a finite loss with gradients that overflowed is a step the scaler skipped (it
        then lowers its scale), reported as one warning whose count grows, never a failure."""
        skipped = [s for s, loss, norm in zip(batch["step"], batch["loss"], batch["grad_norm"])
                   if math.isfinite(loss) and not math.isfinite(norm)]
        if not skipped:
            return
        self.overflowed += len(skipped)
        scale = self.precision.current_scale()
        self.session.warn("fp16_overflow", step=skipped[0], id="fp16_overflow",
                          message=f"fp16: the gradient scaler skipped {len(skipped)} update(s) whose gradients "
                                  f"overflowed, first at step {skipped[0]} ({self.overflowed} in all); "
                                  f"its scale is now {scale:g}",
                          advice="a few at the start are the scaler finding its scale; many more mean the "
                                 "gradients are too large for fp16: try train.precision = \"bf16\" or clip "
                                 "gradients (train.grad_clip)",
                          skipped=len(skipped), skipped_total=self.overflowed, scale=scale)

    def recompiles(self) -> None:
        """A compiled run that compiles again after its first epoch stalls: said at each recompile.

        The first epoch compiles the forward and the optimizer's step, and once more for a
        smaller last batch (a graph for any batch size from then on).
        """
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        if self.epoch == self.first_epoch or graphs <= self.compiled_graphs:
            self.compiled_graphs = max(self.compiled_graphs, graphs)
            return
        self.compiled_graphs = graphs
        self.session.warn("recompile", step=self.step, id="recompile",
                          message=f"the compiled model or optimizer step was compiled again by step {self.step} "
                                  f"({graphs} graphs so far): training stalls while it compiles",
                          advice="keep batch shapes and settings fixed while training, or set "
                                 "train.compile = false", graphs=graphs)

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
        self.warn_late()
        every = self.cfg.checkpoint.every_epochs
        if every and self.epoch % every == 0 and session.stop_request is None:
            self.save("periodic")

    # -- validation and what hangs off it -------------------------------------------------------

    def validate(self, source: str = "schedule") -> tuple[float, dict]:
        """Measure the validation split; the policies (best, overfitting, plateau, early stopping)
        follow the schedule's validations. Returns the loss and the metrics."""
        self.session.flush()
        val_loss, metrics = evaluate(self.model, self.objective, self.feeds["val"], self.data, self.world)
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
            "scaler": self.precision.state_dict(),
            "lr": {**self.lr.state_dict(), "user_scale": self.lr_scale.scale},
            "early_stopping": self.early.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch": self.batch,
            "epoch_loss": [self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss],
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": self.policies.history,
            "signals": self.signals.state_dict(),
            "best_model": self.best_state if self.best_state is not None else {},
            "events_offset": self.session.log.offset,
            "world_size": self.session.world_size,
        }

    def load_state_dict(self, state: dict, map_location=None) -> None:
        """Continue from a checkpoint written by `state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.cfg.train.compile:  # the rate a tensor on the weights' device, whatever the file held
            for group in self.optimizer.param_groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.params[0].device)
        self.precision.load_state_dict(state.get("scaler", {}))
        self.lr.load_state_dict(state["lr"])
        self.lr_scale.scale = state["lr"].get("user_scale", 1.0)
        self.early.load_state_dict(state["early_stopping"])
        self.step, self.epoch, self.batch = state["step"], state["epoch"], state["batch"]
        self.session.saved_step = self.step
        self.epoch_loss_sum, self.epoch_loss_n, self.last_train_loss = state["epoch_loss"]
        self.policies.history = [tuple(h) for h in state["history"]]
        self.signals.load_state_dict(state.get("signals", {}))
        self.best_state = state.get("best_model") or None
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        if self.world is not None and state.get("rank_rng"):  # each rank goes on with its own random stream
            mine = state["rank_rng"][self.world.rank]
            torch.set_rng_state(mine["torch"])
            if len(mine["cuda"]) and self.device.type == "cuda":
                torch.cuda.set_rng_state(mine["cuda"], self.device)

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
        ranks = self.world.gather(rank_rng(self.device)) if self.world is not None else None
        self.saved_at = session.now()
        self.save_due = False
        if not session.leader:  # rank 0 writes what every rank needs
            return
        self.save_best()
        session.deliver()
        state = self.state_dict()
        if ranks is not None:
            state["rank_rng"] = ranks
        session.checkpointer.write("last", snapshot(state), kind, self.step)
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

    def salvage(self) -> None:
        """After an error in training (a bug in the model's code, a bad batch): the best weights
        not yet written go to best.pt, and the weights as the last whole step left them to last.pt
        when they are finite, so the run can be resumed once the cause is fixed. Whatever goes
        wrong here leaves the files as they were: the error the run ends with is the first one."""
        try:
            self.lr_scale.put_back()  # an optimizer step that raised left its rates scaled
            try:
                self.save("last")
            except NonFiniteLoss:
                pass  # the last finite last.pt stays
            self.save_best()
            self.session.checkpointer.wait()
            self.session.announce_saves()
        except Exception:  # noqa: BLE001 - the training's own error is the one to report
            pass

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
        loss, metrics = evaluate(self.model, self.objective, self.feeds["test"], self.data, self.world)
        self.test_done = True
        session.emit(ev.TestResult, metrics={**metrics, "loss": loss}, step=self.step,
                     extension=bool(self.tested_at))
        self.tested_at.append(self.step)
        self.warn_late()

    def warn_late(self) -> None:
        """The data's warnings found only as it was read (one condition each, its count rising)."""
        if self.data.late_warnings is not None and self.session.leader:
            for kind, message in self.data.late_warnings():
                self.session.warn(kind, message, step=self.step, id=f"{kind}:late")

    # -- commands: the handlers the session serves ---------------------------------------------

    def set_lr(self, c: cmd.SetLr) -> cmd.Reply:
        """The rate from now on; the schedule goes on from the new level (refused past LR_RANGE)."""
        self.set_optimizer_lr(self.lr.at(self.step))  # the rate the next step is scheduled at
        self.lr_scale.check(c)
        if self.save_every and self.session.now() - self.saved_at >= LR_SAVE_SECONDS:
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
