"""A user's own data: `data.factory = "module:function"` returning train, validation and test sets.

The function returns three torch Datasets of (input, target) pairs, or three (inputs, targets)
tensor pairs, as a tuple or a dict with keys train, val, test. The sets are read into memory once;
the task comes from the targets (integers: classes; floats: numbers) unless `data.task` says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import UserError
from ..factory import THEIRS, call_factory, load_factory, their_traceback
from .dataset import SPLITS, Dataset, describe_tensor, leakage_from_hashes
from .tabular import scale_of


@dataclass
class TensorPreprocessor:
    """A factory's data needs no fitting but the target's: its input shape, classes or target scale.

    A raw record is {"input": nested list of numbers} in the input shape.
    """

    task: str
    input_shape: list[int]
    dtype: str  # float32 | int64
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    vocab_size: int = 0

    kind = "tensor"
    target = "target"
    features = ["input"]

    def feature_types(self) -> dict[str, str]:
        return {"input": f"tensor {self.dtype} {list(self.input_shape)}"}

    def transform(self, rows) -> np.ndarray:
        """Records with an "input" (a DataFrame or a list of dicts) to a model input batch."""
        items = list(rows["input"]) if isinstance(rows, pd.DataFrame) and "input" in rows.columns else [
            r.get("input") if isinstance(r, dict) else None for r in (rows if isinstance(rows, list) else [])]
        if isinstance(rows, pd.DataFrame) and "input" not in rows.columns:
            raise UserError('an input for this model needs an "input": a nested list of numbers')
        out = []
        for i, item in enumerate(items):
            try:
                a = np.asarray(item, dtype=self.dtype)
            except (TypeError, ValueError, OverflowError):
                raise UserError(f"input {i}: \"input\" must be a nested list of numbers") from None
            if list(a.shape) != list(self.input_shape):
                raise UserError(f"input {i} has shape {list(a.shape)}; the model takes {list(self.input_shape)}")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise UserError(f"input {i} holds NaN or infinite values; every value must be a finite number")
            out.append(a)
        return np.stack(out) if out else np.zeros((0, *self.input_shape), dtype=self.dtype)

    def encode_target(self, y: pd.Series) -> np.ndarray:
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            return np.array([index[str(v)] for v in y], dtype=np.int64)
        return ((y.to_numpy(dtype=float) - self.target_mean) / self.target_std).astype(np.float32)

    def decode_value(self, scaled: np.ndarray) -> np.ndarray:
        return scaled * self.target_std + self.target_mean

    def preview(self, x: np.ndarray) -> dict[str, Any]:
        """The sample's shape, its values when few, grayscale "pixels" when it is image-like."""
        return describe_tensor(np.asarray(x))

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": 1, "task": self.task, "target": self.target,
                "classes": self.classes, "input_shape": list(self.input_shape), "dtype": self.dtype,
                "target_mean": self.target_mean, "target_std": self.target_std, "vocab_size": self.vocab_size}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> TensorPreprocessor:
        return cls(task=obj["task"], input_shape=obj["input_shape"], dtype=obj["dtype"],
                   classes=obj.get("classes", []), target_mean=obj.get("target_mean", 0.0),
                   target_std=obj.get("target_std", 1.0), vocab_size=obj.get("vocab_size", 0))


def _as_array(value, what: str) -> np.ndarray:
    try:
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - whatever the user returned
        raise UserError(f"data.factory: {what} is a {type(value).__name__}, not numbers or a tensor") from None


