"""What the dashboard knows of a run, built from its events alone (no torch, no terminal)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from traintop.engine import events as ev

from .marks import Marker, lr_label, pause_label, warning_label
from .series import Ema, Series
from .view import SMOOTHING

PACE_SECONDS = 30.0  # the ETA and samples/s follow the pace of this much recent training time
RESOURCE_SAMPLES = 100  # resources samples kept: the view lists the latest
__all__ = ["Marker", "RunState", "SMOOTHING"]


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
    patience: int = 0
    early_enabled: bool = True
    early_known: bool = False  # told by run_started or early_stopping_changed: nothing to show before
    since_best: int = 0
    step: int = 0
    epoch: int = 0
    t: float = 0.0
    samples_per_s: float = 0.0  # of the last batch
    rank_samples_per_s: list = field(default_factory=list)  # on several ranks: each one's, of the last batch
    lr: float = 0.0
    loss: Series = field(default_factory=Series)
    grad_norm: Series = field(default_factory=Series)
    lr_series: Series = field(default_factory=Series)
    val_loss: Series = field(default_factory=Series)
    val_metric: Series = field(default_factory=Series)
    throughput: Series = field(default_factory=Series)  # samples/s of each batch, at its last step
    metric_name: str = ""
    source: str = "config"  # who owns the loop: config, watch, script, lightning, transformers
    layers: list = field(default_factory=list)  # run_started's: name, describe, params, parameters
    metrics: dict[str, Series] = field(default_factory=dict)  # every validation metric, by name
    scalars: dict[str, Series] = field(default_factory=dict)  # a loop's extra per-step scalars
    layer_norms: dict[str, Series] = field(default_factory=dict)  # per parameter name
    smoothers: dict[float, Ema] = field(default_factory=dict)
    markers: list[Marker] = field(default_factory=list)
    best: ev.Validation | None = None
    test: dict | None = None
    warnings: dict[str, ev.RunWarning] = field(default_factory=dict)  # the latest of each condition, by id
    log: list[ev.Event] = field(default_factory=list)  # every event but steps and resources, for the event log
    log_marks: dict[int, Marker] = field(default_factory=dict)  # position in `log` -> the mark it made
    resources: list[ev.Resources] = field(default_factory=list)  # the latest samples, oldest first
    error: str = ""
    version: int = 0  # bumped by every change, so the screen redraws only when needed
    # step -> seconds since the start (two points a batch: where it began and where it ended)
    clock: Series = field(default_factory=lambda: Series(summarize=False))
    # (training seconds, step) at each batch: time paused left out, for the pace behind the ETA
    pace: Series = field(default_factory=lambda: Series(summarize=False))
    epoch_starts: Series = field(default_factory=lambda: Series(summarize=False))  # step before it -> epoch - 1
    paused_seconds: float = 0.0
    _resumed_t: float = 0.0  # where the next batch's time starts: after a pause or a validation
    _paused_at: Marker | None = None
    _marked: Marker | None = None  # the mark the event being applied made

    def mark(self, marker: Marker) -> Marker:
        self.markers.append(marker)
        self._marked = marker
        return marker

    def apply(self, e: ev.Event) -> None:
        """Fold one event into the state."""
        handler = getattr(self, f"_on_{e.event}", None)
        self._marked = None
        if handler is not None:
            handler(e)
        if not isinstance(e, (ev.Steps, ev.Resources)):  # a sample every few seconds would bury the log
            if self._marked is not None:
                self.log_marks[len(self.log)] = self._marked
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

    # -- pace --------------------------------------------------------------------------------------

    def steps_per_s(self) -> float | None:
        """Steps a second over the last PACE_SECONDS of training (pauses left out, validation in):
        the pace the ETA follows, steady from one batch to the next."""
        if len(self.pace) < 2:
            return None
        active, steps = self.pace.x, self.pace.y
        now = float(active[-1])
        then = max(float(active[0]), now - PACE_SECONDS)
        if now - then <= 0:
            return None
        done = float(steps[-1]) - float(np.interp(then, active, steps))
        rate = done / (now - then)
        return rate if rate > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the recent pace, or None before it is known (or with no planned end)."""
        if self.status != "running" or not self.total_steps:
            return None
        rate = self.steps_per_s()
        if rate is None:
            return None
        return max(0.0, (self.total_steps - self.step) / rate)

    def recent_samples_per_s(self) -> float:
        """Samples a second, averaged over the last few seconds of batches (one batch's is jumpy)."""
        n = len(self.throughput)
        if not n:
            return self.samples_per_s
        values = self.throughput.y[max(0, n - 50):]
        values = values[np.isfinite(values)]
        return float(values.mean()) if len(values) else self.samples_per_s

    # -- x axes ---------------------------------------------------------------------------------------

    def x_of(self, axis: str, steps: np.ndarray) -> np.ndarray:
        """Steps as positions on the chosen x axis: `step`, `epoch` (fractional) or `time` (seconds)."""
        if axis == "time":
            if len(self.clock) < 1:
                return np.zeros(len(steps))
            return np.interp(steps, self.clock.x, self.clock.y)
        if axis == "epoch":
            if self.steps_per_epoch:
                return np.asarray(steps, dtype=np.float64) / self.steps_per_epoch
            return self._epoch_of(np.asarray(steps, dtype=np.float64))
        return np.asarray(steps, dtype=np.float64)

    def steps_at(self, axis: str, positions: np.ndarray) -> np.ndarray:
        """The inverse of `x_of`: the steps at positions of an x axis."""
        positions = np.asarray(positions, dtype=np.float64)
        if axis == "time" and len(self.clock):
            return np.interp(positions, self.clock.y, self.clock.x)
        if axis == "epoch" and self.steps_per_epoch:
            return positions * self.steps_per_epoch
        if axis == "epoch" and len(self.epoch_starts):
            marks, epochs = self._epoch_marks()
            return np.interp(positions, epochs, marks)
        return positions

    def has_epochs(self) -> bool:
        """Whether an epoch axis can be drawn: the plan says how long an epoch is, or one has ended."""
        return bool(self.steps_per_epoch) or len(self.epoch_starts) > 1

    def _epoch_marks(self) -> tuple[np.ndarray, np.ndarray]:
        marks, epochs = self.epoch_starts.x, self.epoch_starts.y
        if len(marks) > 1:  # the epoch under way: as long as the one before it
            last = marks[-1] + (marks[-1] - marks[-2])
            marks, epochs = np.append(marks, max(last, self.step)), np.append(epochs, epochs[-1] + 1)
        return marks, epochs

    def _epoch_of(self, steps: np.ndarray) -> np.ndarray:
        if not len(self.epoch_starts):
            return np.zeros(len(steps))
        marks, epochs = self._epoch_marks()
        return np.interp(steps, marks, epochs)

    def best_value(self) -> float | None:
        if self.best is None:
            return None
        return self.best.val_loss if self.monitor == "val_loss" else self.best.metrics.get(self.monitor[4:])

    # -- one handler per event kind --------------------------------------------------------------

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self.run_id, self.name, self.device, self.params = e.run_id, e.name, e.device, e.params
        self.epochs, self.steps_per_epoch, self.data, self.config = e.epochs, e.steps_per_epoch, e.data, e.config
        es = e.early_stopping
        self.monitor = es.get("monitor", "val_loss")
        self.patience, self.early_enabled = es.get("patience", 0), es.get("enabled", True)
        self.early_known = bool(es)
        self.metric_name = {"classification": "accuracy", "regression": "rmse"}.get(e.data.get("task"), "")
        self.source = e.source
        self.layers = [layer for layer in e.layers if isinstance(layer, dict)]
        self.status = "running"
        self._resumed_t = e.t

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
        first, last = float(steps[0]), float(steps[-1])
        if not len(self.clock) or first > self.clock.x[-1]:
            start = min(self._resumed_t, e.t)
            self.clock.extend((first, last) if last > first else (last,), (start, e.t) if last > first else (e.t,))
            self.pace.extend((e.t - self.paused_seconds,), (last,))
            self.throughput.append(last, e.samples_per_s)
        self._resumed_t = e.t
        epochs = e.epoch
        if epochs and (not len(self.epoch_starts) or epochs[-1] - 1 > self.epoch_starts.y[-1]):
            for i, epoch in enumerate(epochs):  # where an epoch starts: the step before its first
                if not len(self.epoch_starts) or epoch - 1 > self.epoch_starts.y[-1]:
                    self.epoch_starts.append(e.step[i] - 1, epoch - 1)
        self.step, self.epoch = e.step[-1], e.epoch[-1]
        self.samples_per_s, self.lr = e.samples_per_s, e.lr[-1]
        if e.rank_samples_per_s:
            self.rank_samples_per_s = list(e.rank_samples_per_s)
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
        self._resumed_t = e.t  # the next batch's time starts after the validation
        if e.best:
            self.best = e
            self.markers = [m for m in self.markers if m.kind != "best"]
            self.mark(Marker(e.step, "best", "best", e.t))

    def _on_epoch_end(self, e: ev.EpochEnd) -> None:
        self.epoch, self.step = e.epoch, e.step

    def _on_lr_changed(self, e: ev.LrChanged) -> None:
        self.lr = e.new
        self.mark(Marker(e.step, "lr", lr_label(e.old, e.new, e.source), e.t))

    def _on_paused(self, e: ev.Paused) -> None:
        self.status = "paused"
        self._paused_at = self.mark(Marker(e.step, "pause", pause_label(None), e.t))

    def _on_resumed(self, e: ev.Resumed) -> None:
        self.status = "running"
        if self._paused_at is not None:
            seconds = max(0.0, e.t - self._paused_at.t)
            self._paused_at.label = pause_label(seconds)
            self.paused_seconds += seconds
            self._marked, self._paused_at = self._paused_at, None
        self._resumed_t = e.t
        if e.source == "checkpoint" and e.epochs:
            self.epochs = e.epochs  # `resume --set train.epochs=N`

    def _on_warning(self, e: ev.RunWarning) -> None:
        key = e.id or f"{e.kind}:{e.message}"
        self.warnings.pop(key, None)  # the latest raise goes last: the panel shows the newest first
        self.warnings[key] = e
        self.mark(Marker(e.step, "warning", warning_label(e.kind), e.t))

    def _on_early_stopping_changed(self, e: ev.EarlyStoppingChanged) -> None:
        self.early_enabled, self.patience, self.early_known = e.enabled, e.patience, True
        if e.monitor:
            self.monitor = e.monitor

    def _on_early_stopped(self, e: ev.EarlyStopped) -> None:
        self.mark(Marker(e.step, "stop", "early stop", e.t))

    def _on_test_result(self, e: ev.TestResult) -> None:
        if self.test is None or not e.extension:  # the first test stays the run's score
            self.test = e.metrics

    def killed(self, note: str) -> None:
        """The run's log ends with no run_finished: its engine was killed mid-run."""
        self.status, self.final_status, self.error = "failed", "killed", note

    def _on_run_finished(self, e: ev.RunFinished) -> None:
        self.final_status = e.status
        self.status = "failed" if e.status == "failed" else "finished"
        self.error = e.error
        if self._paused_at is not None:  # stopped while paused: the pause lasted until the end
            self._paused_at.label = pause_label(max(0.0, e.t - self._paused_at.t))
            self._paused_at = None

    # -- layers -----------------------------------------------------------------------------------

    def layer_rows(self) -> list[tuple[str, str, int | None, Series]]:
        """(name, what it is, its parameter count, gradient norm over time) per layer: its
        parameters' norms combined.

        Named as run_started describes them (`Linear 64→128`); parameters no layer claims are
        rows of their own.
        """
        rows = []
        claimed = set()
        for layer in self.layers:
            names = [p for p in layer.get("parameters", []) if p in self.layer_norms]
            if not names:
                continue
            claimed.update(names)
            params = layer.get("params")
            rows.append((str(layer.get("name", "")), str(layer.get("describe", "")),
                         params if isinstance(params, int) else None,
                         _combined([self.layer_norms[p] for p in names])))
        for name, series in self.layer_norms.items():
            if name not in claimed:
                rows.append((name, "", None, series))
        return rows


def _combined(parts: list[Series]) -> Series:
    """The norm of several parameters' gradient norms, step by step (they share their steps)."""
    if len(parts) == 1:
        return parts[0]
    n = min(len(p) for p in parts)
    out = Series(max(1, n), summarize=False)
    out.extend(parts[0].x[:n], np.sqrt(sum(p.y[:n] ** 2 for p in parts)))
    return out


def isfinite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
