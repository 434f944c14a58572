"""Headless output: a header, a line per log interval and per event, then the final report."""

from __future__ import annotations

import math
import sys
from typing import TextIO

from traintop.engine import events as ev

from .format import duration, fmt, rate, speed  # noqa: F401 - the log's numbers; also imported from here

LOG_SECONDS = 2.0  # within a long epoch, one step line at most this often
LOOPS = {"watch": "your own, through traintop.watch", "script": "your script, watched through its optimizer",
         "lightning": "Lightning, through TraintopCallback", "transformers": "Hugging Face Trainer, through TraintopCallback"}


def metrics_text(metrics: dict) -> str:
    return "  ".join(f"{k} {fmt(v)}" for k, v in metrics.items())


class HeadlessPrinter:
    """Turns events into log lines; knows nothing of where they came from."""

    def __init__(self, out: TextIO | None = None):
        self.out = out  # None: sys.stdout when each line is printed, the CLI's guarded stream
        self.epochs = 0
        self.steps_per_epoch = 0
        self.monitor = "val_loss"
        self.folder = ""
        self.last_line_t = -math.inf
        self.last_line_step = 0
        self.window: list[float] = []  # losses since the last step line
        self.last: dict = {}
        self.best: ev.Validation | None = None
        self.saved: ev.CheckpointSaved | None = None  # the last save to resume from (best.pt aside)
        self.best_saved: ev.CheckpointSaved | None = None  # the last best.pt
        self.early_said = False  # the run's first early_stopping_changed (its start) has been seen
        self.test: ev.TestResult | None = None  # the first test: the run's score
        self.extension_test: ev.TestResult | None = None  # the latest test after an extension
        self.status = ""
        self.log_timing = False  # [signals] log_timing: each step line says where the time went
        self.timing: dict[str, float] = {}  # seconds per phase over the samples since the last line

    def line(self, text: str) -> None:
        out = self.out or sys.stdout
        out.write(text + "\n")  # in one write: a script printing beside it cannot land inside the line
        out.flush()

    def apply(self, e: ev.Event) -> None:
        """Print what a person should see of one event."""
        handler = getattr(self, f"on_{e.event}", None)
        if handler:
            handler(e)

    def on_run_started(self, e: ev.RunStarted) -> None:
        self.epochs, self.steps_per_epoch = e.epochs, e.steps_per_epoch
        self.monitor = e.early_stopping.get("monitor", "val_loss")
        self.log_timing = bool(e.signals.get("log_timing", False))
        d = e.data
        classes = f" · {len(d['classes'])} classes" if d.get("classes") else ""
        self.line(f"traintop · run {e.run_id} ({e.name})")
        if self.folder:
            self.line(f"  folder  {self.folder}")
        self.line(f"  device  {e.device} · {e.params:,} parameters")
        if d.get("task"):  # a loop of the user's own says nothing of its data
            self.line(f"  data    {d['task']} · {d['n_train']} train / {d['n_val']} val / {d['n_test']} test"
                      f" · {d.get('inputs', len(d.get('features', [])))} inputs{classes}")
        if e.source != "config":
            self.line(f"  loop    {LOOPS.get(e.source, e.source)}")
        if e.epochs or e.steps_per_epoch:
            self.line(f"  plan    {e.epochs or '?'} epochs × {e.steps_per_epoch or '?'} steps")

    def on_steps(self, e: ev.Steps) -> None:
        self.window.extend(e.loss)
        for phase, seconds in e.timing.items():
            if phase != "step":
                self.timing[phase] = self.timing.get(phase, 0.0) + sum(seconds)
        self.last = {"epoch": e.epoch[-1], "step": e.step[-1], "grad_norm": e.grad_norm[-1],
                     "lr": e.lr[-1], "samples_per_s": e.samples_per_s, "t": e.t}
        if e.t - self.last_line_t >= LOG_SECONDS:
            self.step_line()

    def step_line(self) -> None:
        if not self.window:
            return
        s = self.last
        total = self.epochs * self.steps_per_epoch
        # the finite losses' mean: a step with no loss to record (gradients set by hand) is left out;
        # after a NaN every loss is NaN, and so is the mean
        finite = [x for x in self.window if x is not None and math.isfinite(x)]
        loss = sum(finite) / len(finite) if finite else math.nan
        epoch = f"epoch {s['epoch']:>3}/{self.epochs}" if self.epochs else f"epoch {s['epoch']:>3}"
        step = f"step {s['step']:>6}/{total}" if total else f"step {s['step']:>6}"
        seconds = s["t"] - self.last_line_t
        pace = speed(s["samples_per_s"], (s["step"] - self.last_line_step) / seconds
                     if math.isfinite(seconds) and seconds > 0 else None)
        self.line(f"{epoch}  {step}  loss {fmt(loss)}"
                  f"  grad {fmt(s['grad_norm'], 3)}  lr {rate(s['lr'])}"
                  + (f"  {pace}" if pace else "") + self.timing_text())
        self.window = []
        self.last_line_t, self.last_line_step = s["t"], s["step"]

    def timing_text(self) -> str:
        """Where the sampled steps' time went, as shares: "  time data 12% forward 30% ..."."""
        timing, self.timing = self.timing, {}
        total = sum(timing.values())
        if not self.log_timing or total <= 0:
            return ""
        return "  time " + " ".join(f"{phase} {seconds / total:.0%}" for phase, seconds in timing.items())

    def on_epoch_end(self, e: ev.EpochEnd) -> None:
        self.step_line()

    def on_validation(self, e: ev.Validation) -> None:
        marker = "  * best" if e.best else f"  ({e.since_best} since best)"
        who = " (requested)" if e.source == "user" else ""
        self.line(f"  val{who}  epoch {e.epoch}  step {e.step}  val_loss {fmt(e.val_loss)}"
                  f"  {metrics_text(e.metrics)}{marker}")
        if e.best:
            self.best = e

    def on_lr_changed(self, e: ev.LrChanged) -> None:
        self.line(f"  lr      {fmt(e.old, 3)} -> {fmt(e.new, 3)} at step {e.step} ({e.source})")

    def on_paused(self, e: ev.Paused) -> None:
        self.line(f"  paused at step {e.step}")

    def on_resumed(self, e: ev.Resumed) -> None:
        if e.source == "checkpoint":
            self.epochs = e.epochs or self.epochs
            self.line(f"resumed from checkpoints/last.pt at epoch {e.step // max(1, self.steps_per_epoch)}, "
                      f"step {e.step}" + (f": {e.note}" if e.note else ""))
        else:
            self.line(f"  resumed at step {e.step}")

    def on_early_stopping_changed(self, e: ev.EarlyStoppingChanged) -> None:
        if e.monitor:  # what the run judges its best by (a loop of your own says it here)
            self.monitor = e.monitor
        if self.early_said:  # the first is how the run starts; later ones are changes (ctl, the e key)
            self.line(f"  early stopping {'on' if e.enabled else 'off'} at step {e.step}: patience {e.patience}"
                      + (f", watching {e.monitor}" if e.monitor else ""))
        self.early_said = True

    def on_checkpoint_saved(self, e: ev.CheckpointSaved) -> None:
        if e.kind == "best":
            self.best_saved = e
        else:  # best.pt is rewritten often; the final line names it
            self.saved = e
            self.line(f"  saved   {e.kind} checkpoint at step {e.step}: "
                      + (e.path or "by the loop's own function, in no file it named"))

    def on_warning(self, e: ev.RunWarning) -> None:
        """A condition once, with what to try; as it persists, a short line at its 2nd, 4th, 8th... time."""
        if e.count <= 1:
            self.line(f"  warning [{e.kind}] {e.message}" + (f"\n            try: {e.advice}" if e.advice else ""))
        elif e.count & (e.count - 1) == 0:
            self.line(f"  warning [{e.kind}] again at step {e.step} ({e.count} times since step {e.first_step})")

    def on_lr_find(self, e: ev.LrFind) -> None:
        """The range test: a line per batch of rates, then the suggested rate and how to use it."""
        if e.lr:
            loss = [x for x in e.smoothed if x is not None and math.isfinite(x)]
            self.line(f"  lr-find  lr {rate(e.lr[0])} .. {rate(e.lr[-1])}  smoothed loss "
                      f"{fmt(loss[-1]) if loss else '-'}")
        if e.done:
            self.line(f"  lr-find  {e.reason}")
            if e.suggested:
                self.line(f"  suggested learning rate: {e.suggested:.3g}")
            if e.command:
                self.line(f"  train with it:  {e.command}")

    def on_early_stopped(self, e: ev.EarlyStopped) -> None:
        self.line(f"  early stop at epoch {e.epoch}: {e.monitor} has not improved since epoch "
                  f"{e.best_epoch} ({fmt(e.best_value)})")

    def on_test_result(self, e: ev.TestResult) -> None:
        if e.extension and self.test is not None:
            self.extension_test = e
        elif self.test is None:
            self.test = e

    def on_run_finished(self, e: ev.RunFinished) -> None:
        self.step_line()
        self.status = e.status
        self.line(f"finished: {e.status.replace('_', ' ')} at epoch {e.epoch}, step {e.step}, "
                  f"after {e.t:.1f}s")
        if e.error:
            self.line(f"  error   {e.error}")
        if e.status == "failed":  # what is left to go on from
            saved, best = self.saved, self.best_saved
            if saved is not None:
                self.line(f"  kept    {saved.path or 'what the loop saved its own way'}, saved at step {saved.step}")
            elif best is not None:
                self.line(f"  kept    no last.pt to resume from; {best.path or 'the best weights'} (step {best.step}) "
                          "holds the best weights, for predict")
            else:
                self.line("  kept    no checkpoint: the run failed before its first save")
        if self.best is not None:
            value = self.best.val_loss if self.monitor == "val_loss" else self.best.metrics.get(self.monitor[4:])
            self.line(f"  best    {self.monitor} {fmt(value)} at epoch {self.best.epoch} (step {self.best.step})")
        if self.test is not None and self.extension_test is not None:
            self.line(f"  test    {metrics_text(self.test.metrics)}  (the first test, step {self.test.step}: "
                      "the run's score)")
            self.line(f"  retest  {metrics_text(self.extension_test.metrics)}  (after the extension, "
                      f"step {self.extension_test.step})")
        elif self.test is not None:
            self.line(f"  test    {metrics_text(self.test.metrics)}")
        elif e.status == "stopped":
            self.line("  test    not run: the run was stopped before the end")
        if self.folder:
            self.line(f"  folder  {self.folder}")
