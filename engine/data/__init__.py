"""Data sources: bundled tables, CSV files (with a text column), image folders, a user's Python
factory and torchvision's datasets, each split and preprocessed into a Dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..config import BUILTIN_SOURCES, Config
from ..errors import UserError
from .dataset import SPLITS, Dataset
from .tabular import Preprocessor, count_leakage, infer_task, split_indices


def load_preprocessor(obj: dict[str, Any]):
    """The fitted preprocessing read back from preprocess.json, of whichever kind it is."""
    kind = obj.get("kind", "tabular")  # files written before "kind" existed are tables
    if kind == "tabular":
        return Preprocessor.from_json(obj)
    if kind == "text":
        from .text import TextPreprocessor
        return TextPreprocessor.from_json(obj)
    if kind == "image":
        from .images import ImagePreprocessor
        return ImagePreprocessor.from_json(obj)
    if kind == "tensor":
        from .python import TensorPreprocessor
        return TensorPreprocessor.from_json(obj)
    raise UserError(f"preprocess.json has kind {kind!r}; this traintop reads tabular, text, image, tensor")

def _builtin(source: str, seed: int) -> tuple[pd.DataFrame, pd.Series, list[str] | None, dict]:
    """A bundled dataset (scikit-learn's own copies, no download) as features, target, class names."""
    import sklearn.datasets as skd

    if source == "moons":
        x, y = skd.make_moons(n_samples=1000, noise=0.2, random_state=seed)
        return pd.DataFrame(x, columns=["x1", "x2"]), pd.Series(y, name="class"), ["0", "1"], {}
    loader = {"digits": skd.load_digits, "iris": skd.load_iris, "wine": skd.load_wine,
              "breast_cancer": skd.load_breast_cancer, "diabetes": skd.load_diabetes}[source]
    bunch = loader(as_frame=True)
    names = [str(n) for n in bunch.target_names] if source != "diabetes" else None
    extra = {"image_shape": [8, 8]} if source == "digits" else {}
    return bunch.data, bunch.target.rename("target"), names, extra


def read_csv_file(path: Path, label: str) -> pd.DataFrame:
    """A CSV file as a table; a missing, empty or unreadable file is a UserError that names it as
    `label` (the config key, or the command's argument)."""
    if not path.exists():
        raise UserError(f"{label}: CSV file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{label}: {path} is not a file")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise UserError(f"{label}: CSV file {path} is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise UserError(f"{label}: {path} could not be read as CSV: {e}") from None


def _read_csv(cfg: Config) -> pd.DataFrame:
    path = cfg.resolve_path(cfg.data.path)
    frame = read_csv_file(path, "data.path")
    if frame.empty:
        raise UserError(f"data.path: CSV file {path} has a header but no rows")
    return frame


def load_data(cfg: Config) -> Dataset:
    """Load, split and preprocess the configured data."""
    d = cfg.data
    if d.source == "image_folder":
        from .images import load_image_folder
        return load_image_folder(cfg)
    if d.source == "python":
        from .python import load_python_data
        return load_python_data(cfg)
    if d.source == "torchvision":
        from .vision import load_torchvision
        return load_torchvision(cfg)
    warnings: list[tuple[str, str]] = []
    extra: dict[str, Any] = {}
    if d.source in BUILTIN_SOURCES:
        features, target, class_names, extra = _builtin(d.source, cfg.run.seed)
        kinds = {c: "numeric" for c in features.columns}
        task = "classification" if class_names is not None else "regression"
        if d.task not in ("auto", task):
            raise UserError(f"data.task = {d.task!r} does not fit data.source = {d.source!r}, "
                            f"which is a {task} dataset")
        target_name = target.name
        if class_names is not None:
            target = target.map(lambda i: class_names[int(i)])
    elif d.source == "csv":
        features, target, kinds, task, class_names, warnings = _csv_table(cfg)
        target_name = d.target
    else:
        raise UserError(f"data.source = {d.source!r} is not available in this version of traintop")

    labels = None
    if task == "classification":
        from .tabular import category_key
        keys = target.map(category_key)
        if class_names is None:
            class_names = sorted(keys.unique(), key=_natural)
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.array([index[k] for k in keys])
        if len(class_names) < 2:
            raise UserError(f"data.target {target_name!r} has only one class ({class_names[0]!r}); "
                            "classification needs at least two")
    train, val, test = split_indices(len(features), d.split, cfg.run.seed, labels)
    parts = {"train": train, "val": val, "test": test}
    raw = {s: features.iloc[i].reset_index(drop=True) for s, i in parts.items()}
    raw_target = {s: target.iloc[i].reset_index(drop=True) for s, i in parts.items()}
    pre = Preprocessor.fit(raw["train"], raw_target["train"], task, str(target_name), kinds,
                           class_names or [])
    if d.source == "csv" and d.text:
        from .text import TextPreprocessor
        pre = TextPreprocessor.fit(d.text, raw["train"][d.text], pre, d.min_freq, d.max_vocab)
        extra["vocab_size"] = pre.vocab_size
        extra["max_tokens"] = pre.max_tokens
    x = {s: pre.transform(raw[s]) for s in SPLITS}
    y = {s: pre.encode_target(raw_target[s]) for s in SPLITS}
    leaked = count_leakage(raw)
    if leaked:
        warnings.append(("leakage", f"{leaked} validation/test rows repeat the features of a row in an "
                                    "earlier split; their scores may be optimistic"))
    extra["leakage"] = leaked
    return Dataset(task=task, preprocess=pre, x=x, y=y, raw=raw, raw_target=raw_target,
                   warnings=warnings, extra=extra)


def _natural(key: str):
    """Sort numbers as numbers and words as words: 2 before 10."""
    try:
        return (0, float(key), "")
    except ValueError:
        return (1, 0.0, key)


def _csv_table(cfg: Config):
    from difflib import get_close_matches

    from .tabular import is_categorical

    d = cfg.data
    frame = _read_csv(cfg)
    path = cfg.resolve_path(d.path)
    columns = [str(c) for c in frame.columns]
    if d.target not in frame.columns:
        close = get_close_matches(d.target, columns, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise UserError(f"data.target: column {d.target!r} is not in {path}{hint}; "
                        f"columns: {', '.join(columns)}")
    names = list(d.features) or [c for c in columns if c != d.target]
    unknown = [c for c in names if c not in frame.columns]
    if unknown:
        raise UserError(f"data.features: column(s) {', '.join(unknown)} not in {path}; "
                        f"columns: {', '.join(columns)}")
    if d.target in names:
        raise UserError(f"data.features includes the target column {d.target!r}")
    if d.text:
        if d.text not in frame.columns:
            close = get_close_matches(d.text, columns, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise UserError(f"data.text: column {d.text!r} is not in {path}{hint}; columns: {', '.join(columns)}")
        if d.text == d.target:
            raise UserError(f"data.text: {d.text!r} is the target column; name the column of free text")
        names = [c for c in names if c != d.text]
    warnings = []
    missing_target = frame[d.target].isna()
    if missing_target.all():
        raise UserError(f"data.target: column {d.target!r} in {path} has no values")
    if missing_target.any():
        warnings.append(("data", f"{int(missing_target.sum())} rows without a {d.target!r} value were dropped"))
        frame = frame[~missing_target].reset_index(drop=True)
    empty = [c for c in names if frame[c].isna().all()]
    if empty:
        warnings.append(("data", f"column(s) {', '.join(empty)} have no values and were left out"))
        names = [c for c in names if c not in empty]
    if not names and not d.text:
        raise UserError(f"data.features: {path} has no usable feature columns besides {d.target!r}")
    target = frame[d.target]
    task = d.task if d.task != "auto" else infer_task(target)
    if task == "regression":
        numeric = pd.to_numeric(target, errors="coerce")
        if numeric.isna().any():
            bad = target[numeric.isna()].iloc[0]
            raise UserError(f"data.target: column {d.target!r} is not numeric (e.g. {bad!r}); regression "
                            'needs numbers; set data.task = "classification" to predict categories')
        target = numeric.astype(float)
    kinds = {c: "categorical" if is_categorical(frame[c]) else "numeric" for c in names}
    return frame[names + ([d.text] if d.text else [])], target, kinds, task, None, warnings
