"""Checkpoints: written to a temporary file and renamed, loaded as data (weights_only)."""

from __future__ import annotations

import os
import pickle
import re
import stat
import warnings
from pathlib import Path
from typing import Any

import torch

from .errors import UserError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` so that `path` is always either the old or the new checkpoint, never half."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data: tensors and plain values, never code.

    Every way a file can fail to be a checkpoint (missing, empty, truncated, random bytes,
    pickled code) is a UserError naming the file; torch's own text is never shown, since it
    advises retrying with weights_only=False, which would run whatever the file holds.
    """
    try:
        info = os.stat(path)
    except OSError as e:
        raise UserError(f"{path} could not be read: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device behind a symlink: reading could never end
        raise UserError(f"{path} is not a regular file: the checkpoint is damaged and was not loaded")
    size = info.st_size
    if size == 0:
        raise UserError(f"{path} is empty (0 bytes): the checkpoint is damaged and was not loaded")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on damaged files
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        code = re.search(r"GLOBAL ([\w.]+)", str(e))
        if code:
            raise UserError(f"{path} holds pickled code ({code.group(1)}), not only tensors and numbers: "
                            "it may be hostile and was not loaded") from None
        raise UserError(f"{path} is damaged or is not a traintop checkpoint: it holds data other than "
                        "tensors and numbers (it may be hostile) and was not loaded") from None
    except OSError as e:
        raise UserError(f"{path} could not be read: {e.strerror or e}") from None
    except Exception:  # noqa: BLE001 - truncated zips, random bytes: torch raises many kinds
        raise UserError(f"{path} is damaged ({size:,} bytes that do not read as a checkpoint: "
                        "truncated or overwritten) and was not loaded") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} does not hold a checkpoint (it holds a {type(state).__name__}, "
                        "not the dict traintop writes) and was not loaded")
    return state
