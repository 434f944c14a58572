"""The events a run emits: one JSON object per line in events.jsonl, the same on the socket.

Every event has "event" (its type) and "t" (seconds since the run started). Lines are strict JSON:
a non-finite number is written as null and read back as NaN. Torch-free, so the
dashboard can import it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

EVENT_TYPES: dict[str, type[Event]] = {}

# Strict JSON: Python would write NaN and Infinity, which jq and most parsers refuse.
_LINE = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def json_line(obj: Any) -> str:
    """`obj` as one line of strict JSON: a non-finite number is written as null."""
    try:
        return _LINE.encode(obj)
    except ValueError:  # a NaN or an infinity somewhere: rare, so only then is the object walked
        return _LINE.encode(finite_or_null(obj))


def finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float, however deep in dicts and lists, replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


def _null_as_nan(value: Any) -> Any:
    """A number field read back: null (written for NaN or an infinity) becomes NaN, in lists and
    dicts of numbers too, so readers compute and format as they did before."""
    if value is None:
        return math.nan
    if isinstance(value, list):
        return [math.nan if v is None else v for v in value] if None in value else value
    if isinstance(value, dict):
        return {k: _null_as_nan(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Event:
    """Base of all events; `event` names the event's type, as the "event" field on the wire does."""

    event: ClassVar[str] = ""
    # Fields that hold numbers (or lists and dicts of them), where null on the wire means NaN.
    numbers: ClassVar[tuple[str, ...]] = ()
    t: float = 0.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        EVENT_TYPES[cls.event] = cls

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, "event" first."""
        # Shallow on purpose: dataclasses.asdict deep-copies every list of a steps batch.
        data = {"event": self.event}
        for f in dataclasses.fields(self):
            data[f.name] = getattr(self, f.name)
        return data

    def to_line(self) -> str:
        """The event as one line of strict JSON (non-finite numbers as null), without the newline."""
        return json_line(self.to_json())

    @staticmethod
    def from_json(obj: dict[str, Any]) -> Event:
        """The event for a dict read from JSON; fields this version does not know are dropped."""
        cls = EVENT_TYPES.get(obj.get("event", ""))
        if cls is None:
            t = obj.get("t", 0.0)
            if isinstance(t, bool) or not isinstance(t, (int, float)):
                raise ValueError(f"event field 't' is {type(t).__name__}, not a number")
            return UnknownEvent(t=t, name=str(obj.get("event")), data=obj)
        if cls is Steps:
            return Steps.from_columns(obj)
        types = _field_types(cls)
        return cls(**checked(cls, {k: v for k, v in obj.items() if k in types}))


def checked(cls: type, kept: dict[str, Any]) -> dict[str, Any]:
    """Field values read from the wire, each of its field's type (ValueError naming the field),
    with null in number fields read back as NaN."""
    types = _field_types(cls)
    for name, value in kept.items():
        allowed = WIRE_TYPES.get(types[name])
        if allowed is not None and (not isinstance(value, allowed) or isinstance(value, bool) != (bool in allowed)):
            # a damaged or forged log line: readers would fail on it later, far from the cause
            wanted = "a number" if types[name] == "t" else types[name]
            raise ValueError(f"{cls.event} field {name!r} is {type(value).__name__}, not {wanted}")
    for name in cls.numbers:
        if name in kept and not _numbers_only(kept[name]):
            raise ValueError(f"{cls.event} field {name!r} holds something that is not a number")
    for name in ("t", *cls.numbers):
        if name in kept:
            kept[name] = _null_as_nan(kept[name])
    return kept


def _numbers_only(value: Any) -> bool:
    """What a number field may hold: a number or null, a list of them, or a dict of either."""
    if isinstance(value, dict):
        return all(_is_number(v) or (isinstance(v, list) and all(map(_is_number, v))) for v in value.values())
    if isinstance(value, list):
        return all(map(_is_number, value))
    return _is_number(value)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) or value is None


# What each field type may hold on the wire; a float may be null (a non-finite number), not `t`.
WIRE_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float, type(None)), "bool": (bool,),
    "dict": (dict,), "list": (list,), "t": (int, float),
}
_TYPES: dict[type, dict[str, str]] = {}


def _field_types(cls: type) -> dict[str, str]:
    """Field name -> the name of its type ("t" for the time every event has), per event class."""
    if cls not in _TYPES:
        _TYPES[cls] = {f.name: "t" if f.name == "t" else str(f.type) for f in dataclasses.fields(cls)}
    return _TYPES[cls]


def parse_line(line: str) -> Event:
    """One events.jsonl line as an Event (raises ValueError on a torn or bad line)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("an event line must hold a JSON object")
    return Event.from_json(obj)


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event type from a newer traintop, kept as its raw dict."""

    event: ClassVar[str] = "unknown"
    name: str = ""
    data: dict = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.data)


@dataclass(frozen=True)
class RunStarted(Event):
    event: ClassVar[str] = "run_started"
    run_id: str = ""
    name: str = ""
    config: dict = field(default_factory=dict)
    device: str = ""
    params: int = 0
    data: dict = field(default_factory=dict)  # task, n_train, n_val, n_test, features, classes
    epochs: int = 0
    steps_per_epoch: int = 0
    layers: list = field(default_factory=list)  # [{"name", "describe" ("Linear 64→128"), "params"}]
    world_size: int = 1
    source: str = "config"  # config | watch | script | lightning | transformers | lr_find
    signals: dict = field(default_factory=dict)  # the [signals] settings the run's diagnoses use

    @property
    def early_stopping(self) -> dict:
        """The config's [early_stopping] section. A loop of the user's own records its own config,
        whose keys are not traintop's (its settings come in early_stopping_changed): {}."""
        es = self.config.get("early_stopping") if self.source in ("config", "lr_find") else None
        return es if isinstance(es, dict) else {}


