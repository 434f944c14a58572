"""The run configuration: TOML sections with defaults, `--set` overrides and validation.

Every key has a default, so an empty config is the digits demo. Mistakes name the key, the file
and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from .errors import UserError, did_you_mean

BUILTIN_SOURCES = ("digits", "iris", "wine", "breast_cancer", "diabetes", "moons")


@dataclass
class RunConfig:
    name: str = ""  # empty: "<source>-<model>", e.g. digits-mlp
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # CPU threads for PyTorch; 0 = all cores but one, left for the dashboard


@dataclass
class DataConfig:
    source: str = "digits"
    path: str = ""
    target: str = ""
    features: list[str] = field(default_factory=list)
    text: str = ""
    task: str = "auto"
    split: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    batch_size: int = 64
    factory: str = ""
    image_size: int = 32
    channels: int = 0
    augment: bool = False
    memory_limit_mb: int = 1024
    min_freq: int = 1
    max_vocab: int = 20000
    dataset: str = ""
    download: bool = False


@dataclass
class ModelConfig:
    kind: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [128, 128])
    dropout: float = 0.0
    channels: list[int] = field(default_factory=lambda: [32, 64])
    factory: str = ""


@dataclass
class OptimConfig:
    name: str = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only


@dataclass
class ScheduleConfig:
    name: str = "none"
    warmup_steps: int = 0
    step_epochs: int = 10  # step: decay every this many epochs
    gamma: float = 0.1  # step and plateau: the decay factor
    plateau_patience: int = 2  # plateau: validations without improvement before a decay
    min_lr: float = 0.0  # cosine, onecycle and plateau never go below this


@dataclass
class TrainConfig:
    epochs: int = 20
    loss: str = "auto"
    grad_clip: float = 0.0
    val_every_steps: int = 0
    on_nan: str = "stop"
    sync_every: int = 1  # steps between the ranks' rounds (commands, flushes) on several processes


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class CheckpointConfig:
    every_epochs: int = 0
    every_seconds: float = 120.0  # last.pt at the first step boundary this long after the last save; 0 = off


@dataclass
class Config:
    """A whole, validated run configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    base_dir: Path = field(default=Path("."), compare=False)  # relative paths resolve here

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-able sections."""
        return {
            f.name: dataclasses.asdict(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name != "base_dir"
        }

    def to_toml(self) -> str:
        """The resolved config as TOML text."""
        return dumps_toml(self.to_dict())

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "source"): BUILTIN_SOURCES + ("csv", "image_folder", "python", "torchvision"),
    ("data", "task"): ("auto", "classification", "regression"),
    ("model", "kind"): ("mlp", "linear", "cnn", "text", "python"),
    ("optim", "name"): ("sgd", "adam", "adamw", "rmsprop"),
    ("schedule", "name"): ("none", "step", "cosine", "onecycle", "plateau"),
    ("train", "loss"): ("auto", "mse", "l1", "huber", "cross_entropy", "bce"),
    ("train", "on_nan"): ("stop", "skip"),
    ("early_stopping", "mode"): ("min", "max"),
}

NOT_YET: dict[tuple[str, str], tuple[str, ...]] = {}

# The learning rate a run may use, from the config or set live: lower bound excluded.
LR_RANGE = (0.0, 10.0)

POSITIVE = {
    ("data", "batch_size"), ("train", "epochs"), ("data", "image_size"),
    ("data", "memory_limit_mb"), ("data", "min_freq"), ("data", "max_vocab"),
    ("schedule", "step_epochs"), ("optim", "lr"), ("train", "sync_every"),
}
NON_NEGATIVE = {
    ("optim", "weight_decay"), ("optim", "momentum"), ("schedule", "warmup_steps"),
    ("schedule", "plateau_patience"), ("schedule", "min_lr"), ("train", "grad_clip"),
    ("train", "val_every_steps"), ("early_stopping", "patience"), ("early_stopping", "min_delta"),
    ("checkpoint", "every_epochs"), ("checkpoint", "every_seconds"), ("model", "dropout"), ("run", "seed"), ("run", "threads"),
}
DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config) if f.name != "base_dir"}


def _section_types() -> dict[str, dict[str, Any]]:
    hints = get_type_hints(Config)
    return {name: get_type_hints(hints[name]) for name in _sections()}


def _describe(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list[int]: "a list of integers", list[float]: "a list of numbers",
            list[str]: "a list of strings"}[t]


def _check_type(value, t) -> Any:
    """The value converted to type t, or raise ValueError."""
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, list):
        (inner,) = t.__args__
        return [_check_type(v, inner) for v in value]
    raise ValueError


def build_config(raw: dict[str, Any], origin: str = "the config", base_dir: Path | None = None) -> Config:
    """Validate raw TOML sections into a Config; errors name the key and `origin`."""
    types = _section_types()
    cfg = Config(base_dir=base_dir or Path("."))
    for section, values in raw.items():
        if section not in types:
            raise UserError(f"{origin}: unknown section [{section}]{did_you_mean(section, types)}; "
                            f"allowed: {', '.join(types)}")
        if not isinstance(values, dict):
            raise UserError(f"{origin}: [{section}] must be a table of keys")
        target = getattr(cfg, section)
        for key, value in values.items():
            where = f"{origin}: {section}.{key}"
            if key not in types[section]:
                raise UserError(f"{origin}: unknown key {section}.{key}"
                                f"{did_you_mean(key, types[section])}; "
                                f"[{section}] allows: {', '.join(types[section])}")
            t = types[section][key]
            try:
                value = _check_type(value, t)
            except ValueError:
                raise UserError(f"{where} must be {_describe(t)}, got {value!r}") from None
            setattr(target, key, value)
    _validate(cfg, origin)
    return cfg


def _validate(cfg: Config, origin: str) -> None:
    def fail(section, key, what):
        raise UserError(f"{origin}: {section}.{key} {what}")

    for (section, key), allowed in CHOICES.items():
        value = getattr(getattr(cfg, section), key)
        if value not in allowed:
            fail(section, key, f"is {value!r}{did_you_mean(value, allowed)}; allowed: {', '.join(allowed)}")
        if value in NOT_YET.get((section, key), ()):
            fail(section, key, f"= {value!r} is not available in this version of traintop")
    for section, key in POSITIVE:
        if getattr(getattr(cfg, section), key) <= 0:
            fail(section, key, "must be greater than 0")
    for section, key in NON_NEGATIVE:
        if getattr(getattr(cfg, section), key) < 0:
            fail(section, key, "must be 0 or more")
    if not DEVICE_RE.match(cfg.run.device):
        fail("run", "device", f"is {cfg.run.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    split = cfg.data.split
    if len(split) != 3 or any(s < 0 for s in split) or split[0] <= 0 or split[1] <= 0:
        fail("data", "split", f"is {split}; give three fractions [train, val, test], train and val above 0")
    if abs(sum(split) - 1.0) > 1e-6:
        fail("data", "split", f"is {split}, which sums to {sum(split):g}; the fractions must sum to 1")
    if not 0 <= cfg.model.dropout < 1:
        fail("model", "dropout", f"is {cfg.model.dropout}; allowed: 0 <= dropout < 1")
    if any(h <= 0 for h in cfg.model.hidden):
        fail("model", "hidden", f"is {cfg.model.hidden}; every layer width must be greater than 0")
    if cfg.data.source == "csv" and not cfg.data.path:
        fail("data", "path", "is empty; data.source = \"csv\" needs the path of a CSV file")
    if cfg.data.source == "csv" and not cfg.data.target:
        fail("data", "target", "is empty; data.source = \"csv\" needs the name of the label column")
    if cfg.data.source == "image_folder" and not cfg.data.path:
        fail("data", "path", "is empty; data.source = \"image_folder\" needs a folder with one sub-folder "
                             "of images per class")
    if cfg.data.text and cfg.data.source != "csv":
        fail("data", "text", f"is {cfg.data.text!r}, but a text column needs data.source = \"csv\"")
    if cfg.data.source == "python" and not cfg.data.factory:
        fail("data", "factory", "is empty; data.source = \"python\" needs \"module:function\", a function "
                                "returning the train, validation and test sets")
    if cfg.model.kind == "python" and not cfg.model.factory:
        fail("model", "factory", "is empty; model.kind = \"python\" needs \"module:function\", a function "
                                 "returning an nn.Module")
    if cfg.data.source == "torchvision" and not cfg.data.dataset:
        fail("data", "dataset", "is empty; data.source = \"torchvision\" needs one of MNIST, "
                                "FashionMNIST, CIFAR10")
    if cfg.data.channels not in (0, 1, 3):
        fail("data", "channels", f"is {cfg.data.channels}; allowed: 0 (from the files), 1 (grayscale), 3 (RGB)")
    if not cfg.model.channels or any(c <= 0 for c in cfg.model.channels):
        fail("model", "channels", f"is {cfg.model.channels}; give one or more conv widths above 0, e.g. [32, 64]")
    monitor = cfg.early_stopping.monitor
    if not re.match(r"^val_[a-z0-9_]+$", monitor):
        fail("early_stopping", "monitor", f"is {monitor!r}; allowed: val_loss or val_<metric>, e.g. val_accuracy")
    if not 0 < cfg.schedule.gamma <= 1:
        fail("schedule", "gamma", f"is {cfg.schedule.gamma}; allowed: 0 < gamma <= 1")
    if not cfg.run.name:
        model = cfg.model.kind
        source = {"csv": Path(cfg.data.path).stem, "image_folder": Path(cfg.data.path).name,
                  "torchvision": cfg.data.dataset}.get(cfg.data.source, cfg.data.source)
        # a file stem may hold spaces or brackets ("sales 2024 (v2).csv"), which run ids cannot
        source = re.sub(r"[^A-Za-z0-9._-]+", "-", source).lstrip("._-") or "data"
        cfg.run.name = f"{source}-{model}"
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cfg.run.name):
        fail("run", "name", f"is {cfg.run.name!r}; use letters, digits, '.', '_' and '-'")


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` from the command line; the value is TOML, or else a bare string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set train.epochs=3")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"--set {text!r}: KEY must be section.key, e.g. train.epochs")
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text  # a bare word such as --set data.source=iris
    return parts[0], parts[1], value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (None: the demo), apply `--set` overrides, and validate."""
    raw: dict[str, Any] = {}
    origin = "the built-in demo config"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist" if not p.exists() else f"config {p} is not a file")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{p} is not valid TOML: {e}") from None
        except UnicodeDecodeError:
            raise UserError(f"{p} is not a UTF-8 text file") from None
        base_dir = p.resolve().parent
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"--set {text!r}: [{section}] in {origin} is not a table")
        raw[section][key] = value
    if overrides:
        origin += " with --set " + " ".join(overrides)
    return build_config(raw, origin, base_dir)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        text = v.replace("\\", "\\\\").replace('"', '\\"')
        # TOML basic strings cannot hold raw control characters (a newline in a column name)
        text = re.sub(r"[\x00-\x08\x0a-\x1f\x7f]", lambda m: f"\\u{ord(m.group()):04x}", text)
        return '"' + text + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps_toml(values: dict[str, Any], prefix: str = "") -> str:
    """TOML text for a config (tomllib only reads): sections of plain values, or any dict of them
    (a loop's own config), plain keys first, then tables; other values are written as text."""
    def plain(v):
        return isinstance(v, (bool, int, float, str)) or (isinstance(v, list) and all(
            isinstance(x, (bool, int, float, str)) for x in v))

    lines, tables = [], []
    for key, value in values.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif plain(value) and not (isinstance(value, float) and value != value or value in (math.inf, -math.inf)):
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
        elif value is not None:
            lines.append(f"{_toml_key(key)} = {_toml_value(repr(value))}")
    for key, table in tables:
        name = f"{prefix}{_toml_key(key)}"
        if lines:
            lines.append("")
        lines.append(f"[{name}]")
        lines.extend(dumps_toml(table, name + ".").splitlines())
    return "\n".join(lines) + "\n"


def _toml_key(key) -> str:
    key = str(key)
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else _toml_value(key)
