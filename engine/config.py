"""The run configuration: TOML sections with defaults, `--set` overrides and validation.

Every key has a default, so a config names only what it changes, and any config trains an MLP on
the bundled digits unless it says otherwise. The built-in demo (no config at all, or an empty one)
is those defaults with DEMO's settings over them. Mistakes name the key, the file and what is
allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import reprlib
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
    precision: str = "32"  # 32 | bf16 | fp16: autocast, and for fp16 a gradient scaler
    compile: bool = False  # torch.compile the model and the optimizer step
    accumulate: int = 1  # batches per optimizer step
    sync_every: int = 1  # steps between the ranks' rounds (commands, flushes) on several processes


@dataclass
class EarlyStoppingConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "auto"  # resolved when the config is built: max for accuracy and r2, min otherwise
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True


@dataclass
class CheckpointConfig:
    every_epochs: int = 0
    every_seconds: float = 120.0  # last.pt at the first step boundary this long after the last save; 0 = off


@dataclass
class SignalsConfig:
    """Thresholds of the live diagnoses (engine/signals): each key is documented in all_keys.toml."""

    enabled: bool = True  # false: no diagnoses but nan_loss and leakage
    log_timing: bool = False  # the headless log adds a per-phase timing line to each step line
    spike_mads: float = 25.0  # loss_spike: times the step-to-step noise above the recent median
    spike_ratio: float = 3.0  # loss_spike: times the recent median
    spike_floor: float = 1.0  # loss_spike: height above the median, as a fraction of the starting loss
    spike_window: int = 100  # loss_spike: steps in the recent window
    divergence_factor: float = 2.0  # divergence: recent loss over its starting level
    divergence_rise: float = 0.5  # divergence: rise over the lowest level, as a fraction of the starting loss
    validations: int = 3  # plateau, underfitting, overfitting: validations looked back over
    flat_change: float = 0.02  # plateau, underfitting: relative change of the training loss that counts as flat
    high_loss: float = 0.75  # plateau, underfitting: "high" is above this fraction of the starting loss
    moved: float = 0.05  # plateau: the loss has hardly moved when it fell less than this fraction of its start
    overfit_rise: float = 0.1  # overfitting: validation loss this far above its best (relative)
    overfit_widening: float = 0.25  # overfitting: the gap between losses grew by this fraction, to this fraction of V
    overfit_floor: float = 0.05  # overfitting: least rise, widening and gap, as a fraction of the starting loss
    vanishing_ratio: float = 1e-4  # vanishing_gradients: smallest over largest per-layer RMS gradient
    exploding_factor: float = 100.0  # exploding_gradients: gradient norm over its early level
    dead_fraction: float = 0.5  # dead_units: share of a layer's ReLU units silent on a validation batch
    data_bound_share: float = 0.5  # data_bound: share of a step spent waiting for the batch


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
    signals: SignalsConfig = field(default_factory=SignalsConfig)
    base_dir: Path = field(default=Path("."), compare=False)  # relative paths resolve here
    # (kind, message) of settings that are allowed but probably not meant; published like data warnings
    warnings: list[tuple[str, str]] = field(default_factory=list, compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as plain TOML-able sections."""
        return {
            f.name: dataclasses.asdict(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.name not in NOT_SECTIONS
        }

    def to_toml(self) -> str:
        """The resolved config as TOML text."""
        return dumps_toml(self.to_dict())

    def imported_code(self) -> list[tuple[str, str]]:
        """The (key, "module:function") pairs whose code building this run imports."""
        return [(key, spec) for key, spec, imported in (
            ("model.factory", self.model.factory, self.model.kind == "python"),
            ("data.factory", self.data.factory, self.data.source == "python")) if imported]

    def resolve_path(self, path: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


NOT_SECTIONS = ("base_dir", "warnings")

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("data", "source"): BUILTIN_SOURCES + ("csv", "image_folder", "python", "torchvision"),
    ("data", "task"): ("auto", "classification", "regression"),
    ("model", "kind"): ("mlp", "linear", "cnn", "text", "python"),
    ("optim", "name"): ("sgd", "adam", "adamw", "rmsprop"),
    ("schedule", "name"): ("none", "step", "cosine", "onecycle", "plateau"),
    ("train", "loss"): ("auto", "mse", "l1", "huber", "cross_entropy", "bce"),
    ("train", "on_nan"): ("stop", "skip"),
    ("train", "precision"): ("32", "bf16", "fp16"),
    ("early_stopping", "mode"): ("auto", "min", "max"),
}

# The learning rate a run may use, from the config or set live: lower bound excluded.
LR_RANGE = (0.0, 10.0)
# A run's name becomes part of its run id, a folder's name: config runs, --name and watch(name=).
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
RUN_NAME_RULE = ("use ASCII letters, digits, '.', '_' and '-', starting with a letter or digit (it becomes part "
                 "of the run id)")


@dataclass(frozen=True)
class Range:
    """The numbers a key allows: finite, from `low` to `high` (each bound included unless open).

    For a list key the range holds for each item, and `items` bounds the list's length.
    """

    low: float
    high: float = math.inf  # inf: any finite number from `low` up
    low_open: bool = False
    high_open: bool = False
    only: tuple[int, ...] = ()  # when set, just these values
    note: str = ""  # says what is allowed, instead of the bounds
    items: tuple[int, int] = (0, 0)  # a list's least and most items; (0, 0) for a single number

    def contains(self, value) -> bool:
        """True when `value` is a finite number in range (a huge int never is: it has no float)."""
        try:
            if not math.isfinite(value):
                return False
        except OverflowError:
            return False
        if self.only and value not in self.only:
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self, key: str, integer: bool) -> str:
        """What is allowed, in words: "1 to 1000000", "0 < lr <= 10", "a finite number, 0 or more"."""
        if self.note:
            return self.note
        low, high = _number(self.low), _number(self.high)
        if math.isinf(self.high):
            bound = f"above {low}" if self.low_open else f"{low} or more"
            text = f"{'an integer' if integer else 'a finite number'}, {bound}"
        elif self.low_open or self.high_open:
            text = (f"{low} {'<' if self.low_open else '<='} {key} "
                    f"{'<' if self.high_open else '<='} {high}")
        else:
            text = f"{'an integer ' if integer else ''}from {low} to {high}"
        return f"each item {text}" if self.items != (0, 0) else text


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(v)