@dataclass(frozen=True)
class Steps(Event):
    """A batch of training steps, columnar: every list has one entry per step."""

    event: ClassVar[str] = "steps"
    numbers: ClassVar[tuple[str, ...]] = ("loss", "grad_norm", "lr", "samples_per_s", "layer_norms",
                                          "rank_samples_per_s")
    step: list = field(default_factory=list)
    epoch: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    grad_norm: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    samples_per_s: float = 0.0
    layer_norms: dict = field(default_factory=dict)  # parameter name -> norms at layer_steps
    layer_steps: list = field(default_factory=list)  # the steps layer_norms were taken at
    scalars: dict = field(default_factory=dict)  # a loop's extra scalars: name -> one value per step
    # Sampled steps' seconds per phase, as columns: {"step": [...], "data": [...], "forward": [...], ...}
    timing: dict = field(default_factory=dict)
    rank_samples_per_s: list = field(default_factory=list)  # on several ranks: each rank's own samples/s

    def to_json(self) -> dict[str, Any]:
        """The batch as columns; each extra scalar is one more column beside loss and lr."""
        data = super().to_json()
        if not data["timing"]:
            del data["timing"]  # most batches carry no timing sample
        if not data["rank_samples_per_s"]:  # one process: no column
            del data["rank_samples_per_s"]
        scalars = data.pop("scalars")
        for name, values in scalars.items():
            data.setdefault(name, values)
        return data

    @classmethod
    def from_columns(cls, obj: dict[str, Any]) -> Steps:
        """A batch read back: unknown list columns are the loop's extra scalars; null is NaN.
        Every column holds one entry per step, of its kind (ValueError naming the column)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = checked(cls, {k: v for k, v in obj.items() if k in names})
        scalars = {k: v for k, v in obj.items() if k not in names and k != "event" and isinstance(v, list)}
        n = len(values.get("step", ()))
        _column("step", values.get("step", []), n, _STEP)
        for name in ("epoch", "loss", "grad_norm", "lr"):
            if name in values:
                _column(name, values[name], n, _STEP if name == "epoch" else _NUMBER)
        for name, column in scalars.items():
            _column(name, column, n, _NUMBER)
        layer_steps = values.get("layer_steps", [])
        _column("layer_steps", layer_steps, len(layer_steps), _STEP)
        for name, column in values.get("layer_norms", {}).items():
            _column(f"layer_norms {name}", column, len(layer_steps), _NUMBER)
        timing = values.get("timing", {})
        for name, column in timing.items():
            _column(f"timing {name}", column, len(timing.get("step", ())), _NUMBER)
        _column("rank_samples_per_s", values.get("rank_samples_per_s", []), None, _NUMBER)
        return cls(**values, scalars={k: _null_as_nan(v) for k, v in scalars.items()})


_STEP = {int}  # what a step number or an epoch may be
_NUMBER = {int, float, type(None)}  # what a measured value may be: null is a NaN or an infinity


def _column(name: str, column, n: int | None, kinds: set[type]) -> None:
    """A steps column read back: a list of `n` entries (any number when None), each of `kinds`."""
    if not isinstance(column, list) or (n is not None and len(column) != n) or not set(map(type, column)) <= kinds:
        what = "whole numbers" if kinds is _STEP else "numbers"
        count = "" if n is None else f"{n} "
        raise ValueError(f"steps column {name!r} is not a list of {count}{what}")


@dataclass(frozen=True)
class Validation(Event):
    event: ClassVar[str] = "validation"
    numbers: ClassVar[tuple[str, ...]] = ("val_loss", "metrics")
    step: int = 0
    epoch: int = 0
    val_loss: float = 0.0
    metrics: dict = field(default_factory=dict)
    best: bool = False
    since_best: int = 0
    source: str = "schedule"  # "schedule" (every epoch or N steps) or "user"


@dataclass(frozen=True)
class EpochEnd(Event):
    event: ClassVar[str] = "epoch_end"
    numbers: ClassVar[tuple[str, ...]] = ("train_loss", "seconds")
    epoch: int = 0
    step: int = 0
    train_loss: float = 0.0
    seconds: float = 0.0


@dataclass(frozen=True)
class LrChanged(Event):
    event: ClassVar[str] = "lr_changed"
    numbers: ClassVar[tuple[str, ...]] = ("old", "new")
    step: int = 0
    old: float = 0.0
    new: float = 0.0
    source: str = "user"  # user | schedule | plateau


@dataclass(frozen=True)
class Paused(Event):
    event: ClassVar[str] = "paused"
    step: int = 0


@dataclass(frozen=True)
class Resumed(Event):
    event: ClassVar[str] = "resumed"
    step: int = 0
    source: str = "pause"  # "pause", or "checkpoint" when `traintop resume` continues the run
    epochs: int = 0  # from a checkpoint: the epochs the run now trains to (0: unchanged)
    note: str = ""  # from a checkpoint: what the resume changed, in words


@dataclass(frozen=True)
class CheckpointSaved(Event):
    event: ClassVar[str] = "checkpoint_saved"
    path: str = ""
    kind: str = ""  # best | last | periodic | manual
    step: int = 0


@dataclass(frozen=True)
class RunWarning(Event):
    event: ClassVar[str] = "warning"
    kind: str = ""  # nan_loss | overfitting | leakage | ...
    message: str = ""  # what and why
    step: int = 0
    advice: str = ""  # what to try
    id: str = ""  # the same id is the same condition, raised again: count, first_step, last_step say how often
    count: int = 1
    first_step: int = 0
    last_step: int = 0
    values: dict = field(default_factory=dict)  # the numbers behind it


@dataclass(frozen=True)
class LrFind(Event):
    """The learning-rate range test: the rates tried since the last such event, each step's loss
    and its smoothed value; the last one (`done`) carries the suggested rate and why it stopped."""

    event: ClassVar[str] = "lr_find"
    numbers: ClassVar[tuple[str, ...]] = ("lr", "loss", "smoothed", "suggested")
    lr: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    smoothed: list = field(default_factory=list)
    done: bool = False
    suggested: float = 0.0  # 0 until it is done (and when no rate could be suggested)
    reason: str = ""  # why it stopped, and how the rate was chosen
    command: str = ""  # a config run: the command line that trains with the suggested rate
    run_args: list = field(default_factory=list)  # the same as `traintop` arguments, for the dashboard's key


@dataclass(frozen=True)
class EarlyStoppingChanged(Event):
    """Early stopping turned on or off, or its patience changed, as the engine decided it."""

    event: ClassVar[str] = "early_stopping_changed"
    step: int = 0
    enabled: bool = True
    patience: int = 0
    monitor: str = ""
    mode: str = ""


@dataclass(frozen=True)
class EarlyStopped(Event):
    event: ClassVar[str] = "early_stopped"
    numbers: ClassVar[tuple[str, ...]] = ("best_value",)
    step: int = 0
    epoch: int = 0
    best_epoch: int = 0
    best_value: float = 0.0
    monitor: str = ""


@dataclass(frozen=True)
class Prediction(Event):
    """A predict request answered. `outputs` holds every answer of a small request and none of a
    big one (more than 100): its `summary` says how many and, for held-out samples, how well."""

    event: ClassVar[str] = "prediction"
    request_id: str = ""
    outputs: list = field(default_factory=list)
    weights: str = "current"
    step: int = 0
    n_outputs: int = 0
    summary: dict = field(default_factory=dict)  # inputs, held_out, and accuracy or mae


@dataclass(frozen=True)
class TestResult(Event):
    event: ClassVar[str] = "test_result"
    numbers: ClassVar[tuple[str, ...]] = ("metrics",)
    __test__: ClassVar[bool] = False  # not a pytest test class
    metrics: dict = field(default_factory=dict)
    step: int = 0
    extension: bool = False  # measured after `resume` trained a finished run further; the first test stays its score


@dataclass(frozen=True)
class Resources(Event):
    """What the engine process uses, sampled every few seconds off the training thread."""

    event: ClassVar[str] = "resources"
    numbers: ClassVar[tuple[str, ...]] = ("cpu_percent", "rss_mb")
    cpu_percent: float = 0.0  # of one core, since the last sample
    rss_mb: float = 0.0
    # per CUDA device in use: index, name, allocated_mb, reserved_mb, peak_mb, total_mb, utilization (NVML)
    devices: list = field(default_factory=list)


@dataclass(frozen=True)
class RunFinished(Event):
    event: ClassVar[str] = "run_finished"
    status: str = ""  # completed | early_stopped | stopped | failed
    error: str = ""
    step: int = 0
    epoch: int = 0