def _materialize(part, split: str) -> tuple[np.ndarray, np.ndarray]:
    """One split as (inputs, targets) arrays, from a Dataset or an (inputs, targets) pair."""
    # (inputs, targets): the targets may be a plain list, as long as the inputs are an array
    if (isinstance(part, (tuple, list)) and len(part) == 2 and hasattr(part[0], "shape")
            and (hasattr(part[1], "shape") or isinstance(part[1], (list, tuple)))):
        x, y = _as_array(part[0], f"the {split} inputs"), _as_array(part[1], f"the {split} targets")
        if x.ndim == 0 or y.ndim == 0:
            raise UserError(f"data.factory: the {split} inputs and targets must be arrays with one row per "
                            f"item; got shapes {list(x.shape)} and {list(y.shape)}")
        if len(x) != len(y):
            raise UserError(f"data.factory: the {split} split has {len(x)} inputs but {len(y)} targets")
        if len(x) == 0:
            raise UserError(f"data.factory: the {split} split is empty; return at least one item for each "
                            "of train, val and test")
        return x, y
    if not hasattr(part, "__getitem__"):
        raise UserError(f"data.factory: the {split} split is a {type(part).__name__}; return a torch "
                        "Dataset of (input, target) pairs or an (inputs, targets) pair of tensors")
    try:
        n = len(part)
    except TypeError:
        raise UserError(f"data.factory: the {split} Dataset has no len(); traintop needs map-style Datasets") from None
    except THEIRS as e:  # their __len__, their error
        raise UserError(f"data.factory: len() of the {split} Dataset failed:\n{their_traceback(e)}") from None
    if n == 0:
        raise UserError(f"data.factory: the {split} split is empty; return at least one item for each "
                        "of train, val and test")
    xs, ys = [], []
    for i in range(n):
        try:
            item = part[i]
        except THEIRS as e:  # their __getitem__, their error
            raise UserError(f"data.factory: item {i} of the {split} Dataset failed:\n{their_traceback(e)}") from None
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise UserError(f"data.factory: item {i} of the {split} split is a {type(item).__name__}; "
                            "each item must be an (input, target) pair")
        x, y = _as_array(item[0], f"the input of {split} item {i}"), _as_array(item[1], f"the target of {split} item {i}")
        if xs and x.shape != xs[0].shape:
            raise UserError(f"data.factory: {split} item {i} has input shape {list(x.shape)}, item 0 "
                            f"{list(xs[0].shape)}; every input must have the same shape")
        if ys and y.shape != ys[0].shape:
            raise UserError(f"data.factory: {split} item {i} has a target of shape {list(y.shape)}, item 0 "
                            f"{list(ys[0].shape)}; every target must have the same shape (one class index "
                            "or one number)")
        xs.append(x)
        ys.append(y)
    return np.stack(xs), np.stack(ys)


def _parts(result) -> dict[str, Any]:
    if isinstance(result, dict):
        missing = [s for s in SPLITS if s not in result]
        if missing:
            raise UserError(f"data.factory returned a dict without {', '.join(missing)}; "
                            "give keys train, val, test")
        return {s: result[s] for s in SPLITS}
    if isinstance(result, (tuple, list)) and len(result) == 3:
        return dict(zip(SPLITS, result))
    raise UserError(f"data.factory returned a {type(result).__name__}; return three Datasets "
                    "(train, val, test) or three (inputs, targets) tensor pairs")


