"""Image folders: one sub-folder per class, decoded with Pillow, normalized on the training split.

Small folders are decoded once into memory. Folders whose decoded tensors would pass
`data.memory_limit_mb` stream through a DataLoader: workers decode each image once into a
shared on-disk cache (a memory-mapped uint8 array), so later epochs only read and normalize.
Both paths decode, split and normalize identically, so the same seed gives the same batches.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..errors import UserError
from .dataset import SPLITS, Dataset, leakage_from_hashes, small_pixels
from .feed import flip_and_crop
from .tabular import split_indices

FIT_MAX = 4096  # mean and std are fitted on at most this many training images (a seeded sample)
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
NAMED_BAD = 5  # unreadable files named in the warning


class ImageTooLarge(ValueError):
    """An image with more pixels than Pillow's decompression-bomb limit (Image.MAX_IMAGE_PIXELS)."""


def open_image(source: Any):
    """A PIL image opened (not yet decoded) from a path or bytes; ImageTooLarge past Pillow's
    decompression-bomb limit, which a small file of a huge blank image can pass."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as an error
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(str(e)) from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        image.close()
        raise ImageTooLarge(f"{image.width}x{image.height} pixels, over the limit of {limit:,} pixels that "
                            "guards against decompression bombs")
    return image


def decode(source: Any, channels: int, size: int) -> np.ndarray:
    """One image (a path, bytes or a PIL image) as uint8 (channels, size, size): first frame, resized."""
    from PIL import Image

    if isinstance(source, Image.Image):
        image = source
    else:
        image = open_image(source)
    try:
        image.seek(0)  # a GIF's first frame
        image = _eight_bit(image)
        image = image.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    finally:
        if image is not source:
            image.close()
    return array[None] if channels == 1 else array.transpose(2, 0, 1).copy()


def _eight_bit(image):
    """16-bit images scaled to 8 bits, and float images of 0-1 to 0-255: Pillow's convert would clip
    every value past 255, which turns a 16-bit image white. A 16-bit PNG opens as I;16 (as I before
    Pillow 10.3, and a 16-bit PGM as I still): an I image with values past 255 is taken as 16-bit."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "I" and values.max(initial=0) <= 255:
            return image  # 8-bit values in a wider mode: convert keeps them
        return Image.fromarray((values.clip(0, 65535) / 257).round().astype(np.uint8))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if np.isfinite(values).all() and 0 <= values.min() and values.max() <= 1:
            return Image.fromarray((values * 255).round().astype(np.uint8))
    return image


@dataclass
class ImagePreprocessor:
    """What was fitted on the training images: size, channels, per-channel mean and std, classes."""

    classes: list[str]
    channels: int
    image_size: int
    mean: list[float]
    std: list[float]

    kind = "image"
    task = "classification"
    target = "class"
    vocab_size = 0
    features = ["path"]
    target_mean, target_std = 0.0, 1.0

    @property
    def input_shape(self) -> list[int]:
        return [self.channels, self.image_size, self.image_size]

    def feature_types(self) -> dict[str, str]:
        return {"path": "image"}

    def normalize(self, u8: np.ndarray) -> np.ndarray:
        """uint8 images (..., C, H, W) to the model's float32 inputs."""
        mean = np.asarray(self.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return ((u8.astype(np.float32) / np.float32(255)) - mean) / std

    def transform(self, rows) -> np.ndarray:
        """Raw images to model inputs (N, C, H, W): a DataFrame or records with a "path", or a
        list of paths or PIL images."""
        if isinstance(rows, pd.DataFrame):
            if "path" not in rows.columns:
                raise UserError('an image input needs a "path": the file of the image to predict')
            rows = list(rows["path"])
        images = []
        for i, item in enumerate(rows):
            if isinstance(item, dict):
                item = item.get("path")
            if item is None or (isinstance(item, float) and np.isnan(item)):
                raise UserError(f'image input {i} has no "path"')
            try:
                images.append(decode(item, self.channels, self.image_size))
            except FileNotFoundError:
                raise UserError(f"image file {item} does not exist") from None
            except ImageTooLarge as e:
                raise UserError(f"image file {item} is refused: {e}; shrink it before predicting") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise UserError(f"image file {item} could not be read as an image: {e}") from None
        if not images:
            return np.zeros((0, *self.input_shape), dtype=np.float32)
        return self.normalize(np.stack(images))

    def encode_target(self, y: pd.Series) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[str(v)] for v in y], dtype=np.int64)

    def decode_value(self, scaled: np.ndarray) -> np.ndarray:
        return scaled

    def preview(self, x: np.ndarray) -> dict[str, Any]:
        """What the dashboard draws for one model input (C, H, W): "pixels", grayscale rows of 0-255
        at the model's image size (at most 48 a side)."""
        mean = np.asarray(self.mean)[:, None, None]
        std = np.asarray(self.std)[:, None, None]
        u = np.clip((x * std + mean) * 255, 0, 255).mean(axis=0)
        return {"pixels": small_pixels(u.round().astype(np.uint8))}

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "version": 1, "task": self.task, "target": self.target,
                "classes": self.classes, "channels": self.channels, "image_size": self.image_size,
                "mean": self.mean, "std": self.std, "input_shape": self.input_shape}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ImagePreprocessor:
        return cls(classes=obj["classes"], channels=obj["channels"], image_size=obj["image_size"],
                   mean=obj["mean"], std=obj["std"])


