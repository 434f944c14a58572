"""Tables: type inference, the split, and the preprocessing fitted on the training split.

The fitted preprocessing is plain data (preprocess.json), so raw rows can be turned into model
inputs the same way later, by `predict` in a live run or on a finished one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..config import plain_float
from ..errors import UserError

MAX_CATEGORIES = 50  # most frequent values kept per categorical column; the rest encode as none
FEW_VALUES = 10  # an integer column with at most this many distinct values is categorical
CLASSIFICATION_MAX_CLASSES = 20
ID_LIKE_ROWS = 20  # a text column of more rows than this whose values are nearly all distinct...
ID_LIKE_DISTINCT = 0.95  # ...(this share or more) names rows, like an id: it is left out

# How a CSV cell says "no value", as pandas reads a training file. NaN is spelled out in raw
# inputs to predict only on purpose or by accident, so there it is refused as not finite.
NAN_TEXT = frozenset({"nan", "-nan", "NaN", "-NaN", "1.#QNAN", "-1.#QNAN", "1.#IND", "-1.#IND"})
MISSING_TEXT = frozenset({"", "#N/A", "#N/A N/A", "#NA", "<NA>", "N/A", "NA", "NULL", "None", "n/a", "null"})


class BadValue(UserError):
    """A raw value that cannot become a model input: which row and column, and why."""

    def __init__(self, row: int, column: str, value: Any, why: str):
        self.row, self.column, self.value, self.why = row, column, value, why
        super().__init__(self.at(f"row {row}"))

    def at(self, where: str) -> str:
        """The message with the row named as `where` (e.g. "input 3", or a CSV line)."""
        return f"{where}, column {self.column!r}: {_shown(self.value)} {self.why}"


def _shown(value: Any) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= 60 else text[:57] + "..."


def category_key(value: Any) -> str | None:
    """The canonical text of a categorical value: 3, 3.0 and "3" are the same category."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            return repr(float(value))
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    return text if text and text not in MISSING_TEXT and text not in NAN_TEXT else None


def _number(value: Any, row: int, column: str) -> float:
    """One raw cell of a numeric column as a float; NaN when missing. BadValue when it is not a
    finite number."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        try:
            number = float(value)
        except OverflowError:
            raise BadValue(row, column, value, "is too large a number") from None
        if not math.isfinite(number):
            raise BadValue(row, column, value, "is not a finite number")
        return number
    if isinstance(value, str):
        text = value.strip()
        if text in MISSING_TEXT:
            return math.nan
        try:
            number = plain_float(text)
        except ValueError:
            raise BadValue(row, column, value, "is not a number (leave it blank for a missing value)") from None
        if not math.isfinite(number):
            raise BadValue(row, column, value, "is not a finite number")
        return number
    raise BadValue(row, column, value, "is not a number (leave it blank for a missing value)")


def numeric_values(column: pd.Series, name: str) -> np.ndarray:
    """A numeric column's raw values as float64, NaN where missing; BadValue names the first cell
    that is not a finite number (text, inf, or a value too large for a float)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        values = column.to_numpy(dtype=float)
        bad = np.flatnonzero(np.isinf(values))
        if len(bad):
            raise BadValue(int(bad[0]), name, column.iloc[bad[0]], "is not a finite number")
        return values
    return np.array([_number(v, r, name) for r, v in enumerate(column)], dtype=float)


def separator_hint(columns: list[str]) -> str:
    """Why a CSV's columns are not found, when its header read as one column holding another
    separator: words for the end of the message, or ""."""
    other = [sep for sep in (";", "\t", "|") if len(columns) == 1 and sep in columns[0]]
    return (f" (its header reads as one column: are its fields separated by {other[0]!r}? traintop reads "
            "comma-separated files)") if other else ""


