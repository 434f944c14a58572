"""Data sources: bundled tables, CSV files (with a text column), image folders, a user's Python
factory and torchvision's datasets, each split and preprocessed into a Dataset."""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from ..config import BUILTIN_SOURCES, Config
from ..errors import UserError
from .dataset import SPLITS, Dataset
from .tabular import MISSING_TEXT, BadValue, Preprocessor, count_leakage, infer_task, separator_hint, split_indices


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
    raise UserError(f"its kind is {kind!r}; this traintop reads tabular, text, image, tensor")

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


UNPACKED_LIMIT = 1 << 30  # a compressed CSV that unpacks to more is refused, not unpacked into memory


PACKED = (".gz", ".bz2", ".xz", ".zip")  # the compressed CSVs pandas unpacks by their suffix


def _unpacked(path: Path) -> IO[bytes] | None:
    """The bytes of a CSV file as pandas reads them: unpacked by its suffix (PACKED); None for a
    zip of other than one file."""
    import bz2
    import gzip
    import lzma
    import zipfile

    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(path.suffix.lower())
    if opener is not None:
        return opener(path, "rb")
    if path.suffix.lower() == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return zipfile.ZipFile(path).open(names[0]) if len(names) == 1 else None
    return open(path, "rb")


BINARY_KINDS = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"%PDF", "a PDF document"),
                (b"PK\x03\x04", "a zip archive, as .xlsx spreadsheets are: export the sheet as CSV"),
                (b"\xd0\xcf\x11\xe0", "an old Excel or Office document: export the sheet as CSV"),
                (b"PAR1", "a Parquet file")]


def _check_text(path: Path, label: str) -> None:
    """A file with NUL bytes in its first 8 KB (unpacked) is no CSV but an image, a spreadsheet, a
    model...: named before a CSV reader makes a tokenizing error of it. UTF-16 text is left to
    `_not_utf8`, which names it."""
    head = b""
    with contextlib.suppress(OSError, EOFError, ValueError), _unpacked(path) or io.BytesIO() as stream:
        head = stream.read(8192)
    if b"\0" not in head or head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return
    kind = next((k for magic, k in BINARY_KINDS if head.startswith(magic)), "")
    raise UserError(f"{label}: {path} is not a text file{f' (it is {kind})' if kind else ''}; give a CSV file: "
                    "comma-separated text")


def _not_utf8(path: Path, label: str) -> UserError:
    """What a CSV that is not UTF-8 text is told: the line and byte where it stops being UTF-8, what
    that byte is in the usual 8-bit encodings, and how to convert it."""
    packed = path.suffix.lower() in (*PACKED, ".tar", ".tgz", ".zst")

    def fix(encoding: str) -> str:
        return ("unpack it and save it as UTF-8" if packed
                else f"save it as UTF-8 (e.g. iconv -f {encoding} -t utf-8 {path.name} > utf8.csv)")

    def bad(e: UnicodeDecodeError, line: int) -> UserError:
        line += e.object.count(b"\n", 0, e.start)
        byte = e.object[e.start]
        char = bytes([byte]).decode("cp1252", "replace")
        if 0x80 <= byte < 0xA0 and char != "\ufffd":  # Windows' own: curly quotes, the euro, dashes
            return UserError(f"{label}: {path} is not UTF-8 text: line {line} holds the byte 0x{byte:02x} "
                             f"({char!r} in Windows-1252); {fix('cp1252')}")
        named = f" ({char!r} in Latin-1 or Windows-1252)" if byte >= 0xA0 else ""
        return UserError(f"{label}: {path} is not UTF-8 text: line {line} holds the byte 0x{byte:02x}{named}; "
                         f"{fix('latin1')}")

    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    line = 1
    with contextlib.suppress(OSError, EOFError, ValueError), _unpacked(path) or io.BytesIO() as stream:
        first = True
        while chunk := stream.read(1 << 20):
            if first and chunk[:2] in (b"\xff\xfe", b"\xfe\xff"):
                return UserError(f"{label}: {path} is UTF-16 text; {fix('utf-16')}")
            first = False
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return bad(e, line)
            line += chunk.count(b"\n")
        try:
            decoder.decode(b"", final=True)  # a sequence the file ends in the middle of
        except UnicodeDecodeError as e:
            return bad(e, line)
    return UserError(f"{label}: {path} is not UTF-8 text; {fix('latin1')}")


