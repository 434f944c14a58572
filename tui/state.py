"""What the dashboard knows of a run, built from its events alone (no torch, no terminal)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from traintop.engine import events as ev

from .series import Ema, Series

SMOOTHING = (0.0, 0.6, 0.9, 0.99)  # `s` cycles through these
RESOURCE_SAMPLES = 100  # resources samples kept: the view lists the latest


@dataclass
class Marker:
    """A vertical line on the curves: an LR change, a pause, the best epoch, an early stop."""

    step: int
    kind: str  # lr | pause | best | stop
    label: str


@dataclass
class RunState:
    """Arrays of every step and validation, and the facts the header and side panel show."""

    run_id: str = ""
    name: str = ""
    device: str = ""
    status: str = "starting"  # starting | running | paused | finished | failed
    final_status: str = ""
    epochs: int = 0
    steps_per_epoch: int = 0
    params: int = 0
    data: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 0
    early_enabled: bool = True
    since_best: int = 0
    step: int = 0
    epoch: int = 0
    t: float = 0.0
    samples_per_s: float = 0.0
    lr: float = 0.0
    loss: Series = field(default_factory=Series)
    grad_norm: Series = field(default_factory=Series)
    lr_series: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    val_metric: Series = field(default_factory=Series)
    metric_name: str = ""
    source: str = "config"  # who owns the loop: config, watch, script, lightning, transformers
    metrics: dict[str, Series] = field(default_factory=dict)  # every validation metric, by name
    scalars: dict[str, Series] = field(default_factory=dict)  # a loop's extra per-step scalars
    layer_norms: dict[str, Series] = field(default_factory=dict)
    smoothers: dict[float, Ema] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)
    best: ev.Validation | None = None
    test: dict | None = None
    warnings: list[ev.RunWarning] = field(default_factory=list)
    log: list[ev.Event] = field(default_factory=list)  # every event but steps and resources, for the event log
    resources: list[ev.Resources] = field(default_factory=list)  # the latest samples, oldest first
    error: str = ""
    version: int = 0  # bumped by every change, so the screen redraws only when needed

    def apply(self, e: ev.Event) -> None:
        """Fold one event into the state."""
        handler = getattr(self, f"_on_{e.kind}", None)
        if handler is not None:
            handler(e)
        if not isinstance(e, (ev.Steps, ev.Resources)):  # a sample every few seconds would bury the log
            self.log.append(e)
        self.t = max(self.t, e.t)
        self.version += 1

    def smoothed(self, alpha: float) -> Series:
        """The training loss smoothed with EMA weight `alpha`, kept up to date incrementally."""
        if alpha not in self.smoothers:
            smoother = Ema(alpha)
            smoother.extend(self.loss.x, self.loss.y)
            self.smoothers[alpha] = smoother
        return self.smoothers[alpha].values

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent pace, or None before it is known."""
        done = self.step
        # NaN when its event carried null: no pace, no ETA
        if self.status != "running" or not done or not 0 < self.samples_per_s < math.inf:
            return None
        steps_per_s = self.samples_per_s / max(1, self.config.get("data", {}).get("batch_size", 1))
        return (self.total_steps - done) / steps_per_s

    def best_value(self) -> float | None:
        if self.best is None:
            return None
        return self.best.val_loss if self.monitor == "val_loss" else self.best.metrics.get(self.monitor[4:])

    # -- one handler per event kind --------------------------------------------------------------

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self.run_id, self.name, self.device, self.params = e.run_id, e.name, e.device, e.params
        self.epochs, self.steps_per_epoch, self.data, self.config = e.epochs, e.steps_per_epoch, e.data, e.config
        es = e.config.get("early_stopping", {})
        self.monitor, self.mode = es.get("monitor", "val_loss"), es.get("mode", "min")
        self.patience, self.early_enabled = es.get("patience", 0), es.get("enabled", True)
        self.metric_name = {"classification": "accuracy", "regression": "rmse"}.get(e.data.get("task"), "")
        self.source = e.source
        self.status = "running"

    def _on_resources(self, e: ev.Resources) -> None:
        self.resources.append(e)
        del self.resources[:-RESOURCE_SAMPLES]

    def _on_steps(self, e: ev.Steps) -> None:
        if not e.step:  # a batch with no steps (valid, if odd) changes nothing
            return
        steps = np.asarray(e.step, dtype=np.float64)
        loss = np.asarray(e.loss, dtype=np.float64)
        self.loss.extend(steps, loss)
        self.grad_norm.extend(steps, np.asarray(e.grad_norm, dtype=np.float64))
        self.lr_series.extend(steps, np.asarray(e.lr, dtype=np.float64))
        for alpha, smoother in self.smoothers.items():
            smoother.extend(steps, loss)
        layer_steps = np.asarray(getattr(e, "layer_steps", None) or e.step, dtype=np.float64)
        for name, norms in e.layer_norms.items():
            self.layer_norms.setdefault(name, Series(summarize=False)).extend(layer_steps[:len(norms)], norms)
        for name, values in getattr(e, "scalars", {}).items():
            self.scalars.setdefault(name, Series()).extend(
                steps, np.asarray([np.nan if v is None else v for v in values], dtype=np.float64))
        self.step, self.epoch = e.step[-1], e.epoch[-1]
        self.samples_per_s, self.lr = e.samples_per_s, e.lr[-1]
        if self.status == "starting":
            self.status = "running"

    def _on_validation(self, e: ev.Validation) -> None:
        self.val_loss.append(e.step, e.val_loss)
        if not self.metric_name and e.metrics:  # a loop's own metrics: accuracy first, else the first named
            self.metric_name = "accuracy" if "accuracy" in e.metrics else next(iter(e.metrics))
        if self.metric_name in e.metrics:
            self.val_metric.append(e.step, e.metrics[self.metric_name])
        for name, value in e.metrics.items():
            self.metrics.setdefault(name, Series()).append(e.step, value)
        self.since_best = e.since_best
        if e.best:
            self.best = e
            self.markers = [m for m in self.markers if m.kind != "best"]
            self.markers.append(Marker(e.step, "best", f"best epoch {e.epoch}"))

    def _on_epoch_end(self, e: ev.EpochEnd) -> None:
        self.epoch, self.step = e.epoch, e.step

    def _on_lr_changed(self, e: ev.LrChanged) -> None:
        self.lr = e.new
        self.markers.append(Marker(e.step, "lr", f"lr {e.new:.3g} ({e.source})"))

    def _on_paused(self, e: ev.Paused) -> None:
        self.status = "paused"
        self.markers.append(Marker(e.step, "pause", "paused"))

    def _on_resumed(self, e: ev.Resumed) -> None:
        self.status = "running"
        if e.source == "checkpoint" and e.epochs:
            self.epochs = e.epochs  # `resume --set train.epochs=N`

    def _on_warning(self, e: ev.RunWarning) -> None:
        self.warnings.append(e)

    def _on_early_stopping_changed(self, e: ev.EarlyStoppingChanged) -> None:
        self.early_enabled, self.patience = e.enabled, e.patience
        if e.monitor:
            self.monitor = e.monitor

    def _on_early_stopped(self, e: ev.EarlyStopped) -> None:
        self.markers.append(Marker(e.step, "stop", "early stop"))

    def _on_test_result(self, e: ev.TestResult) -> None:
        if self.test is None or not e.extension:  # the first test stays the run's score
            self.test = e.metrics

    def _on_run_finished(self, e: ev.RunFinished) -> None:
        self.final_status = e.status
        self.status = "failed" if e.status == "failed" else "finished"
        self.error = e.error