# A seed larger than this cannot seed numpy; more threads than this only wait on each other (and
# 100000 of them end the process).
SEED_MAX = 2 ** 32 - 1
THREADS_MAX = min(1024, 4 * (os.cpu_count() or 1))
COUNT_MAX = 10 ** 9  # steps: more than any run takes
EPOCHS_MAX = 10 ** 6
WIDTH_MAX = 65536  # a layer wider than this is 2**32 weights next to another like it
LAYERS_MAX = 1000

PATIENCE = Range(0, EPOCHS_MAX)  # early stopping's patience, in validations: the config's and a command's

# Every numeric key, with what it allows. Keys of a section that are missing here must still be
# finite (see _validate), but every key gets its own range: tests/test_config.py checks that.
RANGES: dict[tuple[str, str], Range] = {
    ("run", "seed"): Range(0, SEED_MAX),
    ("run", "threads"): Range(0, THREADS_MAX, note=f"an integer from 0 (all cores but one) to {THREADS_MAX} "
                                                   f"(4 per core of this machine's {os.cpu_count() or 1} cores, "
                                                   "at most 1024)"),
    ("data", "split"): Range(0, 1, items=(3, 3), note="three fractions [train, val, test], each from 0 to 1"),
    ("data", "batch_size"): Range(1, 1_000_000),
    ("data", "image_size"): Range(1, 4096),  # a decoded 4096x4096 RGB image is 200 MB of float32
    ("data", "channels"): Range(0, 3, only=(0, 1, 3), note="0 (from the files), 1 (grayscale), 3 (RGB)"),
    ("data", "memory_limit_mb"): Range(1, 2 ** 20),  # 1 TiB
    ("data", "min_freq"): Range(1, COUNT_MAX),
    ("data", "max_vocab"): Range(1, 2 ** 24 - 2),  # token indices travel as float32: exact up to 2**24
    ("model", "hidden"): Range(1, WIDTH_MAX, items=(0, LAYERS_MAX)),
    ("model", "dropout"): Range(0, 1, high_open=True),
    ("model", "channels"): Range(1, WIDTH_MAX, items=(1, LAYERS_MAX)),
    ("optim", "lr"): Range(*LR_RANGE, low_open=True),
    ("optim", "weight_decay"): Range(0),
    ("optim", "momentum"): Range(0, 1, high_open=True),
    ("schedule", "warmup_steps"): Range(0, COUNT_MAX),
    ("schedule", "step_epochs"): Range(1, EPOCHS_MAX),
    ("schedule", "gamma"): Range(0, 1, low_open=True),
    ("schedule", "plateau_patience"): Range(0, EPOCHS_MAX),
    ("schedule", "min_lr"): Range(0, LR_RANGE[1]),
    ("train", "epochs"): Range(1, EPOCHS_MAX),
    ("train", "grad_clip"): Range(0),
    ("train", "val_every_steps"): Range(0, COUNT_MAX),
    ("train", "accumulate"): Range(1, 1_000_000),
    ("train", "sync_every"): Range(1, COUNT_MAX),
    ("early_stopping", "patience"): PATIENCE,
    ("early_stopping", "min_delta"): Range(0),
    ("checkpoint", "every_epochs"): Range(0, EPOCHS_MAX),
    ("checkpoint", "every_seconds"): Range(0, 10 ** 7),  # about four months
    ("signals", "spike_mads"): Range(1, 1e6),
    ("signals", "spike_ratio"): Range(1, 1e6),
    ("signals", "spike_floor"): Range(0, 1e6),
    ("signals", "spike_window"): Range(10, 100_000),
    ("signals", "divergence_factor"): Range(1, 1e6, low_open=True),
    ("signals", "divergence_rise"): Range(0, 1e6),
    ("signals", "validations"): Range(2, 1000),
    ("signals", "flat_change"): Range(0, 1),
    ("signals", "high_loss"): Range(0, 1),
    ("signals", "moved"): Range(0, 1),
    ("signals", "overfit_rise"): Range(0, 1e6),
    ("signals", "overfit_widening"): Range(0, 1e6),
    ("signals", "overfit_floor"): Range(0, 1e6),
    ("signals", "vanishing_ratio"): Range(0, 1),
    ("signals", "exploding_factor"): Range(1, 1e12, low_open=True),
    ("signals", "dead_fraction"): Range(0, 1, low_open=True),
    ("signals", "data_bound_share"): Range(0, 1, low_open=True, high_open=True),
}
FINITE = Range(-math.inf)  # a numeric key without a range of its own: any finite number

