"""Reading the signals: what a run's curves mean, said live, with the likely cause and what to try.

Every loop owner stands on one Session, and so does this: the detectors read the steps each flush
publishes (`Session.flush_hooks`, about ten times a second, never per step) and each scheduled
validation (`ValidationPolicies`). Each detector is a small class with a documented rule whose
thresholds are `[signals]` keys (engine/config.py `SignalsConfig`, every key in all_keys.toml);
each finding goes out through `Session.warn` with an id that stays the same while the condition
lasts, so a persisting condition is one warning updated, not a stream.

    signals = Signals.for_model(session, cfg.signals, model, val_inputs)  # hooked on the flushes
    ValidationPolicies(session, early, signals=signals)                   # and on the validations

Nothing here runs inside the model or the step: no hooks, no syncs, so a compiled model never
recompiles because of it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable

from ..config import SignalsConfig
from .fit import FitWatch
from .flow import DataBound, GradientFlow
from .loss import LossWatch

REPEAT_SECONDS = 30.0  # a condition that lasts is said again (its count up) at most this often


@dataclass
class Finding:
    """One detector's diagnosis: what it sees and why (`message`), what to try (`advice`), the
    numbers behind it (`values`); `id` names the condition, the same while it lasts."""

    kind: str
    step: int
    message: str
    advice: str
    id: str = ""
    values: dict = field(default_factory=dict)


def settings_from(options: dict | SignalsConfig | None, origin: str = "signals") -> SignalsConfig:
    """The [signals] settings from a dict of keys (a watched loop's `signals=dict(...)`), checked
    as a config's are: an unknown key or a bad value is a UserError naming it."""
    if isinstance(options, SignalsConfig):
        return options
    from ..config import build_config

    return build_config({"signals": dict(options or {})}, origin).signals


class Signals:
    """The detectors of one run and what they have said; fed by flushes and validations."""

    def __init__(self, session, settings: SignalsConfig, *, layers: list[dict] | None = None,
                 dead_units: Callable[[int], list[Finding]] | None = None):
        """`layers`: the model's layers as `describe_layers` gives them (vanishing and exploding
        gradients name them); `dead_units`: a measurement of silent ReLU units, where the model
        allows one (config runs of the built-in kinds)."""
        self.session = session
        self.settings = settings
        self.dead_units = dead_units
        self.restart(layers or [])
        self.failed: set[str] = set()  # detectors turned off after a failure
        if settings.enabled:
            # First: a batch that fails the run (a non-finite loss) is read before it does.
            session.flush_hooks.insert(0, self.on_steps)

    def restart(self, layers: list[dict]) -> None:
        """Read the curves afresh, of a model with these layers: what was learnt of another one's
        (its starting loss, its early gradient level, its conditions) says nothing of this one."""
        settings = self.settings
        self.loss = LossWatch(settings)
        self.flow = GradientFlow(settings, layers)
        self.data = DataBound(settings)
        self.fit = FitWatch(settings, self.loss)
        self._active: dict[str, dict[str, float]] = {}  # detector -> {id: run time of its last warning}

    @classmethod
    def for_model(cls, session, settings: SignalsConfig, model=None, inputs=None) -> Signals:
        """The signals of a run training `model` (None: not known yet); `inputs(n)`, when given, are
        up to n validation inputs, on which dead ReLU units are measured if the model allows it."""
        from ..models import describe_layers
        from .units import DeadUnits

        signals = cls(session, settings, layers=describe_layers(model) if model is not None else [])
        if model is not None and inputs is not None and DeadUnits.measurable(model):
            signals.dead_units = DeadUnits(settings, model, inputs)
        return signals

    @property
    def layers(self) -> list[dict]:
        return self.flow.layers

    @layers.setter
    def layers(self, layers: list[dict]) -> None:
        """The model's layers, once known (a watched script learns its model at the first step)."""
        self.flow.set_layers(layers)

    def on_steps(self, batch: dict) -> None:
        """A flushed steps batch: the loss, gradient and timing detectors."""
        steps, losses = batch["step"], batch["loss"]
        if not steps:
            return
        self.fit.add_losses(losses)
        step = steps[-1]
        self.read("loss", step, lambda: self.loss.steps(steps, losses))
        self.read("flow", step, lambda: self.flow.steps(batch))
        self.read("data", step, lambda: self.data.steps(batch.get("timing") or {}))

    def validated(self, step: int, val_loss: float | None) -> None:
        """A scheduled validation: plateau, underfitting, overfitting and dead units."""
        if not self.settings.enabled:
            return
        self.session.flush()  # the steps up to this validation count in its training loss
        if self.dead_units is not None:
            self.read("units", step, lambda: self.dead_units(step))
        if val_loss is not None and math.isfinite(val_loss):
            self.read("fit", step, lambda: self._fit(step, val_loss))

    def _fit(self, step: int, val_loss: float) -> list[Finding]:
        findings = self.fit.validated(step, val_loss)
        if self._active.get("units") or "vanishing_gradients" in self._active.get("flow", {}):
            # Units that cannot learn explain a stalled loss; more rate would not help.
            findings = [f for f in findings if f.kind != "plateau"]
        return findings

    def read(self, detector: str, step: int, findings: Callable[[], list[Finding]]) -> None:
        """Say what `detector` finds now. A detector that fails is turned off for the rest of the
        run, with a warning that says so: reading the curves must never end the training."""
        if detector in self.failed:
            return
        try:
            found = findings()
        except Exception as e:  # noqa: BLE001 - the run goes on without this detector
            self.failed.add(detector)
            self.session.warn("signals_off", f"the {detector} detector failed at step {step} ({type(e).__name__}: "
                              f"{e}); it is off for the rest of this run, the training goes on",
                              step=step, id=f"signals_off:{detector}",
                              advice="nothing to change in the run; the other detectors still read the curves")
            return
        self.say(detector, found)

    def say(self, detector: str, findings: list[Finding]) -> None:
        """Warn of each finding that is new, or that lasts and was last said REPEAT_SECONDS ago;
        a condition its detector no longer finds has ended, and is new again if it comes back."""
        active = self._active.setdefault(detector, {})
        now = self.session.clock()
        found = {}
        for f in findings:
            key = f.id or f.kind
            last = active.get(key)
            if last is None or now - last >= REPEAT_SECONDS:
                self.session.warn(f.kind, f.message, step=f.step, advice=f.advice, id=key, **f.values)
                last = now
            found[key] = last
        self._active[detector] = found

    def settings_json(self) -> dict:
        """The settings as run_started carries them."""
        return dataclasses.asdict(self.settings)

    def state_dict(self) -> dict:
        """What a resumed run needs to judge as if it had not stopped: the starting loss, the
        validations so far, the early gradient level."""
        return {"loss": self.loss.state_dict(), "fit": self.fit.state_dict(), "flow": self.flow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state.get("loss", {}))
        self.fit.load_state_dict(state.get("fit", {}))
        self.flow.load_state_dict(state.get("flow", {}))
