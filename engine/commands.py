"""Commands that steer a run: JSON objects with "command", applied at step boundaries.

Torch-free, so the dashboard and `traintop ctl` can build and check them without the engine.
A bad command raises UserError naming the problem, and changes nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import PATIENCE, show_value
from .errors import UserError, did_you_mean

COMMAND_TYPES: dict[str, type[Command]] = {}
# One predict answers at most this many inputs: it runs between two training steps, so it must stay
# short, and its reply must fit on one line. A whole split is asked for in pages of this size.
MAX_PREDICT_INPUTS = 10_000
ID_LIMIT = 200  # characters of a string request id: echoed back in replies, logged with predictions


@dataclass(frozen=True)
class Command:
    """Base of all commands; `name` is the "command" field on the wire."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        COMMAND_TYPES[cls.name] = cls

    def __post_init__(self):
        self.check()

    def check(self) -> None:
        """Raise UserError when the command's fields are not allowed."""

    def to_json(self) -> dict[str, Any]:
        """The command as a JSON-ready dict, "command" first."""
        return {"command": self.name, **dataclasses.asdict(self)}

    @staticmethod
    def from_json(obj: Any) -> Command:
        """The command for a dict read from JSON; unknown commands or fields raise UserError."""
        if not isinstance(obj, dict) or "command" not in obj:
            raise UserError('a command must be a JSON object with a "command" field')
        name = obj["command"]
        cls = COMMAND_TYPES.get(name) if isinstance(name, str) else None
        if cls is None:
            raise UserError(f"unknown command {name!r}{did_you_mean(str(name), COMMAND_TYPES)}; "
                            f"allowed: {', '.join(COMMAND_TYPES)}")
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(obj) - names - {"command", "id"}
        if extra:
            raise UserError(f"command {name!r} has unknown field(s) {', '.join(sorted(extra))}; "
                            f"allowed: {', '.join(sorted(names)) or 'none'}")
        try:
            return cls(**{k: v for k, v in obj.items() if k in names})
        except TypeError as e:
            raise UserError(f"command {name!r}: {e}") from None


@dataclass(frozen=True)
class Pause(Command):
    name: ClassVar[str] = "pause"


@dataclass(frozen=True)
class Resume(Command):
    name: ClassVar[str] = "resume"


@dataclass(frozen=True)
class SetLr(Command):
    """Set the learning rate to `value`, or multiply it by `factor`; the schedule goes on from there."""

    name: ClassVar[str] = "set_lr"
    value: float | None = None
    factor: float | None = None

    def check(self):
        if (self.value is None) == (self.factor is None):
            raise UserError("set_lr needs exactly one of value or factor")
        if self.value is not None:  # in range or not, the engine answers (and says the rate it keeps)
            value = self.value
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                from .config import LR_RANGE

                low, high = LR_RANGE
                raise UserError(f"learning rate {value!r} refused: allowed {low:g} < lr <= {high:g}")
        else:
            factor = self.factor
            if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (
                    math.isfinite(factor) and factor > 0):
                raise UserError(f"learning rate x{factor!r} refused: the factor must be a number above 0 "
                                "(x0.5 halves the rate, x2 doubles it)")


@dataclass(frozen=True)
class Stop(Command):
    name: ClassVar[str] = "stop"
    save: bool = True

    def check(self):
        if not isinstance(self.save, bool):
            raise UserError(f"stop save must be true or false, got {self.save!r}")


@dataclass(frozen=True)
class Validate(Command):
    name: ClassVar[str] = "validate"


@dataclass(frozen=True)
class Checkpoint(Command):
    name: ClassVar[str] = "checkpoint"


@dataclass(frozen=True)
class EarlyStopping(Command):
    name: ClassVar[str] = "early_stopping"
    enabled: bool | None = None
    patience: int | None = None

    def check(self):
        if self.enabled is not None and not isinstance(self.enabled, bool):
            raise UserError(f"early_stopping enabled must be true or false, got {self.enabled!r}")
        patience = self.patience
        if patience is not None:
            if isinstance(patience, bool) or not isinstance(patience, int) or not PATIENCE.contains(patience):
                raise UserError(f"early_stopping patience must be {PATIENCE.describe('patience', True)}, "
                                f"got {show_value(self.patience)}")


@dataclass(frozen=True)
class Predict(Command):
    """Run the model forward on raw records or held-out samples ({"split": "val", "index": i})."""

    name: ClassVar[str] = "predict"
    request_id: str = ""
    inputs: list = field(default_factory=list)
    weights: str = "current"
    with_inputs: bool = True  # held-out samples come back with their raw input (False: answers only)

    def check(self):
        if self.weights not in ("current", "best"):
            raise UserError(f"predict weights is {self.weights!r}; allowed: current, best")
        if not isinstance(self.inputs, list) or not all(isinstance(i, dict) for i in self.inputs):
            raise UserError("predict inputs must be a list of objects")
        if len(self.inputs) > MAX_PREDICT_INPUTS:
            raise UserError(f"predict asks for {len(self.inputs):,} inputs; one request takes at most "
                            f"{MAX_PREDICT_INPUTS:,}: send them in requests of up to {MAX_PREDICT_INPUTS:,} "
                            "(the dashboard's `a` asks for a whole split that way)")
        if not isinstance(self.request_id, str) or len(self.request_id) > ID_LIMIT:
            raise UserError(f"predict request_id must be a string of at most {ID_LIMIT} characters")
        if not isinstance(self.with_inputs, bool):
            raise UserError("predict with_inputs must be true or false")


@dataclass(frozen=True)
class Reply:
    """The engine's answer to one command: ok, or the reason it was refused."""

    ok: bool
    message: str = ""
    data: dict = field(default_factory=dict)

    def to_json(self, request_id: Any) -> dict:
        """The reply as the wire carries it: {"reply": id, "ok", "message", "data"}."""
        return {"reply": request_id, "ok": self.ok, "message": self.message, "data": self.data}

    @classmethod
    def from_json(cls, obj: dict) -> Reply:
        """A reply read from the wire; a field of the wrong type reads as empty, never raises."""
        data = obj.get("data")
        return cls(bool(obj.get("ok")), str(obj.get("message", "")), data if isinstance(data, dict) else {})