# The words of a monitor's name (split at "_", trailing digits dropped: acc1, map50) that say which
# way is better. A name with a word of LOWER in it is minimised (val_loss, val_nll_loss,
# val_error_rate, val_acc_gap), then one with a word of HIGHER maximised (val_accuracy, val_acc,
# val_top1_acc, val_f1_macro, val_auroc, val_map50), and any other minimised, with a warning.
HIGHER = frozenset({"accuracy", "acc", "r", "f", "auc", "auroc", "auprc", "ap", "map", "precision", "recall",
                    "iou", "miou", "dice", "bleu", "sacrebleu", "rouge", "rougel", "rougelsum", "top", "mcc",
                    "matthews", "kappa", "spearman", "spearmanr", "pearson", "pearsonr", "correlation", "ndcg",
                    "mrr", "hits", "psnr", "ssim", "em", "exact", "meteor", "chrf", "f1score", "score"})
LOWER = frozenset({"loss", "error", "err", "mae", "mse", "rmse", "mape", "nll", "perplexity", "ppl", "wer", "cer",
                   "fid", "ter", "gap", "distance", "divergence", "kl", "brier"})

DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in dataclasses.fields(Config) if f.name not in NOT_SECTIONS}


def _section_types() -> dict[str, dict[str, Any]]:
    hints = get_type_hints(Config)
    return {name: get_type_hints(hints[name]) for name in _sections()}


_SHOW = reprlib.Repr()
_SHOW.maxlong, _SHOW.maxstring, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxlevel = 40, 80, 8, 4, 3


def plain_float(text: str) -> float:
    """A number as typed (a CSV cell, `ctl lr`, the dashboard's prompts): what Python's `float`
    reads, less what a CSV reader would not, `1_000` and non-ASCII digits. ValueError otherwise."""
    text = text.strip()
    if "_" in text or not text.isascii():
        raise ValueError(text)
    return float(text)


