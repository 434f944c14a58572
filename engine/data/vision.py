"""torchvision's datasets (the optional extra `traintop[vision]`): MNIST, FashionMNIST, CIFAR10.

Downloaded (with `data.download = true`) into the user data dir's `traintop/datasets`, then
prepared like an image folder held in memory: the official test set is the test split, and the
official training set is split into training and validation by `data.split`.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ..config import Config
from ..errors import UserError
from .dataset import Dataset, leakage_from_hashes
from .feed import flip_and_crop
from .images import ImagePreprocessor, channel_stats, fit_sample
from .tabular import split_indices

DATASETS = ("MNIST", "FashionMNIST", "CIFAR10")


def datasets_dir():
    """Where downloaded datasets are kept: the user data dir's traintop/datasets."""
    from pathlib import Path

    from platformdirs import user_data_dir

    return Path(user_data_dir("traintop")) / "datasets"


def _images(ds) -> np.ndarray:
    """A torchvision dataset's images as uint8 (N, C, H, W)."""
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    return data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)


def _resize(u8: np.ndarray, size: int, channels: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    if u8.shape[1] != channels:
        u8 = u8.mean(axis=1, keepdims=True).round().astype(np.uint8) if channels == 1 else np.repeat(u8, 3, 1)
    if u8.shape[2:] == (size, size):
        return u8
    out = F.interpolate(torch.from_numpy(u8).float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def load_torchvision(cfg: Config) -> Dataset:
    """One of torchvision's datasets, from the cache (downloading it when `data.download`)."""
    d = cfg.data
    if d.dataset not in DATASETS:
        raise UserError(f"data.dataset is {d.dataset!r}; allowed with data.source = \"torchvision\": "
                        f"{', '.join(DATASETS)}")
    try:
        import torchvision.datasets as tvd
    except ImportError:
        raise UserError('data.source = "torchvision" needs torchvision, which is not installed; install '
                        'it with pip install "traintop[vision]" (or a torchvision matching your torch)') from None
    root = datasets_dir()
    cls = getattr(tvd, d.dataset)
    try:
        official = {train: cls(root=str(root), train=train, download=d.download) for train in (True, False)}
    except RuntimeError as e:
        if not d.download:
            raise UserError(f"{d.dataset} is not in {root}: set data.download = true to download it "
                            f"({e})") from None
        raise UserError(f"downloading {d.dataset} into {root} failed: {e}") from None
    except Exception as e:  # noqa: BLE001 - network and archive errors of every kind
        raise UserError(f"downloading {d.dataset} into {root} failed: {type(e).__name__}: {e}; "
                        "check the network, or put the files there and set data.download = false") from None
    native = _images(official[True])
    channels = d.channels or native.shape[1]
    if channels not in (1, 3):
        raise UserError(f"data.channels is {d.channels}; allowed: 0 (the dataset's own), 1, 3")
    train_u8 = _resize(native, d.image_size, channels)
    test_u8 = _resize(_images(official[False]), d.image_size, channels)
    labels = np.asarray(official[True].targets, dtype=np.int64)
    test_labels = np.asarray(official[False].targets, dtype=np.int64)
    train_f, val_f, _ = d.split
    fractions = [train_f / (train_f + val_f), 1 - train_f / (train_f + val_f), 0.0]
    train, val, _ = split_indices(len(labels), fractions, cfg.run.seed, labels)
    mean, std = channel_stats(train_u8[fit_sample(train, cfg.run.seed)])
    classes = [str(c) for c in official[True].classes]
    pre = ImagePreprocessor(classes=classes, channels=channels, image_size=d.image_size, mean=mean, std=std)
    u8 = {"train": train_u8[train], "val": train_u8[val], "test": test_u8}
    y = {"train": labels[train], "val": labels[val], "test": test_labels}
    index = {"train": train, "val": val, "test": np.arange(len(test_labels))}
    leaked = leakage_from_hashes({s: [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in u8[s]]
                                  for s in u8})
    return Dataset(
        task="classification", preprocess=pre, x={s: pre.normalize(a) for s, a in u8.items()}, y=y,
        raw={s: pd.DataFrame({"index": index[s]}) for s in u8},
        raw_target={s: pd.Series([classes[i] for i in y[s]], name="class", dtype=object) for s in y},
        augment=flip_and_crop if d.augment else None,
        extra={"image_size": d.image_size, "channels": channels, "leakage": leaked, "dataset": d.dataset})