def _check_unpacked_size(path: Path, label: str) -> None:
    """A compressed CSV (.gz, .bz2, .xz, .zip), as pandas would unpack it, must unpack to at most
    UNPACKED_LIMIT bytes: a few kilobytes can hold gigabytes. Counted by streaming, never held."""
    import lzma
    import zipfile

    if path.suffix.lower() not in PACKED:
        return
    total = 0
    try:
        stream = _unpacked(path)
        if stream is None:
            return  # pandas refuses it itself
        with stream:
            while chunk := stream.read(1 << 20):
                total += len(chunk)
                if total > UNPACKED_LIMIT:
                    raise UserError(f"{label}: {path} unpacks to more than {UNPACKED_LIMIT >> 20:,} MiB of CSV; "
                                    "unpack it yourself and give the CSV file if so much is meant")
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile) as e:
        raise UserError(f"{label}: {path} could not be unpacked: {e}") from None


def read_csv_file(path: Path, label: str, nan_is_missing: bool = True) -> pd.DataFrame:
    """A CSV file as a table; a missing, empty or unreadable file, or one that names a column
    twice, is a UserError that names it as `label` (the config key, or the command's argument).

    `nan_is_missing=False` keeps "nan" and "NaN" as text (raw inputs to predict refuse them);
    blanks, NA, null and the like are missing either way.
    """
    if not path.exists():
        raise UserError(f"{label}: CSV file {path} does not exist")
    if not path.is_file():
        raise UserError(f"{label}: {path} is not a file")
    _check_unpacked_size(path, label)
    _check_text(path, label)
    missing = {} if nan_is_missing else {"keep_default_na": False, "na_values": sorted(MISSING_TEXT)}
    try:
        # pandas renames a repeated column "a" to "a.1": only the header itself tells
        header = [str(h) for h in pd.read_csv(path, header=None, nrows=1, dtype=str,
                                              keep_default_na=False).iloc[0]]
        with warnings.catch_warnings():
            # Rows with more fields than the header: pandas would take the first column(s) as an index
            # and shift every value left; index_col=False makes it say so instead, here an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, index_col=False, **missing)
    except pd.errors.EmptyDataError:
        raise UserError(f"{label}: CSV file {path} is empty") from None
    except pd.errors.ParserWarning:
        raise UserError(f"{label}: {path} has rows with more fields than its header names columns "
                        f"({len(header)}); give every row one field per column of the header") from None
    except UnicodeDecodeError:
        raise _not_utf8(path, label) from None
    except (pd.errors.ParserError, ValueError) as e:
        raise UserError(f"{label}: {path} could not be read as CSV: {e}") from None
    twice = sorted({h for h in header if h.strip() and header.count(h) > 1})
    if twice:
        raise UserError(f"{label}: {path} names column(s) {', '.join(repr(h) for h in twice)} more than once; "
                        "give each column its own name")
    if len(header) > 1 and frame[frame.columns[-1]].isna().any():
        _refuse_short_rows(path, label, len(header))
    return frame