def show_value(value) -> str:
    """A value for a message, cut short: a 400-digit integer or a deep list stays one line."""
    text = _SHOW.repr(value)
    if isinstance(value, int) and len(text) < len(str(value)):
        text += f" ({len(str(abs(value)))} digits)"
    return text


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
            try:
                return float(value)
            except OverflowError:  # an integer past any float: kept, so its range check names it
                return value
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
            if t is str and type(value) is int and str(value) in CHOICES.get((section, key), ()):
                value = str(value)  # a choice that names a number may be written as one: precision = 32
            try:
                value = _check_type(value, t)
            except ValueError:
                raise UserError(f"{where} must be {_describe(t)}, got {show_value(value)}") from None
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
    _check_numbers(cfg, origin)
    if not DEVICE_RE.match(cfg.run.device):
        fail("run", "device", f"is {cfg.run.device!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    split = cfg.data.split
    if split[0] <= 0 or split[1] <= 0:
        fail("data", "split", f"is {split}; give three fractions [train, val, test], train and val above 0")
    if abs(sum(split) - 1.0) > 1e-6:
        fail("data", "split", f"is {split}, which sums to {sum(split):g}; the fractions must sum to 1")
    if cfg.data.source == "csv" and not cfg.data.path:
        fail("data", "path", "is empty; data.source = \"csv\" needs the path of a CSV file")
    if cfg.data.source == "csv" and not cfg.data.target:
        fail("data", "target", "is empty; data.source = \"csv\" needs the name of the label column")
    if cfg.data.source == "image_folder" and not cfg.data.path:
        fail("data", "path", "is empty; data.source = \"image_folder\" needs a folder with one sub-folder "
                             "of images per class")
    if cfg.data.text and cfg.data.source != "csv":
        fail("data", "text", f"is {cfg.data.text!r}, but a text column needs data.source = \"csv\"")
    if cfg.schedule.name in ("cosine", "onecycle", "plateau") and cfg.schedule.min_lr > cfg.optim.lr:
        fail("schedule", "min_lr", f"is {cfg.schedule.min_lr:g}, above optim.lr = {cfg.optim.lr:g}: the "
                                   f"{cfg.schedule.name} schedule decays from optim.lr down to min_lr, so give a "
                                   "min_lr below optim.lr (0 by default)")
    if cfg.data.source == "python" and not cfg.data.factory:
        fail("data", "factory", "is empty; data.source = \"python\" needs \"module:function\", a function "
                                "returning the train, validation and test sets")
    if cfg.model.kind == "python" and not cfg.model.factory:
        fail("model", "factory", "is empty; model.kind = \"python\" needs \"module:function\", a function "
                                 "returning an nn.Module")
    if cfg.data.source == "torchvision" and not cfg.data.dataset:
        fail("data", "dataset", "is empty; data.source = \"torchvision\" needs one of MNIST, "
                                "FashionMNIST, CIFAR10")
    monitor = cfg.early_stopping.monitor
    if not re.match(r"^val_[a-z0-9_]+$", monitor):
        fail("early_stopping", "monitor", f"is {monitor!r}; allowed: val_loss or val_<metric>, e.g. val_accuracy")
    _resolve_mode(cfg)
    if not cfg.run.name:
        model = cfg.model.kind
        source = {"csv": Path(cfg.data.path).stem, "image_folder": Path(cfg.data.path).name,
                  "torchvision": cfg.data.dataset}.get(cfg.data.source, cfg.data.source)
        # a file stem may hold spaces or brackets ("sales 2024 (v2).csv"), which run ids cannot
        source = re.sub(r"[^A-Za-z0-9._-]+", "-", source).lstrip("._-") or "data"
        cfg.run.name = f"{source}-{model}"
    if not RUN_NAME.match(cfg.run.name):
        fail("run", "name", f"is {cfg.run.name!r}; {RUN_NAME_RULE}")


def _check_numbers(cfg: Config, origin: str) -> None:
    """The one numeric rule: every number of every section finite and within its key's Range."""
    for section, keys in _section_types().items():
        for key, t in keys.items():
            if t not in (int, float, list[int], list[float]):
                continue
            value = getattr(getattr(cfg, section), key)
            rule = RANGES.get((section, key), FINITE)
            integer = t in (int, list[int])
            if isinstance(value, list):
                least, most = rule.items
                fits = least <= len(value) <= most and all(rule.contains(v) for v in value)
                count = f"{least} to {most} items" if least else f"at most {most} items"
                allowed = rule.note or f"{count}, {rule.describe(key, integer)}"
            else:
                fits, allowed = rule.contains(value), rule.describe(key, integer)
            if not fits:
                raise UserError(f"{origin}: {section}.{key} is {show_value(value)}; allowed: {allowed}")
            if t is float:
                setattr(getattr(cfg, section), key, float(value))
            elif t is list[float]:
                setattr(getattr(cfg, section), key, [float(v) for v in value])


def monitor_words(monitor: str) -> set[str]:
    return {word.rstrip("0123456789") for word in monitor.lower().split("_")[1:]}


def monitor_mode(monitor: str) -> str:
    """What the monitor means: "max" for accuracy, r2, f1 and their kin, "min" for losses, errors
    and any other (see HIGHER and LOWER)."""
    words = monitor_words(monitor)
    return "max" if words & HIGHER and not words & LOWER else "min"


def monitor_known(monitor: str) -> bool:
    """Whether the monitor's name says which way is better (else "auto" minimises it, unsure)."""
    return bool(monitor_words(monitor) & (HIGHER | LOWER))


def _resolve_mode(cfg: Config) -> None:
    """mode = "auto" becomes what the monitor means; a mode against its monitor is kept, with a warning."""
    es = cfg.early_stopping
    natural = monitor_mode(es.monitor)
    if es.mode == "auto":
        es.mode = natural
        if not monitor_known(es.monitor):
            cfg.warnings.append(("config", f'early_stopping.monitor = "{es.monitor}" does not say which way is better: '
                                           'mode = "auto" minimises it; set mode = "max" if a higher one is better'))
    elif es.mode != natural and monitor_known(es.monitor):
        better = "higher" if natural == "max" else "lower"
        cfg.warnings.append(("config", f'early_stopping.mode = "{es.mode}" with monitor = "{es.monitor}": a '
                                       f"{better} {es.monitor} is better, so early stopping will keep and "
                                       f'restore the worst weights; use mode = "{natural}" or "auto"'))


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
    except tomllib.TOMLDecodeError as e:
        if value_text.strip()[:1] in ("[", "{", '"', "'"):  # meant as TOML, not a bare word
            raise UserError(f"--set {key}: {value_text!r} is not a valid TOML value ({e}); e.g. "
                            f"--set model.hidden=[64,64] or --set data.path='my data.csv'") from None
        value = value_text  # a bare word such as --set data.source=iris
    except RecursionError:
        raise UserError(f"--set {key}: the value is nested too deeply to read") from None
    return parts[0], parts[1], value


# The built-in demo (`traintop`, and `run`, `check` and `lr-find` without a config): the digits
# defaults made to train for about half a minute on one CPU core (300 epochs of 79 steps; 30 s
# measured from the command to its test score), so that a newcomer has time to pause, change the
# rate and try the model while it learns. The rate is low on purpose: `+` visibly speeds the run up
# (lr-find suggests far more). It still ends at the demo's test accuracy (0.974).
# `traintop check` prints these values.
DEMO: dict[str, dict[str, Any]] = {
    "data": {"batch_size": 16},
    "model": {"hidden": [512, 512]},
    "optim": {"lr": 1e-5},
    "train": {"epochs": 300},
}


def demo_config(overrides: list[str] = (), name: str | None = None) -> Config:
    """The built-in demo: the defaults with DEMO over them, then `--set` overrides, validated."""
    return load_config(None, overrides, base=DEMO, name=name)


def load_config(path: str | Path | None = None, overrides: list[str] = (),
                base: dict[str, dict[str, Any]] | None = None, name: str | None = None) -> Config:
    """Read a TOML config (None: every key at its default, or at `base` where it names the key; an
    empty file: the demo), apply `--set` overrides and `--name` (run.name, checked as that key),
    and validate."""
    raw: dict[str, Any] = copy.deepcopy(base) if base is not None else {}
    origin = "the built-in demo config" if base is DEMO else "the default config"
    base_dir = Path.cwd()
    if path is not None:
        p = Path(path)
        origin = str(p)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist" if not p.exists() else f"config {p} is not a file")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # a BOM, as some editors write, is no TOML
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{p} is not valid TOML: {e}") from None
        except RecursionError:
            raise UserError(f"{p}: a value is nested too deeply to read") from None
        except UnicodeDecodeError:
            raise UserError(f"{p} is not a UTF-8 text file") from None
        if not raw:  # a config that says nothing is the demo
            raw = copy.deepcopy(DEMO)
        base_dir = p.resolve().parent
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"--set {text!r}: [{section}] in {origin} is not a table")
        raw[section][key] = value
    if overrides:
        origin += " with --set " + " ".join(o if len(o) <= 80 else o[:60] + "..." for o in overrides)
    if name is not None:
        raw.setdefault("run", {})
        if not isinstance(raw["run"], dict):
            raise UserError(f"--name: [run] in {origin} is not a table")
        raw["run"]["name"] = name
        origin += f" {'and' if overrides else 'with'} --name {name[:60]!r}"
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
