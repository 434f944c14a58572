"""What follows each validation, for every loop owner: the best marker, the signals read from the
losses (overfitting, plateau, underfitting, dead units) and early stopping, hung on one named point
(`ValidationPolicies.validated`)."""

from __future__ import annotations

import math
from typing import Callable

from . import commands as cmd
from . import events as ev
from .early_stopping import EarlyStopping


class ValidationPolicies:
    """Best weights, the signals and early stopping, decided from each scheduled validation.

    A validation the user asks for (`v`, `ctl validate`) is a report: early stopping, the best
    marker and the signals follow the schedule's validations only, so pressing `v` never changes
    what training does.
    """

    def __init__(self, session, early: EarlyStopping, on_best: Callable[[], None] = lambda: None,
                 signals=None):
        """`signals`: the run's Signals (engine/signals), whose validation checks run here."""
        self.session = session
        self.early = early
        self.on_best = on_best  # keep the best weights, say
        self.signals = signals
        self.history: list[tuple[float, float]] = []  # (val_loss, train loss) per scheduled validation
        self.checks: list[Callable[[float], None]] = []  # more policies on each scheduled val_loss (plateau)

    def monitored(self, val_loss: float | None, metrics: dict) -> float | None:
        """The value early stopping watches, from this validation."""
        monitor = self.early.monitor
        value = val_loss if monitor == "val_loss" else metrics.get(monitor[4:], metrics.get(monitor))
        return None if value is None else float(value)

    def validated(self, *, step: int, epoch: int, val_loss: float | None, metrics: dict,
                  train_loss: float = math.nan, source: str = "schedule") -> bool:
        """Publish the validation and apply the policies; True when it is the new best."""
        value = self.monitored(val_loss, metrics)
        best = source == "schedule" and value is not None and self.early.update(value, epoch, step)
        if value is None and source == "schedule" and self.early.enabled:
            named = [k if k.startswith("val_") else f"val_{k}" for k in metrics]
            given = ", ".join((["val_loss"] if val_loss is not None else []) + named) or "nothing"
            self.session.warn("early_stopping", step=step, id="early_stopping:monitor",
                              message=f"early stopping watches {self.early.monitor}, which this validation did not "
                                      f"report (it reported {given}): it cannot stop the run, nor mark a best",
                              advice=f"report {self.early.monitor} at each validation, or have early stopping "
                                     "watch one of those")
        self.session.emit(ev.Validation, step=step, epoch=epoch, val_loss=val_loss, metrics=metrics,
                          best=best, since_best=self.early.since_best, source=source)
        if best:
            self.on_best()
        if source != "schedule":
            return best
        if val_loss is not None:
            self.history.append((val_loss, train_loss))
            for check in self.checks:
                check(val_loss)
        self.check_signals(step, val_loss)
        if self.early.should_stop and self.session.stop_request is None:
            self.session.request_stop(cmd.Stop(save=True), "early_stopped")
            self.session.emit(ev.EarlyStopped, step=step, epoch=epoch, best_epoch=self.early.best_epoch,
                              best_value=self.early.best, monitor=self.early.monitor)
        return best

    def check_signals(self, step: int, val_loss: float | None) -> None:
        """The named checks on the losses so far: overfitting, plateau, underfitting (engine/signals/fit.py),
        and dead units where the model allows measuring them."""
        if self.signals is not None:
            self.signals.validated(step, val_loss)

    def early_stopping(self, c: cmd.EarlyStopping) -> cmd.Reply:
        """Turn early stopping on or off, or set its patience; the reply says what follows, before
        it happens: turned on with its patience used up, the run stops at the next validation."""
        es = self.early
        if c.enabled is not None:
            es.enabled = c.enabled
        if c.patience is not None:
            es.patience = c.patience
        self.announce()
        data = {"enabled": es.enabled, "patience": es.patience, "since_best": es.since_best,
                "stops_next": es.enabled and es.best is not None and 0 < es.since_best and es.since_best >= es.patience}
        if not es.enabled:
            return cmd.Reply(True, f"early stopping off (patience {es.patience})", data)
        if not data["stops_next"]:
            return cmd.Reply(True, f"early stopping on, patience {es.patience} "
                                   f"({es.since_best} validation(s) since the best)", data)
        counted = f"{es.since_best} validation{'s' if es.since_best != 1 else ''} since the best"
        return cmd.Reply(True, f"early stopping on: patience {es.patience} is already used up ({counted}); "
                               "the run stops at the next validation unless it improves. Set a larger patience: "
                               f"traintop ctl {self.session.run_id} early-stopping on --patience "
                               f"{es.since_best + max(es.patience, 1)}", data)

    def announce(self) -> None:
        """Say how early stopping stands (at the start, and after each change), as an event."""
        self.session.emit(ev.EarlyStoppingChanged, step=self.session.step_of(), enabled=self.early.enabled,
                          patience=self.early.patience, monitor=self.early.monitor, mode=self.early.mode)

    def state_dict(self) -> dict:
        return {"early_stopping": self.early.state_dict(), "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.early.load_state_dict(state["early_stopping"])
        self.history = [tuple(h) for h in state.get("history", [])]
