"""The events a run emits: one JSON object per line in events.jsonl, the same on the socket.

Every event has "event" (its kind) and "t" (seconds since the run started). Torch-free, so the
dashboard can import it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

EVENT_TYPES: dict[str, type[Event]] = {}


@dataclass(frozen=True)
class Event:
    """Base of all events; `kind` is the "event" field on the wire."""

    kind: ClassVar[str] = ""
    # Fields whose wire name clashes with `kind`: Python name -> wire name.
    renames: ClassVar[dict[str, str]] = {}
    t: float = 0.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        EVENT_TYPES[cls.kind] = cls

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, "event" first."""
        # Shallow on purpose: dataclasses.asdict deep-copies every list of a steps batch.
        data = {"event": self.kind}
        for f in dataclasses.fields(self):
            data[self.renames.get(f.name, f.name)] = getattr(self, f.name)
        return data

    def to_line(self) -> str:
        """The event as one JSON line, without the newline."""
        return json.dumps(self.to_json(), separators=(",", ":"))

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Event:
        """The event for a dict read from JSON; fields this version does not know are dropped."""
        cls = EVENT_TYPES.get(obj.get("event", ""))
        if cls is None:
            return UnknownEvent(t=obj.get("t", 0.0), name=str(obj.get("event")), data=obj)
        wire_to_py = {wire: py for py, wire in cls.renames.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        values = {wire_to_py.get(k, k): v for k, v in obj.items() if k != "event"}
        return cls(**{k: v for k, v in values.items() if k in names})


def parse_line(line: str) -> Event:
    """One events.jsonl line as an Event (raises ValueError on a torn or bad line)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("an event line must hold a JSON object")
    return Event.from_json(obj)


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event kind from a newer traintop, kept as its raw dict."""

    kind: ClassVar[str] = "unknown"
    name: str = ""
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True)
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_id: str = ""
    name: str = ""
    config: dict = field(default_factory=dict)
    device: str = ""
    params: int = 0
    data: dict = field(default_factory=dict)  # task, n_train, n_val, n_test, features, classes
    epochs: int = 0
    steps_per_epoch: int = 0


@dataclass(frozen=True)
class Steps(Event):
    """A batch of training steps, columnar: every list has one entry per step."""

    kind: ClassVar[str] = "steps"
    step: list = field(default_factory=list)
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    samples_per_s: float = 0.0
    layer_norms: dict = field(default_factory=dict)  # parameter name -> norms at layer_steps
    layer_steps: list = field(default_factory=list)  # the steps layer_norms were taken at


@dataclass(frozen=True)
class Validation(Event):
    kind: ClassVar[str] = "validation"
    step: int = 0
    epoch: int = 0
    val_loss: float = 0.0
    metrics: dict = field(default_factory=dict)
    best: bool = False
    since_best: int = 0
    source: str = "schedule"  # "schedule" (every epoch or N steps) or "user"


@dataclass(frozen=True)
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epoch: int = 0
    step: int = 0
    train_loss: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class LrChanged(Event):
    kind: ClassVar[str] = "lr_changed"
    step: int = 0
    old: float = 0.0
    new: float = 0.0
    source: str = "user"  # user | schedule | plateau


@dataclass(frozen=True)
class Paused(Event):
    kind: ClassVar[str] = "paused"
    step: int = 0


@dataclass(frozen=True)
class Resumed(Event):
    kind: ClassVar[str] = "resumed"
    step: int = 0
    source: str = "pause"  # "pause", or "checkpoint" when `traintop resume` continues the run
    epochs: int = 0  # from a checkpoint: the epochs the run now trains to (0: unchanged)
    note: str = ""  # from a checkpoint: what the resume changed, in words


@dataclass(frozen=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    path: str = ""
    kind_: str = ""  # best | last | periodic | manual; "kind" on the wire
    step: int = 0
    renames: ClassVar[dict[str, str]] = {"kind_": "kind"}


@dataclass(frozen=True)
class RunWarning(Event):
    kind: ClassVar[str] = "warning"
    kind_: str = ""  # nan_loss | overfitting | leakage | ...; "kind" on the wire
    message: str = ""
    step: int = 0
    renames: ClassVar[dict[str, str]] = {"kind_": "kind"}


@dataclass(frozen=True)
class EarlyStopped(Event):
    kind: ClassVar[str] = "early_stopped"
    step: int = 0
    epoch: int = 0
    best_epoch: int = 0
    best_value: float = 0.0
    monitor: str = ""


@dataclass(frozen=True)
class Prediction(Event):
    kind: ClassVar[str] = "prediction"
    request_id: str = ""
    outputs: list = field(default_factory=list)
    weights: str = "current"
    step: int = 0


@dataclass(frozen=True)
class TestResult(Event):
    kind: ClassVar[str] = "test_result"
    __test__: ClassVar[bool] = False  # not a pytest test class
    metrics: dict = field(default_factory=dict)
    step: int = 0
    extension: bool = False  # measured after `resume` trained a finished run further; the first test stays its score


@dataclass(frozen=True)
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str = ""  # completed | early_stopped | stopped | failed
    error: str = ""
    step: int = 0
    epoch: int = 0