def scale_of(values: pd.Series, what: str) -> tuple[float, float]:
    """Mean and scale of finite values, for standardizing them: the scale is their standard
    deviation, or 1 for values that do not vary (by no more than float64's rounding of their
    mean: a spread of 1e-20 in targets of 1e-20 is their whole signal, not noise). A UserError
    naming `what` when they overflow (values near 1e300)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(values.mean()), float(values.std(ddof=0))
    if math.isfinite(mean) and math.isfinite(std):
        return mean, std if std > 1e-12 * abs(mean) and std > 0 else 1.0
    raise UserError(f"{what} holds numbers too large to standardize (largest magnitude "
                    f"{values.abs().max():.3g}); rescale it, e.g. into other units")


def is_categorical(column: pd.Series) -> bool:
    """Strings and booleans are categorical; so are integer columns with few distinct values."""
    if column.dtype == bool or not pd.api.types.is_numeric_dtype(column):
        return True
    values = column.dropna()
    return bool(len(values)) and bool((values == values.round()).all()) and values.nunique() <= FEW_VALUES


def id_like(column: pd.Series) -> str | None:
    """Why a text column names its rows rather than describing them (a customer id, a name, a
    uuid: nearly every value distinct), or None. Its one-hot columns would learn nothing but noise."""
    if column.dtype == bool or pd.api.types.is_numeric_dtype(column):
        return None
    keys = column.map(category_key).dropna()
    distinct = keys.nunique()
    if len(keys) > ID_LIKE_ROWS and distinct >= ID_LIKE_DISTINCT * len(keys):
        return f"ID-like, {distinct} distinct of {len(keys)}"
    return None


def infer_task(target: pd.Series) -> str:
    """Classification for string, boolean or few-integer targets; regression otherwise."""
    values = target.dropna()
    if values.dtype == bool or not pd.api.types.is_numeric_dtype(values):
        return "classification"
    integral = bool((values == values.round()).all())
    return "classification" if integral and values.nunique() <= CLASSIFICATION_MAX_CLASSES else "regression"


@dataclass
class Preprocessor:
    """What was fitted on the training split: imputation, scaling, one-hot categories, targets."""

    task: str
    target: str
    columns: list[dict[str, Any]]  # {"name", "kind": numeric|categorical, "fill", ...}
    classes: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0

    kind = "tabular"
    vocab_size = 0

    @property
    def input_shape(self) -> list[int]:
        """One row's model input: a vector of the encoded columns."""
        return [len(self.output_names)]

    def feature_types(self) -> dict[str, str]:
        """Each raw feature's kind: numeric or categorical."""
        return {c["name"]: c["kind"] for c in self.columns}

    @property
    def features(self) -> list[str]:
        """The raw feature names, in order."""
        return [c["name"] for c in self.columns]

    @property
    def output_names(self) -> list[str]:
        """The model's input columns after one-hot encoding."""
        names = []
        for c in self.columns:
            if c["kind"] == "numeric":
                names.append(c["name"])
            else:
                names.extend(f"{c['name']}={v}" for v in c["categories"])
        return names

    @classmethod
    def fit(cls, train: pd.DataFrame, y_train: pd.Series, task: str, target: str,
            kinds: dict[str, str], classes: list[str]) -> Preprocessor:
        """Fit imputation, scaling and categories on the training rows only."""
        columns = []
        for name, kind in kinds.items():
            col = train[name]
            if kind == "numeric":
                values = pd.Series(numeric_values(col, name))
                median = float(values.median()) if values.notna().any() else 0.0
                mean, std = scale_of(values.fillna(median), f"column {name!r}")
                columns.append({"name": name, "kind": "numeric", "fill": median,
                                "mean": mean, "std": std})
            else:
                keys = col.map(category_key).dropna()
                counts = keys.value_counts()
                top = sorted(counts.index[:MAX_CATEGORIES], key=lambda k: (-counts[k], k))
                columns.append({"name": name, "kind": "categorical",
                                "fill": top[0] if top else None, "categories": top})
        pre = cls(task=task, target=target, columns=columns, classes=classes)
        if task == "regression":
            pre.target_mean, pre.target_std = scale_of(y_train.astype(float), f"data.target: column {target!r}")
        return pre

    def transform(self, rows: pd.DataFrame) -> np.ndarray:
        """Raw rows to model inputs (float32), exactly as in training; missing columns are an error."""
        missing = [c for c in self.features if c not in rows.columns]
        if missing:
            raise UserError(f"input is missing feature column(s) {', '.join(missing)}; "
                            f"the model was trained on: {', '.join(self.features)}")
        parts = []
        for c in self.columns:
            col = rows[c["name"]]
            if c["kind"] == "numeric":
                raw = numeric_values(col, c["name"])
                with np.errstate(over="ignore", invalid="ignore"):
                    scaled = ((np.where(np.isnan(raw), c["fill"], raw) - c["mean"]) / c["std"]).astype(np.float32)
                far = np.flatnonzero(~np.isfinite(scaled))
                if len(far):  # finite, but beyond float32 once scaled as in training
                    raise BadValue(int(far[0]), c["name"], col.iloc[far[0]],
                                   f"is too large for the scale fitted in training (mean {c['mean']:.4g}, "
                                   f"std {c['std']:.4g})")
                parts.append(scaled[:, None])
            else:
                keys = col.map(category_key).where(lambda k: k.notna(), c["fill"])
                index = {v: i for i, v in enumerate(c["categories"])}
                onehot = np.zeros((len(rows), len(c["categories"])))
                for r, k in enumerate(keys):
                    if k in index:  # an unseen category encodes as all zeros
                        onehot[r, index[k]] = 1.0
                parts.append(onehot)
        if not parts:
            return np.zeros((len(rows), 0), dtype=np.float32)
        return np.concatenate(parts, axis=1).astype(np.float32)

    def preview(self, x: np.ndarray) -> dict[str, Any]:
        """Nothing to add: a table row is shown as its raw record."""
        return {}

    def encode_target(self, y: pd.Series) -> np.ndarray:
        """Targets as the model sees them: class indices, or standardized values."""
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            return np.array([index[category_key(v)] for v in y], dtype=np.int64)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = ((y.to_numpy(dtype=float) - self.target_mean) / self.target_std).astype(np.float32)
        far = np.flatnonzero(~np.isfinite(scaled))
        if len(far):
            raise BadValue(int(far[0]), self.target, y.iloc[far[0]],
                           f"is too large for the target's scale fitted in training (mean {self.target_mean:.4g}, "
                           f"std {self.target_std:.4g})")
        return scaled

    def decode_value(self, scaled: np.ndarray) -> np.ndarray:
        """Standardized regression outputs back in the target's own units."""
        return scaled * self.target_std + self.target_mean

    def to_json(self) -> dict[str, Any]:
        """The fitted preprocessing as preprocess.json holds it."""
        return {"kind": self.kind, "version": 1, "task": self.task, "target": self.target, "classes": self.classes,
                "target_mean": self.target_mean, "target_std": self.target_std,
                "columns": self.columns, "inputs": self.output_names}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Preprocessor:
        """Read back what to_json wrote, each value of its kind (a UserError saying which is not):
        a file edited by hand must fail here, not as a numpy error on the first row predicted."""
        def number(value, what: str, positive: bool = False) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or (positive and value <= 0):
                raise UserError(f"{what} is {value!r}, not a {'positive' if positive else 'finite'} number")
            return float(value)

        version = obj.get("version", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version > 1:
            raise UserError(f"its version is {version!r}; this traintop reads version 1 (a newer traintop wrote it?)")
        if obj.get("task") not in ("classification", "regression"):
            raise UserError(f"task is {obj.get('task')!r}, not classification or regression")
        columns, classes = obj.get("columns"), obj.get("classes", [])
        if not isinstance(obj.get("target"), str) or not isinstance(classes, list) \
                or not all(isinstance(c, str) for c in classes):
            raise UserError("its target is not a name, or its classes are not a list of names")
        text_only = obj.get("kind") == "text"  # a text run's table may hold no column beside its text
        if not isinstance(columns, list) or not (columns or text_only) or not all(isinstance(c, dict) for c in columns):
            raise UserError("its columns are not a list of the input columns")
        names = [c.get("name") for c in columns]
        if not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
            raise UserError("its columns do not each have a name of their own")
        for c in columns:
            what = f"column {c['name']!r}"
            if c.get("kind") == "numeric":
                for key in ("fill", "mean"):
                    number(c.get(key), f"{what}'s {key}")
                number(c.get("std"), f"{what}'s std", positive=True)
            elif c.get("kind") == "categorical":
                categories = c.get("categories")
                if not isinstance(categories, list) or not all(isinstance(v, str) for v in categories) \
                        or not (c.get("fill") is None or isinstance(c.get("fill"), str)):
                    raise UserError(f"{what}'s categories are not a list of names")
            else:
                raise UserError(f"{what} is of kind {c.get('kind')!r}, not numeric or categorical")
        return cls(task=obj["task"], target=obj["target"], columns=columns, classes=classes,
                   target_mean=number(obj.get("target_mean", 0.0), "target_mean"),
                   target_std=number(obj.get("target_std", 1.0), "target_std", positive=True))


def split_indices(n: int, fractions: list[float], seed: int,
                  labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded train/val/test indices, stratified by `labels` when every class can be."""
    from sklearn.model_selection import train_test_split

    train_f, val_f, test_f = fractions
    index = np.arange(n)

    def stratify(idx, n_first):
        if labels is None:
            return None
        _, counts = np.unique(labels[idx], return_counts=True)
        # each part must have room for every class, or scikit-learn refuses to stratify
        fits = min(n_first, len(idx) - n_first) >= len(counts)
        return labels[idx] if counts.min() >= 2 and fits else None

    n_train = max(1, round(n * train_f))
    if n_train >= n:
        raise UserError(f"data has {n} rows: too few to split into train, validation and test")
    train, rest = train_test_split(index, train_size=n_train, random_state=seed,
                                   stratify=stratify(index, n_train))
    if test_f == 0:
        return np.sort(train), np.sort(rest), np.array([], dtype=int)
    n_val = max(1, round(len(rest) * val_f / (val_f + test_f)))
    if n_val >= len(rest):
        raise UserError(f"data has {n} rows: too few to split into train, validation and test")
    val, test = train_test_split(rest, train_size=n_val, random_state=seed, stratify=stratify(rest, n_val))
    return np.sort(train), np.sort(val), np.sort(test)


def count_leakage(frames: dict[str, pd.DataFrame]) -> int:
    """How many validation and test rows repeat a row (same features) of an earlier split."""
    hashes = {name: set(pd.util.hash_pandas_object(df, index=False)) if len(df) else set()
              for name, df in frames.items()}
    seen: set = set(hashes["train"])
    leaked = 0
    for name in ("val", "test"):
        if len(frames[name]):
            h = pd.util.hash_pandas_object(frames[name], index=False)
            leaked += int(h.isin(seen).sum())
            seen |= hashes[name]
    return leaked
