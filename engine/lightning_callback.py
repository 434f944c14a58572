"""Lightning: `Trainer(callbacks=[TraintopCallback()])` records and steers the run like a config run.

Per-step loss and gradient norms stay on the device (no per-step sync); the learning rate is
scaled around each optimizer step, so Lightning's schedulers go on from the level the user set;
pause holds the loop at the batch boundary; stop sets `trainer.should_stop`; `c` saves through
`trainer.save_checkpoint` into the run folder; validation metrics come from what the module logs.
Works with `lightning` and with `pytorch_lightning`, whichever the Trainer comes from. Under DDP
every rank runs the callback: rank 0 records, and every command (`save_checkpoint`, collective in
Lightning, included) runs on every rank at the same step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

import torch

from . import commands as cmd
from . import events as ev
from .capture import LossCapture
from .errors import UserError


def _callback_bases() -> tuple[type, ...]:
    bases = []
    try:
        from lightning.pytorch import Callback

        bases.append(Callback)
    except ImportError:
        pass
    try:
        from pytorch_lightning import Callback as LegacyCallback

        if LegacyCallback not in bases:
            bases.append(LegacyCallback)
    except ImportError:
        pass
    if not bases:
        raise ImportError('traintop.lightning needs Lightning: pip install "traintop[lightning]"')
    return tuple(bases)


class _Traintop:
    """The callback's behaviour; `TraintopCallback` adds whichever Lightning `Callback` bases exist."""

    def __init__(self, name: str | None = None, *, config: dict | None = None,
                 runs_dir: str | Path | None = None, early_stopping: dict | None = None,
                 predict: Callable[[list], list] | None = None, samples=None):
        """`name` of the run (default: the module's class); `config` adds to the module's hparams;
        `predict(inputs) -> answers` and `samples` (a dataset of (input, target)) feed the
        inference view."""
        super().__init__()
        from .watch import check_callback

        check_callback(config=config, runs_dir=runs_dir, early_stopping=early_stopping, predict=predict,
                       samples=samples)
        self.name = name
        self.config = config or {}
        self.runs_dir = runs_dir
        self.early_stopping = early_stopping
        self.predict_fn = predict
        self.samples_dataset = samples
        self.run = None
        self.trainer = None
        self._norms: list[torch.Tensor] | None = None
        self._losses: list[torch.Tensor] = []
        self._capture: LossCapture | None = None
        self._validate_requested = False
        self._user_validation = False

    # -- the run's start and end -----------------------------------------------------------------

    def on_train_start(self, trainer, pl_module) -> None:
        from .watch import watch

        self.trainer = trainer  # on every rank: rank 0 records the run, every rank obeys it
        optimizers = list(trainer.optimizers)
        config = {**_hparams(pl_module), **self.config,
                  "trainer": {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                              "accumulate_grad_batches": trainer.accumulate_grad_batches,
                              "precision": str(trainer.precision)}}
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        self.run = watch(pl_module, optimizers[0] if optimizers else None, name=self.name or type(pl_module).__name__,
                         config=config, epochs=epochs, runs_dir=self.runs_dir,
                         early_stopping=self.early_stopping, source="lightning")
        for extra in optimizers[1:]:  # every optimizer follows the user's scale
            from .lrscale import LrScale

            self.run.extra_scales.append(LrScale(extra))
        batches = trainer.num_training_batches
        if isinstance(batches, int) and batches > 0:
            self.run.steps_per_epoch = math.ceil(batches / max(1, trainer.accumulate_grad_batches))
        session = self.run.session
        session.handlers[cmd.Validate] = self._validate
        session.handlers[cmd.Checkpoint] = self._checkpoint
        if self.predict_fn is not None:
            self.run.on_predict(self.predict_fn)
        if self.samples_dataset is not None:
            self.run.samples(self.samples_dataset)
        self._capture = LossCapture()  # manual optimization hands no loss to callbacks
        self._capture.__enter__()
        self._force_validation(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.run is None:
            return
        status = None
        if self.run.session.stop_request is None and any(
                getattr(cb, "stopped_epoch", 0) for cb in trainer.callbacks if type(cb).__name__ == "EarlyStopping"):
            status = "early_stopped"  # Lightning's own EarlyStopping ended it
        self._end(status)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if self.run is None:
            return
        if isinstance(exception, KeyboardInterrupt):
            self._end("stopped")
        else:
            self._end("failed", f"{type(exception).__name__}: {exception}")

    def _end(self, status: str | None, error: str = "") -> None:
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
        self.run.finish(status, error)

    # -- each step ---------------------------------------------------------------------------------

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.run is not None:
            if not self.run.started:
                self.run._start()
            self.run.session.epoch = trainer.current_epoch + 1
            self.run.mark_epoch_start()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.run is not None:
            self.run.end_epoch()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.run is not None:  # the gradients the optimizer is about to use, before Lightning clips
            self._norms = self.run.recorder.gradients.layer_norms()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        run = self.run
        if run is None:
            return
        captured = self._capture.take() if self._capture is not None else []
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float().reshape(())
            if pl_module.automatic_optimization and trainer.accumulate_grad_batches > 1:
                loss = loss * trainer.accumulate_grad_batches  # Lightning hands on the loss it divided to accumulate
            self._losses.append(loss)
        elif captured:
            self._losses.append(torch.stack([c.float() for c in captured]).sum())
        if self._norms is None:  # no optimizer step in this batch (accumulating)
            return
        norms, self._norms = self._norms, None
        losses, self._losses = self._losses, []
        step_loss = torch.stack(losses).mean() if losses else torch.tensor(math.nan)
        run.batch_samples = _batch_len(batch)
        run.record_step(step_loss, norms=norms, boundary=False)
        run.step_boundary()  # after the update: a changed rate applies from the next step
        if run.should_stop:
            trainer.should_stop = True

    # -- the dashboard's keys ----------------------------------------------------------------------

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.run is None or self.run.session.closed or trainer.sanity_checking:  # trainer.validate() after fit()
            return
        metrics = _validation_metrics(trainer.callback_metrics)
        if not metrics:
            return
        self.run._user_validation = self._user_validation
        try:
            self.run.validate(**metrics)
        finally:
            self.run._user_validation = self._user_validation = False
        if self.run.should_stop:
            trainer.should_stop = True

    def _validate(self, c: cmd.Validate) -> cmd.Reply:
        if not self._has_validation():
            return cmd.Reply(False, "this Trainer has no validation data to validate on")
        self._validate_requested = True
        return cmd.Reply(True, f"validating after step {self.run.steps}")

    def _checkpoint(self, c: cmd.Checkpoint) -> cmd.Reply:
        path = self.run.session.folder.checkpoints / "last.ckpt"
        self.trainer.save_checkpoint(str(path))
        self.run.session.emit(ev.CheckpointSaved, path=str(path), kind="manual", step=self.run.steps)
        return cmd.Reply(True, f"saved {path}")

    def _has_validation(self) -> bool:
        loop = getattr(self.trainer.fit_loop, "epoch_loop", None)
        val_loop = getattr(loop, "val_loop", None)
        return val_loop is not None and not getattr(val_loop, "skip", False) and \
            getattr(self.trainer, "limit_val_batches", 1) != 0

    def _force_validation(self, trainer) -> None:
        """`v` validates after the current batch: the epoch loop's own check is asked once more."""
        loop = getattr(trainer.fit_loop, "epoch_loop", None)
        check = getattr(loop, "_should_check_val_fx", None)
        if check is None:
            return

        def should_check_val(*args, **kwargs):
            if self._validate_requested:
                self._validate_requested = False
                self._user_validation = True
                return True
            return check(*args, **kwargs)

        loop._should_check_val_fx = should_check_val


def _hparams(pl_module) -> dict:
    try:
        return dict(pl_module.hparams)
    except Exception:  # noqa: BLE001 - a module without hparams
        return {}


def _validation_metrics(metrics: dict) -> dict:
    """What the module logged in validation: `val_loss` as is, `val_acc` / `val/acc` as `acc`."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        name = str(key)
        for prefix in ("val_", "val/", "valid_", "validation_"):
            if name.startswith(prefix):
                short = name[len(prefix):]
                out["val_loss" if short == "loss" else short] = value
                break
    if not out:  # logged without a prefix: everything but the training numbers
        out = {("val_loss" if k == "loss" else str(k)): v for k, v in metrics.items()
               if not str(k).startswith(("train", "lr"))}
    from .watch import VALIDATION_FIELDS  # a logged "epoch" or "step" is the event's own, not a metric

    return {k: v for k, v in out.items() if isinstance(v, (int, float, torch.Tensor)) and k not in VALIDATION_FIELDS}


def _batch_len(batch) -> int:
    from .watch import _batch_len as length

    return length(batch)


try:
    TraintopCallback = type("TraintopCallback", (_Traintop, *_callback_bases()), {
        "__doc__": _Traintop.__doc__ or __doc__, "__module__": "traintop.lightning"})
except ImportError as _missing:  # the class is only needed when Lightning is there
    _reason = str(_missing)

    class TraintopCallback:  # type: ignore[no-redef]
        """Stands in when Lightning is not installed, saying so when used."""

        def __init__(self, *args, **kwargs):
            raise UserError(_reason)