def channel_stats(u8: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images (N, C, H, W), on the 0-1 scale."""
    x = u8.astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    return [float(m) for m in mean], [float(s) if s > 1e-6 else 1.0 for s in std]


def fit_sample(train: np.ndarray, seed: int) -> np.ndarray:
    """The training images mean and std are fitted on: all of them, or a seeded sample of FIT_MAX."""
    if len(train) <= FIT_MAX:
        return train
    return np.sort(np.random.default_rng(seed).choice(train, FIT_MAX, replace=False))


# -- reading a folder --------------------------------------------------------------------------------

@dataclass
class _Scan:
    classes: list[str]
    paths: list[Path]
    labels: list[int]
    hashes: list[str]
    modes: list[str]
    bad: list[tuple[Path, str]]
    notes: list[str] = field(default_factory=list)  # a layout that may not be what was meant


def _layout_notes(folder: Path, class_dirs: list[Path]) -> list[str]:
    """Two layouts that train, but rarely as meant: split folders taken for classes (train/ and
    val/, each holding cats/ and dogs/), and images beside the class folders, which no class holds."""
    notes = []
    inner = []
    for d in class_dirs:
        entries = [p for p in d.iterdir() if not p.name.startswith(".")]
        inner.append(None if any(p.is_file() for p in entries) else frozenset(p.name for p in entries if p.is_dir()))
    if all(inner) and len(set(inner)) == 1 and len(inner[0]) >= 2:
        shown = ", ".join(sorted(inner[0])[:6])
        notes.append(f"the classes are the sub-folders of {folder} ({', '.join(d.name for d in class_dirs[:6])}), "
                     f"and each holds the same folders ({shown}): if those are the classes, set data.path to "
                     f"one of {folder}'s sub-folders")
    loose = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        notes.append(f"{len(loose)} file(s) directly in {folder} ({', '.join(p.name for p in loose[:3])}"
                     f"{', ...' if len(loose) > 3 else ''}) are in no class folder and are not used")
    return notes


def _scan(folder: Path) -> _Scan:
    """Every file under each class folder: readable images kept, the rest listed as bad."""
    from PIL import UnidentifiedImageError

    if not folder.exists():
        raise UserError(f"data.path: image folder {folder} does not exist")
    if not folder.is_dir():
        raise UserError(f"data.path: {folder} is not a folder; data.source = \"image_folder\" needs a folder "
                        "with one sub-folder of images per class")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise UserError(f"data.path: {folder} has no sub-folders; put the images of each class in a "
                        "sub-folder named after the class (e.g. cats/, dogs/)")
    scan = _Scan([], [], [], [], [], [], _layout_notes(folder, class_dirs))
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        kept = 0
        for path in files:
            try:
                data = path.read_bytes()
                with open_image(data) as image:
                    mode = image.mode
                    image.verify()  # a PNG or WebP cut short fails here, cheaply, without decoding it
            except ImageTooLarge as e:
                scan.bad.append((path, str(e).split(",")[0]))
                continue
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
                scan.bad.append((path, type(e).__name__))
                continue
            scan.paths.append(path)
            scan.labels.append(label)
            scan.hashes.append(hashlib.blake2b(data, digest_size=16).hexdigest())
            scan.modes.append(mode)
            kept += 1
        if not kept:
            what = "is empty" if not files else f"has no readable images ({len(files)} other file(s))"
            raise UserError(f"data.path: class folder {class_dir} {what}; every class needs images")
        scan.classes.append(class_dir.name)
    if len(scan.classes) < 2:
        raise UserError(f"data.path: {folder} has one class folder ({scan.classes[0]}); "
                        "classification needs at least two")
    return scan


def unreadable(path: Path, channels: int, size: int) -> str | None:
    """Why an image file cannot be decoded, in the words a skipped file is named with (its size
    past Pillow's limit, or the error's kind); None when it can."""
    try:
        decode(path, channels, size)
    except ImageTooLarge as e:
        return str(e).split(",")[0]
    except (OSError, ValueError, SyntaxError) as e:
        return type(e).__name__
    return None


NOT_REGULAR = "not a regular file: a pipe, a device or a broken link"
NOT_FINITE = "the model's answer is not a finite number"


def bad_files_warning(bad: list[tuple[Path, str]], folder: Path) -> str:
    from PIL import Image

    def named(path: Path, why: str) -> str:
        return str(path.relative_to(folder)) + (f" ({why})" if why.endswith(" pixels") or why in (NOT_REGULAR, NOT_FINITE)
                                                else "")

    names = ", ".join(named(p, why) for p, why in bad[:NAMED_BAD])
    more = f" and {len(bad) - NAMED_BAD} more" if len(bad) > NAMED_BAD else ""
    large = sum(why.endswith(" pixels") for _, why in bad)
    limit = (f"; {large} over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} pixels (a guard against "
             "decompression bombs)" if large else "")
    return f"skipped {len(bad)} unreadable, non-image or too large file(s) in {folder}: {names}{more}{limit}"


def load_image_folder(cfg: Config) -> Dataset:
    """An image folder, split and normalized; in memory, or streamed when over the memory limit."""
    d = cfg.data
    if d.task == "regression":
        raise UserError('data.task = "regression" does not fit data.source = "image_folder", whose '
                        "labels are its class folders; use \"auto\" or \"classification\"")
    if d.channels not in (0, 1, 3):
        raise UserError(f"data.channels is {d.channels}; allowed: 0 (from the files), 1 (grayscale), 3 (RGB)")
    folder = cfg.resolve_path(d.path)
    scan = _scan(folder)
    channels = d.channels or (1 if all(m in GRAY_MODES for m in scan.modes) else 3)
    size = d.image_size
    paths, labels, hashes = scan.paths, scan.labels, scan.hashes
    bad = list(scan.bad)
    streaming = len(paths) * channels * size * size * 4 > d.memory_limit_mb * 2 ** 20
    u8 = None
    if not streaming:
        decoded, keep = [], []
        for i, path in enumerate(paths):
            try:
                decoded.append(decode(path, channels, size))
                keep.append(i)
            except (OSError, ValueError, SyntaxError) as e:  # a truncated file that opened
                bad.append((path, type(e).__name__))
        decoded_labels = {labels[i] for i in keep}
        for label, name in enumerate(scan.classes):  # a class whose every file failed to decode
            if label not in decoded_labels:
                lost = sum(1 for i in range(len(paths)) if labels[i] == label)
                raise UserError(f"data.path: class folder {folder / name} has no readable images ({lost} file(s) "
                                "that open but cannot be decoded, cut short say); every class needs images")
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
        hashes = [hashes[i] for i in keep]
        u8 = np.stack(decoded)
    label_array = np.array(labels, dtype=np.int64)
    parts = dict(zip(SPLITS, split_indices(len(paths), d.split, cfg.run.seed, label_array)))
    cache = None if u8 is not None else ImageCache(len(paths), channels, size)
    fit = fit_sample(parts["train"], cfg.run.seed)
    if u8 is not None:
        mean, std = channel_stats(u8[fit])
    else:
        mean, std = channel_stats(np.stack([cache.get(i, paths[i]) for i in fit]))
    pre = ImagePreprocessor(classes=scan.classes, channels=channels, image_size=size, mean=mean, std=std)
    x: dict[str, Any] = {}
    for split, idx in parts.items():
        if u8 is not None:
            x[split] = pre.normalize(u8[idx])
        else:
            x[split] = StreamedImages(pre, [paths[i] for i in idx], label_array[idx], cache, idx)
    warnings = [("data", note) for note in scan.notes] + ([("data", bad_files_warning(bad, folder))] if bad else [])
    leaked = leakage_from_hashes({s: [hashes[i] for i in idx] for s, idx in parts.items()})
    if leaked:
        warnings.append(("leakage", f"{leaked} validation/test images are byte-for-byte copies of an image "
                                    "in an earlier split; their scores may be optimistic"))
    said = [0]

    def undecodable_warnings() -> list[tuple[str, str]]:
        """The files found undecodable since the last call, as one data warning naming them all."""
        found = [] if cache is None else cache.undecodable()
        if len(found) <= said[0]:
            return []
        said[0] = len(found)
        names = ", ".join(str(paths[i].relative_to(folder)) for i in found[:NAMED_BAD])
        more = f" and {len(found) - NAMED_BAD} more" if len(found) > NAMED_BAD else ""
        return [("data", f"{len(found)} image file(s) in {folder} could not be decoded when read (cut short, "
                         f"say) and stand in as black images: {names}{more}; remove or replace them")]

    return Dataset(
        task="classification", preprocess=pre, x=x,
        y={s: label_array[idx] for s, idx in parts.items()},
        raw={s: pd.DataFrame({"path": [str(paths[i]) for i in idx]}) for s, idx in parts.items()},
        raw_target={s: pd.Series([scan.classes[labels[i]] for i in idx], name="class", dtype=object)
                    for s, idx in parts.items()},
        warnings=warnings, late_warnings=undecodable_warnings, streaming=streaming,
        augment=flip_and_crop if d.augment else None,
        extra={"image_size": size, "channels": channels, "leakage": leaked, "skipped_files": len(bad)})


# -- the streaming path -------------------------------------------------------------------------------

class ImageCache:
    """Decoded uint8 images in a memory-mapped file that every DataLoader worker shares.

    Each image is decoded once, by whichever process asks for it first; a flag per image says
    it is there (1), or that its file could not be decoded (2: a black image stands in). The file
    lives in a temporary folder removed when the engine exits.
    """

    def __init__(self, n: int, channels: int, size: int):
        self.folder = tempfile.mkdtemp(prefix="traintop-images-")
        atexit.register(_remove_if_owner, self.folder, os.getpid())
        self.shape = (n, channels, size, size)
        self.channels, self.size = channels, size
        np.memmap(self._path("images"), np.uint8, "w+", shape=self.shape).flush()
        np.memmap(self._path("ready"), np.uint8, "w+", shape=(n,)).flush()
        self._images = self._ready = None

    def _path(self, name: str) -> str:
        return os.path.join(self.folder, name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_images"] = state["_ready"] = None  # each process maps the files itself
        return state

    def get(self, i: int, path: Path) -> np.ndarray:
        """Image i, decoded from `path` the first time any process asks for it."""
        if self._images is None:
            self._images = np.memmap(self._path("images"), np.uint8, "r+", shape=self.shape)
            self._ready = np.memmap(self._path("ready"), np.uint8, "r+", shape=(self.shape[0],))
        if not self._ready[i]:
            try:
                self._images[i] = decode(path, self.channels, self.size)
                self._ready[i] = 1
            except (OSError, ValueError, SyntaxError):  # cut short (a JPEG passes the scan), or gone bad since
                self._images[i] = 0
                self._ready[i] = 2
        return np.array(self._images[i])

    def undecodable(self) -> np.ndarray:
        """The indexes of the images whose files could not be decoded, in any process, so far."""
        ready = np.memmap(self._path("ready"), np.uint8, "r", shape=(self.shape[0],))
        return np.flatnonzero(ready == 2)


def _remove_if_owner(folder: str, pid: int) -> None:
    if os.getpid() == pid:  # forked DataLoader workers must not remove it
        shutil.rmtree(folder, ignore_errors=True)


class StreamedImages(torch.utils.data.Dataset):
    """One split of a large image folder: (normalized image, label) pairs through the shared cache."""

    def __init__(self, pre: ImagePreprocessor, paths: list[Path], labels: np.ndarray, cache: ImageCache,
                 cache_index: np.ndarray):
        self.pre, self.paths, self.labels = pre, paths, labels
        self.cache, self.cache_index = cache, cache_index

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        u8 = self.cache.get(int(self.cache_index[i]), self.paths[i])
        return torch.from_numpy(self.pre.normalize(u8)), int(self.labels[i])
