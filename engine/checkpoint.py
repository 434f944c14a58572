"""Checkpoints: written to a temporary file and renamed, loaded as data (weights_only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` so that `path` is always either the old or the new checkpoint, never half."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint as data: tensors and plain values, never code."""
    return torch.load(path, map_location=map_location, weights_only=True)
