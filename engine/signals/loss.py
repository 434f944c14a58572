"""The training loss, step by step: spikes and divergence."""

from __future__ import annotations

import math
from collections import deque

from ..config import SignalsConfig

MIN_WINDOW = 20  # steps seen before a spike can be judged
REFRESH = 50  # the recent level is recomputed every this many steps (it costs ~10 µs)
BLOCK = 20  # divergence reads the loss as medians of blocks of this many steps
RISING_BLOCKS = 3  # ... rising over this many blocks in a row
MAD_SCALE = 1.4826  # MAD to a standard deviation, for normal noise
FIRST_STEPS = 5  # the fit's starting level also reads the median of the first this many step losses


def finding(*args, **kwargs):
    from . import Finding

    return Finding(*args, **kwargs)


def median(values) -> float:
    """The median of a few numbers (statistics.median's value, without its generic checks)."""
    ordered = sorted(values)
    n = len(ordered)
    mid = n // 2
    return ordered[mid] if n % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def key_presses(factor: float) -> str:
    """How to lower the rate by about `factor` from the dashboard: `-` halves it."""
    presses = max(1, round(math.log2(1 / factor)))
    return f"press - {'once' if presses == 1 else f'{presses} times'} (÷{2 ** presses})"


class LossWatch:
    """Spikes and divergence in the per-step training loss.

    `loss_spike`: a step's loss is far above the recent robust level, the median of the last 20
    steps: more than `spike_mads` times the step-to-step noise above it (the median absolute change
    between consecutive steps over the last `spike_window` steps, as a standard deviation: a loss
    that falls fast does not inflate it), more than `spike_ratio` times that median, and above it by
    more than `spike_floor` times the starting loss (the first step's, before any update), so that
    the noise of a loss near zero is no spike. The level and the noise are read every 50 steps.

    `divergence`: the loss grows past its starting level (the median of the last 20 steps is
    `divergence_factor` times the starting loss), or rises steadily (the medians of three 20-step
    blocks in a row each higher than the last, `divergence_rise` times the starting loss above the
    lowest block). A learning rate too high is the usual cause.
    """

    def __init__(self, settings: SignalsConfig):
        self.s = settings
        self.start: float | None = None  # the first finite step loss
        self.first: list[float] = []  # the first FIRST_STEPS finite step losses
        self.window: deque[float] = deque(maxlen=settings.spike_window)
        self.changes: deque[float] = deque(maxlen=settings.spike_window - 1)  # |consecutive| in the window
        self.recent: deque[float] = deque(maxlen=BLOCK)
        self.level: tuple[float, float] | None = None  # (median, noise) recomputed every REFRESH steps
        self.level_at = 0  # `seen` when it was
        self.blocks: list[float] = []  # medians of whole blocks, the latest few kept
        self.lowest = math.inf  # the lowest block median so far
        self.diverged = False  # the loss has been past divergence_factor times its start
        self.divergence = None  # the divergence finding while it holds
        self.seen = 0

    def steps(self, steps: list[int], losses: list) -> list:
        """The conditions holding after these steps: a spike among them, a divergence."""
        s, worst = self.s, None
        window, changes, recent = self.window, self.changes, self.recent
        for step, loss in zip(steps, losses):
            if loss is None or not math.isfinite(loss):
                continue  # a non-finite loss is nan_loss's
            if self.start is None:
                self.start = loss
            if len(self.first) < FIRST_STEPS:
                self.first.append(loss)
            if len(window) >= MIN_WINDOW:
                if self.level is None or self.seen - self.level_at >= REFRESH:
                    self.level = self.robust_level()
                    self.level_at = self.seen
                typical, spread = self.level
                height = loss - typical
                if (height > s.spike_mads * spread and loss > s.spike_ratio * typical
                        and height > s.spike_floor * abs(self.start)):
                    if worst is None or height > worst[2]:
                        worst = (step, loss, height, typical, spread)
            if window:
                changes.append(abs(loss - window[-1]))
            window.append(loss)
            recent.append(loss)
            self.seen += 1
            if self.seen % BLOCK == 0:
                block = median(recent)
                self.blocks = (self.blocks + [block])[-RISING_BLOCKS:]
                self.lowest = min(self.lowest, block)
        self._divergence(steps[-1])
        return [f for f in (self._spike(worst), self.divergence) if f is not None]

    def robust_level(self) -> tuple[float, float]:
        """The median of the last BLOCK steps and the noise of the window: the median absolute
        change between consecutive steps, as the standard deviation of one step (a trend hardly
        moves it)."""
        return median(self.recent), MAD_SCALE * median(self.changes) / math.sqrt(2)

    def _spike(self, worst):
        if worst is None:
            return None
        step, loss, height, median, spread = worst
        times = loss / median if median > 0 else None  # a level of 0 (or below) has no ratio
        how = [f"{times:.1f}× the median of the last {len(self.recent)} steps" if times is not None
               else f"the median of the last {len(self.recent)} steps"]
        if spread > 0:
            how.append(f"{height / spread:.0f} MADs above it")
        return finding(
            "loss_spike", step, id="loss_spike",
            message=f"loss spiked at step {step}: {loss:.4g} against a recent level of {median:.4g} "
                    f"({', '.join(how)})",
            advice="one spike is often a bad batch: check the data around it; if spikes repeat, lower "
                   "the learning rate (-) or clip gradients (train.grad_clip)",
            values={"loss": loss, "median": median, "mad": spread, "times": times, "start": self.start})

    def _divergence(self, step: int) -> None:
        s, start = self.s, self.start
        if start is None or start <= 0 or len(self.recent) < BLOCK:
            return
        level = median(self.recent)
        past_start = level > s.divergence_factor * start
        rising = (len(self.blocks) == RISING_BLOCKS and all(b > a for a, b in zip(self.blocks, self.blocks[1:]))
                  and self.blocks[-1] - self.lowest > s.divergence_rise * start)
        if not (past_start or rising):
            if self.divergence is not None and level < start:
                self.divergence = None  # back below where it started: over
            return
        self.diverged = self.diverged or past_start
        factor = 0.1 if level > 10 * start else 0.3 if past_start else 0.5
        if past_start:
            what = (f"the training loss has grown past where it started: {level:.4g} (median of the "
                    f"last {BLOCK} steps) against {start:.4g} at the first step")
        else:
            what = (f"the training loss is rising steadily: {self.lowest:.4g} at its lowest, {level:.4g} "
                    f"now (medians of {BLOCK}-step blocks)")
        self.divergence = finding(
            "divergence", step, id="divergence",
            message=f"{what}: the run is diverging; a learning rate too high is the usual cause",
            advice=f"lower the learning rate about ×{factor:g}: {key_presses(factor)}, or `traintop ctl "
                   f"RUN lr x{factor:g}`; clipping gradients (train.grad_clip) also helps",
            values={"loss": level, "start": start, "lowest": self.lowest, "factor": factor, "key": "-"})

    @property
    def level_at_start(self) -> float | None:
        """Where the loss started, for judging how far it has come (plateau, underfitting,
        overfitting): the first step's loss, or the median of the first five if higher. One batch
        can read low by chance (the first batch of 32 of a noisy table read 0.25 where its first
        epoch's mean was 0.37, and its loss then looked as if it had hardly moved). A higher start
        makes "high" and "hardly moved" harder to call, and "moved" (underfitting's) easier."""
        if self.start is None:
            return None
        return max(self.start, median(self.first)) if self.first else self.start

    def state_dict(self) -> dict:
        return {"start": self.start, "first": self.first,
                "lowest": self.lowest if math.isfinite(self.lowest) else None, "diverged": self.diverged}

    def load_state_dict(self, state: dict) -> None:
        self.start = state.get("start", self.start)
        first = state.get("first")
        self.first = [float(x) for x in first] if isinstance(first, list) else []
        lowest = state.get("lowest")
        self.lowest = lowest if lowest is not None else math.inf
        self.diverged = state.get("diverged", False)
