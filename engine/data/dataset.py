"""A prepared dataset: its splits, the fitted preprocessing, and what a user sees of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Prepared splits: model inputs `x`, encoded targets `y`, and the raw records they came from.

    `x[split]` is an array held in memory, or, when `streaming`, a torch Dataset of (input,
    target) pairs read through a DataLoader. `preprocess` is the fitted preprocessing of the
    data's kind (tabular, text, image, tensor): every kind has `to_json`, `transform(rows)`,
    `classes`, `task`, `decode_value`, `input_shape`, `features` and `vocab_size`.
    """

    task: str  # classification | regression
    preprocess: Any
    x: dict[str, Any]
    y: dict[str, np.ndarray]
    raw: dict[str, pd.DataFrame]  # raw records per split, for predict and display
    raw_target: dict[str, pd.Series]
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (kind, message)
    # (kind, message) found only as training reads the data (a streamed file that fails to decode):
    # what is new since the last call, asked after each epoch and after the test
    late_warnings: Callable[[], list[tuple[str, str]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # source-specific facts, e.g. image_size
    augment: Callable | None = None  # applied to training batches only
    streaming: bool = False
    _feeds: dict | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return self.preprocess.classes

    @property
    def input_shape(self) -> list[int]:
        """One sample's model input shape, e.g. [64] for a table or [3, 32, 32] for images."""
        return list(self.preprocess.input_shape)

    @property
    def input_dim(self) -> int:
        return int(np.prod(self.input_shape))

    def feeds(self, device) -> dict[str, Any]:
        """Each split as the loop reads it: device tensors, or a DataLoader that streams."""
        from .feed import LoaderFeed, TensorFeed

        if self._feeds is None:
            self._feeds = {s: LoaderFeed(self.x[s], device) if self.streaming else
                           TensorFeed(self.x[s], self.y[s], device) for s in SPLITS}
        return self._feeds

    def summary(self, batch_size: int = 64) -> dict[str, Any]:
        """What a user wants to know about the data before training: sizes, classes, features."""
        pre = self.preprocess
        out: dict[str, Any] = {
            "task": self.task,
            "kind": pre.kind,
            **{f"n_{s}": len(self.y[s]) for s in SPLITS},
            "features": pre.features,
            "classes": self.classes,
            "inputs": self.input_dim,
            "input_shape": self.input_shape,
            "feature_types": pre.feature_types(),
            "streaming": self.streaming,
            "batch": {"inputs": [min(batch_size, len(self.y["train"])), *self.input_shape],
                      "targets": [min(batch_size, len(self.y["train"]))]},
        }
        if pre.vocab_size:
            out["vocab_size"] = pre.vocab_size
        if self.task == "classification":
            out["class_counts"] = {
                s: [int(n) for n in np.bincount(self.y[s], minlength=len(self.classes))] for s in SPLITS}
        else:
            out["target_mean"] = pre.target_mean
            out["target_std"] = pre.target_std
        out.update(self.extra)
        return out


def leakage_from_hashes(hashes: dict[str, list]) -> int:
    """How many validation and test samples repeat (by content hash) one of an earlier split."""
    seen = set(hashes["train"])
    leaked = 0
    for split in ("val", "test"):
        leaked += sum(1 for h in hashes[split] if h in seen)
        seen |= set(hashes[split])
    return leaked


def describe_tensor(x: np.ndarray) -> dict[str, Any]:
    """A sample the dashboard can show: its shape, its values when few, its pixels when image-like."""
    out: dict[str, Any] = {"shape": list(x.shape)}
    if x.size <= 64:
        out["values"] = [float(v) for v in x.reshape(-1)]
    if x.ndim in (2, 3) and min(x.shape[-2:]) >= 4:
        gray = x.astype(np.float64).reshape(-1, *x.shape[-2:]).mean(axis=0)
        lo, hi = float(gray.min()), float(gray.max())
        out["pixels"] = small_pixels(((gray - lo) / (hi - lo or 1.0) * 255).round().astype(np.uint8))
    return out


PREVIEW_SIZE = 48  # held-out images are shown at most this many pixels a side


def small_pixels(gray: np.ndarray) -> list[list[int]]:
    """A uint8 grayscale image as rows of 0-255, shrunk to at most PREVIEW_SIZE a side."""
    if max(gray.shape) > PREVIEW_SIZE:
        from PIL import Image

        h, w = gray.shape
        scale = PREVIEW_SIZE / max(h, w)
        gray = np.asarray(Image.fromarray(gray).resize((max(1, round(w * scale)), max(1, round(h * scale))),
                                                       Image.BILINEAR))
    return gray.astype(int).tolist()