def load_python_data(cfg: Config) -> Dataset:
    """Call the user's data factory and prepare what it returns."""
    d = cfg.data
    if not d.factory:
        raise UserError('data.factory is empty; data.source = "python" needs "module:function"')
    fn = load_factory(d.factory, "data.factory", cfg.base_dir)
    parts = _parts(call_factory(fn, "data.factory"))
    arrays = {s: _materialize(p, s) for s, p in parts.items()}
    y_train = arrays["train"][1]
    for s, (x, y) in arrays.items():
        if y.ndim > 1 and y.size != len(y):
            raise UserError(f"data.factory: the {s} targets have shape {list(y.shape)}; traintop trains on "
                            "one class index or one number per item")
        if x.dtype.kind not in "biuf":
            raise UserError(f"data.factory: the {s} inputs are {x.dtype}; they must be numbers")
        if y.dtype.kind not in "biuf":
            kind = "strings" if y.dtype.kind in "USO" else str(y.dtype)
            raise UserError(f"data.factory: the {s} targets are {kind} (e.g. {y.reshape(-1)[0]!r}); give "
                            "integer class indices (name the classes with a `classes` list on the train "
                            "Dataset) or numbers for a regression")
        if x.shape[1:] != arrays["train"][0].shape[1:]:
            raise UserError(f"data.factory: each {s} input has shape {list(x.shape[1:])}, each train input "
                            f"{list(arrays['train'][0].shape[1:])}; every split must give inputs of one shape")
        for what, a in (("inputs", x), ("targets", y)):
            if a.dtype.kind == "f":
                bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1)
                if bad.any():
                    raise UserError(f"data.factory: {int(bad.sum())} of the {s} {what} hold NaN or infinite "
                                    f"values (the first is item {int(np.flatnonzero(bad)[0])}); every input "
                                    "and target must be a finite number")
    dtype = "int64" if arrays["train"][0].dtype.kind in "iu" else "float32"
    for s, (x, _) in arrays.items():
        if dtype == "float32" and x.size and np.abs(x).max() > np.finfo(np.float32).max:
            raise UserError(f"data.factory: the {s} inputs hold values up to {np.abs(x).max():.3g}, past what "
                            "float32 holds (3.4e38); rescale them")
    integral = y_train.dtype.kind in "biu"
    task = d.task if d.task != "auto" else ("classification" if integral else "regression")
    if task == "classification" and not all(a[1].dtype.kind in "biu" or
                                            np.all(np.asarray(a[1], float) == np.round(np.asarray(a[1], float)))
                                            for a in arrays.values()):
        raise UserError("data.factory: classification needs integer class indices as targets")
    x = {s: a[0].astype(dtype) for s, a in arrays.items()}
    raw_y = {s: a[1].reshape(-1) for s, a in arrays.items()}
    classes: list[str] = []
    if task == "classification":
        values = sorted({int(v) for a in raw_y.values() for v in a})
        names = getattr(parts["train"], "classes", None)
        named = isinstance(names, (list, tuple))
        if named and not (values[0] >= 0 and values[-1] < len(names)):
            raise UserError(f"data.factory: the train Dataset's classes name {len(names)} class(es), and the "
                            f"targets hold class index {values[0] if values[0] < 0 else values[-1]}; give a name "
                            "for every index from 0, or no classes list")
        classes = [str(names[v]) if named else str(v) for v in values]
        twice = sorted({c for c in classes if classes.count(c) > 1})
        if twice:
            raise UserError(f"data.factory: the train Dataset's classes name {', '.join(map(repr, twice))} more "
                            "than once; each class needs a name of its own")
        if len(classes) < 2:
            raise UserError(f"data.factory: the targets have only one class ({classes[0]}); "
                            "classification needs at least two")
        raw_target = {s: pd.Series([classes[values.index(int(v))] for v in a], dtype=object)
                      for s, a in raw_y.items()}
    else:
        raw_target = {s: pd.Series(a.astype(float)) for s, a in raw_y.items()}
    pre = TensorPreprocessor(task=task, input_shape=list(x["train"].shape[1:]), dtype=dtype, classes=classes,
                             vocab_size=int(getattr(parts["train"], "vocab_size", 0) or 0))
    if task == "regression":
        pre.target_mean, pre.target_std = scale_of(raw_target["train"], "data.factory: the train targets")
    leaked = leakage_from_hashes({s: [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in a]
                                  for s, a in x.items()})
    warnings = []
    if leaked:
        warnings.append(("leakage", f"{leaked} validation/test items repeat the input of an item in an "
                                    "earlier split; their scores may be optimistic"))
    trained = set(raw_target["train"])
    untrained = [c for c in classes if c not in trained]
    if untrained:  # a class the model can never learn: every one of its val or test items is an error
        warnings.append(("data", f"class(es) {', '.join(untrained[:5])}{' ...' if len(untrained) > 5 else ''} "
                                 "appear only in the val or test split, never in train: the model cannot learn them"))
    return Dataset(task=task, preprocess=pre, x=x,
                   y={s: pre.encode_target(raw_target[s]) for s in SPLITS},
                   raw={s: pd.DataFrame({"index": np.arange(len(a))}) for s, a in x.items()},
                   raw_target=raw_target, warnings=warnings, extra={"leakage": leaked})