def _refuse_short_rows(path: Path, label: str, columns: int) -> None:
    """A row with fewer fields than the header reads as missing values in its last columns, as
    an empty last field does: only the text tells them apart (read only when the last column has
    a missing value)."""
    stream = _unpacked(path)
    if stream is None:
        return
    with io.TextIOWrapper(stream, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        for row in rows:
            if 0 < len(row) < columns:
                raise UserError(f"{label}: {path}, line {rows.line_num} has {len(row)} field(s) where the header "
                                f"names {columns} columns; give every row one field per column (an empty field "
                                "for a missing value)")


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
        data = load_image_folder(cfg)
    elif d.source == "python":
        from .python import load_python_data
        data = load_python_data(cfg)
    elif d.source == "torchvision":
        from .vision import load_torchvision
        data = load_torchvision(cfg)
    else:
        data = _load_table(cfg)
    check_finite(data, {"python": "data.factory", "csv": "data.path"}.get(d.source, f"data.source {d.source!r}"))
    return data


def check_finite(data: Dataset, label: str) -> None:
    """Every input and target held in memory is a finite number: bad data is named as bad data
    here, not met later as a non-finite loss."""
    for split in SPLITS:
        for what, arrays in (("inputs", data.x), ("targets", data.y)):
            a = arrays[split]
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f" or not len(a):
                continue  # streamed images (uint8 on disk), integer class indices, an empty test split
            bad = ~np.isfinite(a.reshape(len(a), -1)).all(axis=1) if a.ndim > 1 else ~np.isfinite(a)
            if bad.any():
                first = int(np.flatnonzero(bad)[0])
                raise UserError(f"{label}: {int(bad.sum())} {split} {what} hold NaN or infinite values "
                                f"(the first is item {first}); every input and target must be a finite number")


def _load_table(cfg: Config) -> Dataset:
    """A bundled table or a CSV file, split and preprocessed."""
    d = cfg.data
    warnings: list[tuple[str, str]] = []
    extra: dict[str, Any] = {}
    lines = None
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
        features, target, kinds, task, class_names, warnings, lines, columns = _csv_table(cfg)
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
    split = "train"
    try:
        pre = Preprocessor.fit(raw["train"], raw_target["train"], task, str(target_name), kinds,
                               class_names or [])
        if d.source == "csv" and d.text:
            from .text import TextPreprocessor
            pre = TextPreprocessor.fit(d.text, raw["train"][d.text], pre, d.min_freq, d.max_vocab)
            if not pre.vocab and not pre.table.columns:  # nothing at all to learn from
                raise UserError(f"data.text: column {d.text!r} has no word seen at least data.min_freq = "
                                f"{d.min_freq} time(s) in the {len(raw['train'])} training rows; it is empty, "
                                "or set data.min_freq lower")
            extra["vocab_size"] = pre.vocab_size
            extra["max_tokens"] = pre.max_tokens
        x, y = {}, {}
        for split in SPLITS:
            x[split] = pre.transform(raw[split])
            y[split] = pre.encode_target(raw_target[split])
    except BadValue as e:  # a value of one split: named by its line in the file
        if lines is None:
            raise UserError(f"data.source {d.source!r}: {e.at(f'{split} row {e.row}')}") from None
        line = int(lines[parts[split][e.row]])
        raise UserError(f"data.path: {e.at(f'{cfg.resolve_path(d.path)}, line {line}')}") from None
    except UserError as e:
        if d.source == "csv" and str(e).startswith("column "):
            raise UserError(f"data.path: {cfg.resolve_path(d.path)}: {e}") from None
        raise
    if d.source == "csv":
        extra["columns"] = _describe_columns(columns, pre)
    leaked = count_leakage(raw)
    if leaked:
        warnings.append(("leakage", f"{leaked} validation/test rows repeat the features of a row in an "
                                    "earlier split; their scores may be optimistic"))
    extra["leakage"] = leaked
    return Dataset(task=task, preprocess=pre, x=x, y=y, raw=raw, raw_target=raw_target,
                   warnings=warnings, extra=extra)


def _natural(key: str):
    """Sort numbers as numbers and words as words: 2 before 10 (and 001 before 01 before 1)."""
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _csv_table(cfg: Config):
    """The CSV's features and target, each feature's kind, the task, warnings, the file line of
    each row, and what became of every column (for `check`)."""
    from difflib import get_close_matches

    from .tabular import category_key, id_like, is_categorical

    d = cfg.data
    frame = _read_csv(cfg)
    path = cfg.resolve_path(d.path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns  # a header of numbers is read as text, as a config names it
    broken = [c for c in columns if "\n" in c or "\r" in c]
    if broken:  # printed in one line of a log or a table, it would break it (or forge another)
        raise UserError(f"data.path: {path} has a column name with a line break in it ({broken[0]!r}); give each "
                        "column a name on one line")
    if d.target not in frame.columns:
        close = get_close_matches(d.target, columns, n=1)
        hint = f' (did you mean "{close[0]}"?)' if close else ""
        hint = separator_hint(columns) or hint
        raise UserError(f"data.target: column {d.target!r} is not in {path}{hint}; "
                        f"columns: {', '.join(columns)}")
    chosen = list(d.features)
    names = chosen or [c for c in columns if c != d.target]
    unknown = [c for c in names if c not in frame.columns]
    if unknown:
        raise UserError(f"data.features: column(s) {', '.join(unknown)} not in {path}; "
                        f"columns: {', '.join(columns)}")
    if d.target in names:
        raise UserError(f"data.features includes the target column {d.target!r}")
    twice = sorted({c for c in chosen if chosen.count(c) > 1})
    if twice:
        raise UserError(f"data.features names {', '.join(map(repr, twice))} more than once; name each column once")
    if d.text:
        if d.text not in frame.columns:
            close = get_close_matches(d.text, columns, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            raise UserError(f"data.text: column {d.text!r} is not in {path}{hint}; columns: {', '.join(columns)}")
        if d.text == d.target:
            raise UserError(f"data.text: {d.text!r} is the target column; name the column of free text")
        names = [c for c in names if c != d.text]
    lines = np.arange(len(frame)) + 2  # the header is line 1
    warnings = []
    missing_target = frame[d.target].map(category_key).isna()  # blank text ("  ") too: there is no label
    if missing_target.all():
        raise UserError(f"data.target: column {d.target!r} in {path} has no values")
    if missing_target.any():
        warnings.append(("data", f"{int(missing_target.sum())} rows without a {d.target!r} value were dropped"))
        frame = frame[~missing_target].reset_index(drop=True)
        lines = lines[~missing_target.to_numpy()]
    for c in names:
        frame[c] = _numbers_with_typos(frame[c], c, lines, warnings)
    left_out: dict[str, str] = {c: "not in data.features" for c in columns
                                if chosen and c not in chosen and c not in (d.target, d.text)}
    empty = [c for c in names if frame[c].isna().all()]
    if empty:
        warnings.append(("data", f"column(s) {', '.join(empty)} have no values and were left out"))
        names = [c for c in names if c not in empty]
        left_out.update({c: "no values" for c in empty})
    for c in names:
        why = None if c in chosen else id_like(frame[c])
        if why:  # named in data.features, it is the user's to keep
            distinct = why.split(", ", 1)[1]
            warnings.append(("data", f"column {c!r} looks like an ID ({distinct}): nearly every value differs, "
                                     "so its categories would only tell rows apart; it was left out (name it "
                                     "in data.features to use it anyway)"))
            left_out[c] = why
    names = [c for c in names if c not in left_out]
    if not names and not d.text:
        raise UserError(f"data.features: {path} has no usable feature columns besides {d.target!r}"
                        + (f" (left out: {', '.join(f'{c} ({why})' for c, why in left_out.items())})"
                           if left_out else ""))
    for c in names + [d.target]:  # numbers, even few distinct ones read as categories
        if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]):
            _check_numbers(frame[c], ("data.target: " if c == d.target else "") + f"column {c!r}", path, lines)
    kinds = {c: "categorical" if is_categorical(frame[c]) else "numeric" for c in names}
    target = frame[d.target]
    task = d.task if d.task != "auto" else infer_task(target)
    if task == "classification" and pd.api.types.is_numeric_dtype(target) and not pd.api.types.is_bool_dtype(target):
        # Zero-padded codes (001, 02134) are names, not numbers: read as numbers, 01 and 1 would be one class.
        texts = pd.read_csv(path, usecols=[d.target], dtype=str, keep_default_na=False, index_col=False)[d.target]
        texts = texts[~missing_target.to_numpy()].reset_index(drop=True).str.strip()
        if texts.str.match(r"[+-]?0\d").any():
            target = texts
    if task == "classification":
        broken_at = np.flatnonzero(target.map(category_key).str.contains("[\r\n]", na=False).to_numpy())
        if len(broken_at):
            raise UserError(f"data.target: column {d.target!r} holds a class with a line break in it "
                            f"({target.iloc[broken_at[0]]!r} at line {int(lines[broken_at[0]])}); give each class "
                            "a name on one line")
    if task == "regression":
        numeric = pd.to_numeric(target, errors="coerce")
        if numeric.isna().any():
            bad = target[numeric.isna()].iloc[0]
            raise UserError(f"data.target: column {d.target!r} is not numeric (e.g. {bad!r}); regression "
                            'needs numbers; set data.task = "classification" to predict categories')
        target = numeric.astype(float)
        _check_numbers(target, f"data.target: column {d.target!r}", path, lines)  # "inf" read as text
    described = [{"name": c, "missing": int(frame[c].isna().sum()),
                  **({"type": "left out", "encoding": f"left out: {left_out[c]}"} if c in left_out else {}),
                  **({"distinct": int(frame[c].map(category_key).nunique())} if kinds.get(c) == "categorical"
                     else {})}
                 for c in columns if c != d.target]
    described.append({"name": d.target, "missing": int(missing_target.sum()), "type": "target"})
    return (frame[names + ([d.text] if d.text else [])], target, kinds, task, None, warnings, lines,
            described)


MOSTLY_NUMBERS = 0.95  # a text column whose values are at least this share numbers is a column of numbers


def _numbers_with_typos(column: pd.Series, name: str, lines: np.ndarray, warnings: list) -> pd.Series:
    """A column of numbers with a few that are not ("?", "n/a.", "12kg") as numbers, those few
    missing, with a warning naming them; any other column as it is. Read as text, it would become
    a category per distinct number (or be left out as ID-like), which no one meant."""
    from .tabular import category_key

    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    present = column.map(category_key).notna()
    typos = present & numbers.isna()
    if not typos.any() or typos.sum() > (1 - MOSTLY_NUMBERS) * present.sum():
        return column
    first = int(np.flatnonzero(typos.to_numpy())[0])
    warnings.append(("data", f"column {name!r} holds numbers, but {int(typos.sum())} value(s) are not "
                             f"({column.iloc[first]!r} at line {int(lines[first])}); they were read as missing"))
    return numbers.where(~typos).astype(float)


def _check_numbers(values: pd.Series, what: str, path: Path, lines: np.ndarray) -> None:
    """A numeric column holds no infinity (written as inf, or a number past a float, like 1e400)."""
    bad = np.flatnonzero(np.isinf(values.to_numpy(dtype=float)))
    if len(bad):
        raise UserError(f"data.path: {path}, line {int(lines[bad[0]])}: {what} holds {float(values.iloc[bad[0]])!r} "
                        f"({len(bad)} such value(s)); every number must be finite: fix the value, or leave "
                        "it blank for a missing one")


def _describe_columns(described: list[dict[str, Any]], pre) -> list[dict[str, Any]]:
    """Each CSV column's type, missing count and encoding, as `traintop check` lists them."""
    table = getattr(pre, "table", pre)
    fitted = {c["name"]: c for c in table.columns}
    text = getattr(pre, "text", None)
    out = []
    for col in described:
        col = dict(col)
        name = col["name"]
        if name in fitted:
            c = fitted[name]
            col["type"] = c["kind"]
            if c["kind"] == "numeric":
                col["encoding"] = "scaled" + (f", missing filled with {c['fill']:.4g}" if col["missing"] else "")
            else:
                n, distinct = len(c["categories"]), col.pop("distinct", 0)
                col["encoding"] = (f"one-hot, {n} most frequent of {distinct} categories" if distinct > n
                                   else f"one-hot, {n} categor{'y' if n == 1 else 'ies'}")
        elif name == text:
            col["type"], col["encoding"] = "text", f"words, vocabulary of {pre.vocab_size - 2}"
        elif col.get("type") == "target":
            col["encoding"] = (f"{len(table.classes)} classes" if table.task == "classification"
                               else "scaled (regression)")
        col.setdefault("type", "left out")
        col.setdefault("encoding", "left out")
        out.append(col)
    return out
