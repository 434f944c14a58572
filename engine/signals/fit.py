"""Training and validation loss, validation by validation: plateau, underfitting, overfitting."""

from __future__ import annotations

import math

from ..config import SignalsConfig
from .loss import LossWatch, finding, median

GAP_SMALL = 0.2  # underfitting: validation within this fraction of the training loss
MIN_STEPS = 100  # steps trained before the losses are read at all: younger ones say nothing yet


class FitWatch:
    """What the losses say at each scheduled validation, looking back `validations` (N) of them.

    The training loss of a validation is the mean step loss since the one before; the starting
    loss is the first step's, or the median of the first 5 steps' if higher
    (LossWatch.level_at_start). With T the training loss and V the validation loss:

    `plateau`: T changed by less than `flat_change` (relative) over the last N validations while
    above `high_loss` times the starting loss. When it has also fallen less than `moved` of its
    start, the rate is too low to move it; otherwise it is stuck (more rate, or a schedule).
    Not said after a divergence: a loss stuck high there is the rate being too high. None of
    them is said before 100 steps of training: losses that young say nothing yet.

    `underfitting`: both losses high and flat (T as for a plateau, V changing by less than twice
    `flat_change`), V within 20% of T, and T fallen more than `moved` from its start: the model
    learnt what it could and is too small (or too held back) for the data.

    `overfitting`: no new best V over the last N validations, T fell (its median over them, and
    its latest, below T at the best V: a T that rose with V is an unstable step), and either V's
    median over them is `overfit_rise` above its best, or the gap V - T widened at each of them,
    by `overfit_widening` of what it was, to a gap of at least `overfit_widening` of V; the rise,
    the widening and that last gap each by at least `overfit_floor` times the starting loss.
    """

    def __init__(self, settings: SignalsConfig, loss: LossWatch):
        self.s = settings
        self.loss = loss
        self.history: list[tuple[int, float, float]] = []  # (step, V, T) per scheduled validation
        self.best: tuple[int, float, float] | None = None  # the validation with the lowest V
        self.since_best = 0
        self.interval = [0.0, 0]  # finite step losses since the last validation: sum, count
        self.trained = 0  # finite step losses seen in all
        self.findings: dict[str, object] = {}

    def add_losses(self, losses: list) -> None:
        """Steps flushed since the last validation: their mean is the next validation's T."""
        finite = [x for x in losses if x is not None and math.isfinite(x)]
        self.interval[0] += sum(finite)
        self.interval[1] += len(finite)
        self.trained += len(finite)

    def validated(self, step: int, val_loss: float) -> list:
        """The conditions holding at this validation."""
        total, n = self.interval
        self.interval = [0.0, 0]
        if not n:  # no training since the last one: nothing new to judge
            return list(self.findings.values())
        entry = (step, val_loss, total / n)
        self.history.append(entry)
        self.history = self.history[-64:]
        if self.best is None or val_loss < self.best[1]:
            self.best, self.since_best = entry, 0
        else:
            self.since_best += 1
        start = self.loss.level_at_start
        if start is None or start <= 0 or len(self.history) <= self.s.validations or self.trained < MIN_STEPS:
            return []
        self.findings = {}
        for kind, check in (("plateau", self.plateau), ("underfitting", self.underfitting),
                            ("overfitting", self.overfitting)):
            f = check(start)
            if f is not None:
                self.findings[kind] = f
        return list(self.findings.values())

    def _flat(self, start: float) -> tuple[bool, bool, float, float]:
        """(flat, high, T then, T now) of the training loss over the last N validations."""
        then, now = self.history[-1 - self.s.validations][2], self.history[-1][2]
        flat = abs(now - then) < self.s.flat_change * then
        return flat, now > self.s.high_loss * start, then, now

    def moved(self, start: float) -> float:
        """How far the training loss has fallen from its start, as a fraction of it."""
        return (start - self.history[-1][2]) / start

    def plateau(self, start: float):
        flat, high, then, now = self._flat(start)
        if not (flat and high) or self.loss.diverged or self.underfitting(start) is not None:
            return None
        step, n = self.history[-1][0], self.s.validations
        span = f"over the last {n} validations ({then:.4g} -> {now:.4g}, steps {self.history[-1 - n][0]}-{step})"
        if self.moved(start) < self.s.moved:
            message = (f"the training loss has hardly moved from where it started ({start:.4g} over the first "
                       f"steps, {now:.4g} now) and is flat {span}: the learning rate is likely too low to move it")
        else:
            message = (f"the training loss is flat {span} at {now / start:.0%} of where it started, far from "
                       "zero: training has stalled")
        return finding("plateau", step, id="plateau", message=message,
                       advice="raise the learning rate: press + (×2) a few times, or find one with `traintop "
                              "lr-find`; a schedule (schedule.name = \"cosine\" or \"onecycle\") helps to "
                              "start high and settle",
                       values={"train_loss": now, "start": start, "change": (then - now) / then, "key": "+"})

    def underfitting(self, start: float):
        flat, high, then, now = self._flat(start)
        if not (flat and high) or self.moved(start) < self.s.moved:
            return None
        n = self.s.validations
        v_then, v_now = self.history[-1 - n][1], self.history[-1][1]
        if abs(v_now - v_then) >= 2 * self.s.flat_change * v_then or abs(v_now - now) > GAP_SMALL * now:
            return None
        step = self.history[-1][0]
        return finding(
            "underfitting", step, id="underfitting",
            message=f"training and validation loss are both high ({now:.4g} and {v_now:.4g}, {now / start:.0%} of "
                    f"the starting loss) and flat over the last {n} validations: the model has learnt what it "
                    "can and is too small, or too held back, for the data",
            advice="a bigger model (more or wider layers: model.hidden), less regularisation (dropout, weight "
                   "decay), better features; or more training at a higher rate (+)",
            values={"train_loss": now, "val_loss": v_now, "start": start})

    def overfitting(self, start: float):
        s, n = self.s, self.s.validations
        if self.since_best < n or self.best is None:
            return None
        recent = self.history[-n:]
        best_step, best_v, best_t = self.best
        train_now = median(t for _, _, t in recent)
        if not (train_now < best_t and recent[-1][2] < best_t):  # T risen back past its level at the best:
            return None  # the training went wrong too (an unstable step), not learning by heart
        val_now = median(v for _, v, _ in recent)
        floor = s.overfit_floor * start
        step = self.history[-1][0]
        if val_now - best_v > max(s.overfit_rise * best_v, floor):
            message = (f"validation loss rose from its best {best_v:.4g} (step {best_step}) to {val_now:.4g} "
                       f"(median of the last {n}) while training loss fell ({best_t:.4g} -> {train_now:.4g}): "
                       "the model is overfitting")
        else:
            gaps = [v - t for _, v, t in self.history[-1 - n:]]
            widened = gaps[-1] - gaps[0]
            # a gap that is a small part of V is the noise of the training loss's epoch means (a small
            # table's gap crossed from -0.08 to +0.04 on one noisy epoch), not learning by heart
            if not (gaps[-1] > max(floor, s.overfit_widening * self.history[-1][1])
                    and all(b > a for a, b in zip(gaps, gaps[1:]))
                    and widened > max(s.overfit_widening * abs(gaps[0]), floor)):
                return None
            message = (f"the gap between validation and training loss widened from {gaps[0]:.4g} to {gaps[-1]:.4g} "
                       f"over the last {n} validations, with no new best since step {best_step}: the model is "
                       "learning the training data by heart, not what carries over")
        return finding("overfitting", step, id="overfitting", message=message,
                       advice="stop here (the best weights are kept), or add regularisation: dropout, weight "
                              "decay, more data or augmentation",
                       values={"val_loss": val_now, "best_val_loss": best_v, "train_loss": train_now})

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "since_best": self.since_best, "trained": self.trained}

    def load_state_dict(self, state: dict) -> None:
        self.history = [tuple(h) for h in state.get("history", [])]
        best = state.get("best")
        self.best = tuple(best) if best is not None else None
        self.since_best = state.get("since_best", 0)
        self.trained = state.get("trained", 0)
