"""Hugging Face: `Trainer(..., callbacks=[TraintopCallback()])` records and steers the run.

No callback is handed the loss, so the loss of each backward pass is captured (see capture.py):
that works with a custom `compute_loss` too, and gives every step's loss however large
`logging_steps` is. The Trainer divides each micro-batch's loss by the accumulation steps before
its backward pass, so a step's loss is the sum of what it backpropagated. Gradient norms are the
ones the optimizer sees, after the Trainer's clipping (`max_grad_norm`). Pause holds the loop at
the step's end; stop, checkpoint and validate go through the Trainer's own control flags. Under
DDP every rank runs the callback: rank 0 records, and every rank sets the same flags at the same step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch

from . import commands as cmd
from . import events as ev
from .capture import LossCapture
from .errors import UserError

SKIPPED_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch")


def _callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError:
        raise ImportError('traintop.transformers needs Hugging Face transformers: '
                          'pip install "traintop[hf]"') from None
    return TrainerCallback


class _Traintop:
    """The callback's behaviour; `TraintopCallback` adds transformers' `TrainerCallback` base."""

    def __init__(self, name: str | None = None, *, config: dict | None = None,
                 runs_dir: str | Path | None = None, early_stopping: dict | None = None,
                 predict: Callable[[list], list] | None = None, samples=None):
        """`name` of the run (default: the model's class); `config` adds to the TrainingArguments
        recorded; `predict(inputs) -> answers` and `samples` feed the inference view."""
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
        self._capture: LossCapture | None = None
        self._norms: list[torch.Tensor] | None = None
        self._control = None
        self._pending_save = False
        self._user_validation = False

    def on_train_begin(self, args, state, control, model=None, optimizer=None, train_dataloader=None, **kwargs):
        from .watch import watch

        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        config = {**_arguments(args), **self.config}
        epochs = math.ceil(args.num_train_epochs) or None if args.max_steps is None or args.max_steps <= 0 else None
        self.run = watch(model, inner, name=self.name or type(model).__name__, config=config, epochs=epochs,
                         runs_dir=self.runs_dir, early_stopping=self.early_stopping, source="transformers")
        if state.max_steps and state.num_train_epochs:
            self.run.steps_per_epoch = math.ceil(state.max_steps / max(1, state.num_train_epochs))
        session = self.run.session
        session.handlers[cmd.Validate] = self._validate
        session.handlers[cmd.Checkpoint] = self._checkpoint
        if self.predict_fn is not None:
            self.run.on_predict(self.predict_fn)
        if self.samples_dataset is not None:
            self.run.samples(self.samples_dataset)
        self._capture = LossCapture(scaler=getattr(optimizer, "scaler", None))
        self._capture.__enter__()
        self.run._start()

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.session.epoch = int(state.epoch or 0) + 1
            self.run.mark_epoch_start()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.run is not None:
            self.run.end_epoch()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.run is not None:  # what the optimizer is about to use, after the Trainer's clipping
            self._norms = self.run.recorder.gradients.layer_norms()

    def on_step_end(self, args, state, control, **kwargs):
        run = self.run
        if run is None:
            return control
        losses = self._capture.take()
        loss = torch.stack([x.float() for x in losses]).sum() if losses else torch.tensor(math.nan)
        norms, self._norms = self._norms, None
        run.batch_samples = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self._control = control
        run.record_step(loss, norms=norms, boundary=False)
        run.step_boundary()  # after the update: a changed rate applies from the next step
        if run.should_stop:
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self.run is None or self.run.session.closed or not metrics:  # trainer.evaluate() after train()
            return
        from .watch import VALIDATION_FIELDS  # an "epoch" or "step" is the event's own, not a metric

        values = {}
        for key, value in metrics.items():
            name = key[len("eval_"):] if key.startswith("eval_") else key
            if name in SKIPPED_METRICS or name in VALIDATION_FIELDS or not isinstance(value, (int, float)):
                continue
            values["val_loss" if name == "loss" else name] = value
        self.run._user_validation = self._user_validation
        try:
            self.run.validate(**values)
        finally:
            self.run._user_validation = self._user_validation = False
        if self.run.should_stop:
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        if self.run is None:
            return
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        kind = "manual" if self._pending_save else "periodic"
        self._pending_save = False
        self.run.session.emit(ev.CheckpointSaved, path=str(path), kind=kind, step=self.run.steps)

    def on_train_end(self, args, state, control, **kwargs):
        if self.run is None:
            return
        if self._capture is not None:
            self._capture.__exit__(None, None, None)
            self._capture = None
        self.run.finish()

    def _validate(self, c: cmd.Validate) -> cmd.Reply:
        self._control.should_evaluate = True
        self._user_validation = True
        return cmd.Reply(True, f"validating after step {self.run.steps}")

    def _checkpoint(self, c: cmd.Checkpoint) -> cmd.Reply:
        self._control.should_save = True
        self._pending_save = True
        return cmd.Reply(True, f"saving a checkpoint after step {self.run.steps}")


def _arguments(args) -> dict:
    """The TrainingArguments worth recording: plain values only."""
    try:
        values = args.to_dict()
    except Exception:  # noqa: BLE001
        return {}
    return {k: v for k, v in values.items() if isinstance(v, (bool, int, float, str)) and v != ""}


try:
    TraintopCallback = type("TraintopCallback", (_Traintop, _callback_base()), {
        "__doc__": _Traintop.__doc__, "__module__": "traintop.transformers"})
except ImportError as _missing:
    _reason = str(_missing)

    class TraintopCallback:  # type: ignore[no-redef]
        """Stands in when transformers is not installed, saying so when used."""

        def __init__(self, *args, **kwargs):
            raise UserError(_reason)
